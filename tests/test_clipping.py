"""GradientClipping through a real Trainer: logged keys and cadence, skips, resume, precision, strategies."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_optim import GradientClipping, SchedulerStepper, clip_gradients
from lit_optim.clipping.thresholds import PercentileThreshold
from tests.loggers import MemoryLogger
from tests.models import TinyModule


class GradRecorder(Callback):
    """Copies every parameter's gradient in ``on_before_optimizer_step`` (place before/after the clipper)."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.grads.append([p.grad.detach().clone() for p in pl_module.parameters() if p.grad is not None])


class GroupedModule(TinyModule):
    """Two named param groups (weights / biases)."""

    def configure_optimizers(self) -> Any:
        weights = [p for n, p in self.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in self.named_parameters() if n.endswith("bias")]
        return torch.optim.SGD([{"params": weights, "name": "decay"}, {"params": biases}], lr=0.1)


# -- through a Trainer ---------------------------------------------------------------------------------------


def test_trainer_logs_exact_keys_and_torch_norms(make_trainer: Callable[..., Trainer]) -> None:
    logger, before, after = MemoryLogger(), GradRecorder(), GradRecorder()
    clip = GradientClipping(max_norm=0.05, log_every_n_steps=2)
    trainer = make_trainer(max_steps=5, logger=logger, callbacks=[before, clip, after])
    trainer.fit(GroupedModule())
    logged = [(s, m) for s, m in logger.logged if any(k.startswith("grad_clip/") for k in m)]
    assert [s for s, _ in logged] == [1, 3]
    expected_keys = {
        "grad_clip/norm",
        "grad_clip/group_norm/decay",
        "grad_clip/group_norm/group1",
        "grad_clip/threshold",
        "grad_clip/clip_coef",
        "grad_clip/clipped",
    }
    for step, metrics in logged:
        assert set(metrics) == expected_keys
        grads = before.grads[step]
        norm = torch.nn.utils.get_total_norm(grads).item()
        assert metrics["grad_clip/norm"] == pytest.approx(norm, rel=1e-6)
        weights = [g for g in grads if g.ndim == 2]
        decay_norm = torch.nn.utils.get_total_norm(weights).item()
        assert metrics["grad_clip/group_norm/decay"] == pytest.approx(decay_norm, rel=1e-6)
        assert metrics["grad_clip/threshold"] == pytest.approx(0.05)
        assert metrics["grad_clip/clip_coef"] == pytest.approx(min(1.0, 0.05 / (norm + 1e-6)), rel=1e-6)
        assert metrics["grad_clip/clipped"] == 1.0
    for step_grads in after.grads:
        assert torch.nn.utils.get_total_norm(step_grads).item() == pytest.approx(0.05, rel=1e-4)


def test_once_per_optimizer_step_with_accumulation(make_trainer: Callable[..., Trainer]) -> None:
    logger, before = MemoryLogger(), GradRecorder()
    clip = GradientClipping(max_norm=1e6, log_every_n_steps=1)
    trainer = make_trainer(
        max_steps=3, accumulate_grad_batches=2, logger=logger, callbacks=[before, clip]
    )
    trainer.fit(TinyModule())
    assert len(logger.series("grad_clip/norm")) == 3
    assert len(before.grads) == 3
    for norm, grads in zip(logger.series("grad_clip/norm"), before.grads, strict=True):
        assert norm == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-6)


def test_percentile_mode_threshold_equals_numpy_of_history(make_trainer: Callable[..., Trainer]) -> None:
    logger, before = MemoryLogger(), GradRecorder()
    clip = GradientClipping(mode="percentile", percentile=25.0, window=3, log_every_n_steps=1)
    trainer = make_trainer(max_steps=6, logger=logger, callbacks=[before, clip])
    trainer.fit(TinyModule())
    norms = [torch.nn.utils.get_total_norm(g).item() for g in before.grads]
    thresholds = logger.series("grad_clip/threshold")
    for i, threshold in enumerate(thresholds):
        assert threshold == pytest.approx(np.percentile(norms[max(0, i - 2) : i + 1], 25.0), rel=1e-5)
    rule = clip.threshold_rule()
    assert isinstance(rule, PercentileThreshold)
    assert rule.history == pytest.approx(norms[-3:], rel=1e-6)


def test_agc_mode_in_trainer_respects_exclusions(make_trainer: Callable[..., Trainer]) -> None:
    before, after = GradRecorder(), GradRecorder()
    clip = GradientClipping(mode="agc", agc_clipping=0.001, agc_exclude=["net.2.*"])
    model = TinyModule()
    trainer = make_trainer(max_steps=1, callbacks=[before, clip, after])
    weights = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model)
    names = [n for n, _ in model.named_parameters()]
    for name, w, g, g_after in zip(names, weights, before.grads[0], after.grads[0], strict=True):
        if name.startswith("net.2."):
            assert torch.equal(g, g_after)
            continue
        dims = tuple(range(1, w.ndim)) if w.ndim > 1 else None
        w_norm = w.norm(dim=dims, keepdim=True) if dims else w.norm()
        g_norm = g.norm(dim=dims, keepdim=True) if dims else g.norm()
        limit = 0.001 * w_norm.clamp(min=1e-3)
        expected = torch.where(g_norm > limit, g * limit / g_norm, g)
        torch.testing.assert_close(g_after, expected)
        assert not torch.equal(g, g_after)


def test_agc_exclude_pattern_must_match(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(max_steps=1, callbacks=[GradientClipping(mode="agc", agc_exclude=["head.*"])])
    with pytest.raises(ValueError, match=r"pattern 'head\.\*' matched no parameter.*'net\.0\.weight'"):
        trainer.fit(TinyModule())


class InfGradModule(TinyModule):
    def __init__(self, bad_steps: set[int]) -> None:
        super().__init__()
        self.bad_steps = bad_steps

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.bad_steps:
            self.net[0].weight.grad[0, 0] = math.inf

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=0.01)


class Snapshot(Callback):
    def __init__(self, step: int) -> None:
        self.step = step
        self.before: tuple[list[torch.Tensor], dict[str, Any]] | None = None
        self.after: tuple[list[torch.Tensor], dict[str, Any]] | None = None

    def _take(self, trainer: Trainer, module: LightningModule) -> tuple[list[torch.Tensor], dict[str, Any]]:
        params = [p.detach().clone() for p in module.parameters()]
        state = pickle.loads(pickle.dumps(trainer.optimizers[0].state_dict()))
        return params, state

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch: Any, idx: int) -> None:
        if idx == self.step:
            self.before = self._take(trainer, module)

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args: Any) -> None:
        if args[-1] == self.step:
            self.after = self._take(trainer, module)


def test_inf_gradient_skips_step(make_trainer: Callable[..., Trainer]) -> None:
    logger, snap = MemoryLogger(), Snapshot(step=2)
    clip = GradientClipping(skip_nonfinite=True, log_every_n_steps=1)
    trainer = make_trainer(max_steps=4, logger=logger, callbacks=[clip, snap])
    trainer.fit(InfGradModule(bad_steps={2}))
    assert snap.before is not None
    assert snap.after is not None
    for p0, p1 in zip(snap.before[0], snap.after[0], strict=True):
        assert torch.equal(p0, p1)
    state0, state1 = snap.before[1]["state"], snap.after[1]["state"]
    assert state0.keys() == state1.keys()
    for k in state0:
        for name in state0[k]:
            assert torch.equal(state0[k][name], state1[k][name]), name
    assert clip.skipped_steps == 1
    assert logger.series("grad_clip/skipped_steps") == [0.0, 0.0, 1.0, 1.0]
    assert math.isinf(logger.series("grad_clip/norm")[2])
    clip_logs = [m for _, m in logger.logged if "grad_clip/norm" in m]
    assert "grad_clip/threshold" not in clip_logs[2]
    assert clip_logs[3]["grad_clip/threshold"] == 1.0


def test_consecutive_skips_raise(make_trainer: Callable[..., Trainer]) -> None:
    clip = GradientClipping(skip_nonfinite=True, max_consecutive_skips=3)
    trainer = make_trainer(max_steps=10, callbacks=[clip])
    with pytest.raises(RuntimeError, match=r"non-finite on 3 consecutive optimizer steps"):
        trainer.fit(InfGradModule(bad_steps=set(range(10))))
    assert clip.skipped_steps == 3


def test_skips_not_in_a_row_do_not_raise(make_trainer: Callable[..., Trainer]) -> None:
    clip = GradientClipping(skip_nonfinite=True, max_consecutive_skips=2)
    trainer = make_trainer(max_steps=5, callbacks=[clip])
    trainer.fit(InfGradModule(bad_steps={0, 2, 4}))
    assert clip.skipped_steps == 3


@pytest.mark.parametrize("mode", ["percentile", "zscore"])
def test_resume_restores_history_exactly(mode: str, make_trainer: Callable[..., Trainer], tmp_path: Path) -> None:
    def clipper() -> GradientClipping:
        percentile = {"percentile": 50.0, "window": 6}
        settings = percentile if mode == "percentile" else {"warmup_steps": 2, "z_threshold": 0.5}
        return GradientClipping(mode=mode, **settings)  # type: ignore[arg-type]

    def module() -> TinyModule:
        torch.manual_seed(1)
        return TinyModule(n=16)

    straight = clipper()
    m_straight = module()
    make_trainer(max_epochs=2, callbacks=[straight]).fit(m_straight)

    first = clipper()
    m_first = module()
    trainer = make_trainer(max_epochs=1, callbacks=[first])
    trainer.fit(m_first)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = clipper()
    m_resumed = module()
    make_trainer(max_epochs=2, callbacks=[resumed]).fit(m_resumed, ckpt_path=ckpt)

    assert resumed.state_dict() == straight.state_dict()
    assert resumed.state_dict() != first.state_dict()
    for a, b in zip(m_straight.parameters(), m_resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bf16_mixed_on_cpu(make_trainer: Callable[..., Trainer]) -> None:
    logger, before, after = MemoryLogger(), GradRecorder(), GradRecorder()
    clip = GradientClipping(max_norm=0.05, log_every_n_steps=1)
    trainer = make_trainer(
        max_steps=3, precision="bf16-mixed", logger=logger, callbacks=[before, clip, after]
    )
    trainer.fit(TinyModule())
    norms = logger.series("grad_clip/norm")
    assert len(norms) == 3
    for norm, grads, clipped in zip(norms, before.grads, after.grads, strict=True):
        assert norm == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-6)
        assert torch.nn.utils.get_total_norm(clipped).item() == pytest.approx(0.05, rel=1e-4)


def test_manual_optimization_with_clip_gradients(make_trainer: Callable[..., Trainer]) -> None:
    class Manual(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.results: list[tuple[float, float]] = []

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt = self.optimizers()
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            reference = torch.nn.utils.get_total_norm([p.grad for p in self.parameters()]).item()
            result = clip_gradients(opt, max_norm=0.01)
            after = torch.nn.utils.get_total_norm([p.grad for p in self.parameters()]).item()
            self.results.append((result.total_norm.item() - reference, after))
            opt.step()
            return loss

    model = Manual()
    make_trainer(max_steps=2).fit(model)
    assert len(model.results) == 2
    for diff, after in model.results:
        assert diff == 0.0
        assert after == pytest.approx(0.01, rel=1e-4)


def test_refuses_double_clipping(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(max_steps=1, gradient_clip_val=1.0, callbacks=[GradientClipping()])
    with pytest.raises(ValueError, match=r"gradient_clip_val=1\.0.*would clip twice"):
        trainer.fit(TinyModule())


# -- host sync, several optimizers, strategies ----------------------------------------------------------------


def _raise_sync(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("host-device sync on a step that logs nothing")


class SyncGuardedClipping(GradientClipping):
    """Fails if the clipper reads a tensor value on the host (`.item()`, `.tolist()`, `bool()`, `float()`)."""

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        saved = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__float__")}
        try:
            for name in saved:
                setattr(torch.Tensor, name, _raise_sync)
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
        finally:
            for name, fn in saved.items():
                setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("mode", ["norm", "value", "agc", "percentile", "zscore"])
def test_no_host_sync_when_nothing_is_logged(mode: str, make_trainer: Callable[..., Trainer]) -> None:
    settings = {"warmup_steps": 1} if mode == "zscore" else {}
    clip = SyncGuardedClipping(mode=mode, log_every_n_steps=100, **settings)  # type: ignore[arg-type]
    make_trainer(max_steps=3, logger=MemoryLogger(), callbacks=[clip]).fit(TinyModule())


def test_sync_guard_catches_the_documented_syncs(make_trainer: Callable[..., Trainer]) -> None:
    logging = SyncGuardedClipping(log_every_n_steps=1)
    with pytest.raises(AssertionError, match="host-device sync"):
        make_trainer(max_steps=1, logger=MemoryLogger(), callbacks=[logging]).fit(TinyModule())
    skipping = SyncGuardedClipping(skip_nonfinite=True, log_every_n_steps=100)
    with pytest.raises(AssertionError, match="host-device sync"):
        make_trainer(max_steps=1, logger=MemoryLogger(), callbacks=[skipping]).fit(TinyModule())


class TwoOptimizers(TinyModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        first, second = self.optimizers()
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        return loss

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]


class OptimizerGradRecorder(Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())


def test_manual_optimization_two_optimizers_prefixes(make_trainer: Callable[..., Trainer]) -> None:
    logger, before, after = MemoryLogger(), OptimizerGradRecorder(), OptimizerGradRecorder()
    clip = GradientClipping(max_norm=0.01, log_every_n_steps=1)
    make_trainer(max_steps=4, logger=logger, callbacks=[before, clip, after]).fit(TwoOptimizers())
    opt0, opt1 = logger.series("grad_clip/opt0/norm"), logger.series("grad_clip/opt1/norm")
    assert len(opt0) == len(opt1) == 2  # 4 optimizer steps, alternating
    assert opt0 == pytest.approx(before.norms[0::2], rel=1e-6)
    assert opt1 == pytest.approx(before.norms[1::2], rel=1e-6)
    assert {k for _, m in logger.logged for k in m if k.startswith("grad_clip/opt1/")} == {
        "grad_clip/opt1/norm",
        "grad_clip/opt1/group_norm/group0",
        "grad_clip/opt1/threshold",
        "grad_clip/opt1/clip_coef",
        "grad_clip/opt1/clipped",
    }
    assert after.norms == pytest.approx([min(n, 0.01) for n in before.norms], rel=1e-4)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")  # on purpose, below
def test_step_without_gradients_leaves_history_alone(make_trainer: Callable[..., Trainer]) -> None:
    class SkipsBatch(TinyModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx == 1 else super().training_step(batch, batch_idx)

    logger = MemoryLogger()
    clip = GradientClipping(mode="percentile", window=10, log_every_n_steps=1)
    make_trainer(max_steps=4, logger=logger, callbacks=[clip]).fit(SkipsBatch())
    rule = clip.threshold_rule()
    assert isinstance(rule, PercentileThreshold)
    assert len(rule.history) == 3
    assert len(logger.series("grad_clip/norm")) == 3


@pytest.mark.parametrize(
    ("mode", "keys"),
    [
        ("value", {"grad_clip/norm", "grad_clip/group_norm/group0", "grad_clip/clipped"}),
        ("agc", {"grad_clip/norm", "grad_clip/group_norm/group0", "grad_clip/clipped_units", "grad_clip/clipped"}),
    ],
)
def test_value_and_agc_modes_log_their_keys(
    mode: str, keys: set[str], make_trainer: Callable[..., Trainer]
) -> None:
    class WeightRecorder(GradRecorder):
        def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
            self.grads.append([p.detach().clone() for p in pl_module.parameters()])

    logger, before, after, weights = MemoryLogger(), GradRecorder(), GradRecorder(), WeightRecorder()
    units_seen: list[int] = []
    bound = {"clip_value": 0.05} if mode == "value" else {"agc_clipping": 1e-4}
    clip = GradientClipping(mode=mode, log_every_n_steps=1, **bound)  # type: ignore[arg-type]
    make_trainer(max_steps=2, logger=logger, callbacks=[weights, before, clip, after]).fit(TinyModule())
    logged = [m for _, m in logger.logged if "grad_clip/norm" in m]
    assert len(logged) == 2
    for metrics, grads, clipped in zip(logged, before.grads, after.grads, strict=True):
        assert set(metrics) == keys
        assert metrics["grad_clip/clipped"] == 1.0
        assert metrics["grad_clip/norm"] == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-6)
        if mode == "value":
            for g, c in zip(grads, clipped, strict=True):
                assert torch.equal(c, g.clamp(-0.05, 0.05))
        else:
            units = 0
            for w, g in zip(weights.grads[len(units_seen)], grads, strict=True):
                dims = tuple(range(1, w.ndim)) or None
                limit = 1e-4 * torch.linalg.vector_norm(w, dim=dims).clamp(min=1e-3)
                units += int((torch.linalg.vector_norm(g, dim=dims) > limit).sum())
            units_seen.append(units)
            assert metrics["grad_clip/clipped_units"] == units > 0


def _fake_trainer(strategy: Any, optimizers: int = 1) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        gradient_clip_val=None, strategy=strategy, optimizers=[object()] * optimizers, callbacks=[],
        precision_plugin=SimpleNamespace(clip_gradients=lambda *args: None),
    )


def test_refuses_deepspeed_with_a_pointer_to_its_config() -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # deepspeed is not installed here
    with pytest.raises(ValueError, match=r"DeepSpeed clips inside its engine.*'gradient_clipping'"):
        GradientClipping().on_fit_start(_fake_trainer(strategy), TinyModule())


def test_fsdp1_refuses_agc_and_several_optimizers() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy.__new__(FSDPStrategy)
    with pytest.raises(ValueError, match=r"`mode='agc'` needs whole parameters; FSDP1 shards them"):
        GradientClipping(mode="agc").on_fit_start(_fake_trainer(strategy), TinyModule())
    with pytest.raises(ValueError, match=r"covers all parameters, but there are 2 optimizers"):
        GradientClipping().on_fit_start(_fake_trainer(strategy, optimizers=2), TinyModule())


# -- several optimizers, non-finite steps ---------------------------------------------------------------------


def test_two_optimizers_are_both_logged_every_n_steps(make_trainer: Callable[..., Trainer]) -> None:
    logger, before = MemoryLogger(), OptimizerGradRecorder()
    clip = GradientClipping(max_norm=0.01, log_every_n_steps=2)
    make_trainer(max_steps=8, logger=logger, callbacks=[before, clip]).fit(TwoOptimizers())
    # 4 batches, each steps opt0 then opt1 (global steps 2b and 2b + 1): both are logged on the batches b where
    # (b + 1) % 2 == 0, at row b, Lightning's own logging axis (the row `self.log` writes in batch b)
    assert len(before.norms) == 8
    opt0 = [(s, m["grad_clip/opt0/norm"]) for s, m in logger.logged if "grad_clip/opt0/norm" in m]
    opt1 = [(s, m["grad_clip/opt1/norm"]) for s, m in logger.logged if "grad_clip/opt1/norm" in m]
    assert [s for s, _ in opt0] == [1, 3]
    assert [s for s, _ in opt1] == [1, 3]
    assert [n for _, n in opt0] == pytest.approx([before.norms[2], before.norms[6]], rel=1e-6)
    assert [n for _, n in opt1] == pytest.approx([before.norms[3], before.norms[7]], rel=1e-6)


class FirstOptimizerDiverges(TwoOptimizers):
    def on_after_backward(self) -> None:
        self.net[0].weight.grad[0, 0] = math.inf  # only the first optimizer's parameters


def test_consecutive_skips_are_counted_per_optimizer(make_trainer: Callable[..., Trainer]) -> None:
    clip = GradientClipping(skip_nonfinite=True, max_consecutive_skips=3)
    trainer = make_trainer(max_steps=20, callbacks=[clip])
    with pytest.raises(RuntimeError, match=r"of optimizer 0 was non-finite on 3 consecutive optimizer steps"):
        trainer.fit(FirstOptimizerDiverges())
    assert clip.skipped_steps == 3
    assert trainer.global_step == 4  # raised in batch 2's first step: 2 batches x 2 completed optimizer steps


class ScheduledInfGradModule(InfGradModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class WindowEnd(Callback):
    """The LR and the weights after each accumulation window of 2 batches."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, list[torch.Tensor]]] = []

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args: Any) -> None:
        if (args[-1] + 1) % 2 == 0:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.rows.append((lr, [p.detach().clone() for p in module.parameters()]))


def test_skip_with_accumulation_leaves_weights_and_schedule(make_trainer: Callable[..., Trainer]) -> None:
    before, ends = GradRecorder(), WindowEnd()
    clip = GradientClipping(skip_nonfinite=True)
    trainer = make_trainer(
        max_steps=4, accumulate_grad_batches=2, callbacks=[SchedulerStepper(), before, clip, ends]
    )
    trainer.fit(ScheduledInfGradModule(bad_steps={1}))  # both micro-batches of window 1 get an inf
    assert clip.skipped_steps == 1
    assert trainer.global_step == 4
    # window 1 was skipped: the schedule did not advance (LambdaLR(1 / (s + 1)) after s real steps)
    assert [lr for lr, _ in ends.rows] == [0.1 * (1.0 / (s + 1)) for s in (1, 1, 2, 3)]
    for a, b in zip(ends.rows[0][1], ends.rows[1][1], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ends.rows[1][1], ends.rows[2][1], strict=True):
        assert not torch.equal(a, b)
    assert len(before.grads) == 4
    assert len(before.grads[2]) == 4  # window 2 starts from fresh gradients, all finite
    assert all(bool(torch.isfinite(g).all()) for g in before.grads[2])


def test_skip_with_two_optimizers_skips_only_the_nonfinite_one(make_trainer: Callable[..., Trainer]) -> None:
    model = FirstOptimizerDiverges()
    first = [p.detach().clone() for p in model.net[0].parameters()]
    second = [p.detach().clone() for p in model.net[2].parameters()]
    clip = GradientClipping(skip_nonfinite=True, max_consecutive_skips=10)
    make_trainer(max_steps=4, callbacks=[clip]).fit(model)
    assert clip.skipped_steps == 2
    for a, b in zip(first, model.net[0].parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(second, model.net[2].parameters(), strict=True):
        assert not torch.equal(a, b)
    assert clip.state_dict()["consecutive_skips"] == {0: 2, 1: 0}


def test_agc_refuses_dtensor_parameters_when_fitting_starts(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        module = TinyModule()
        mesh = init_device_mesh("cpu", (1,))
        module.net[0].weight = nn.Parameter(distribute_tensor(module.net[0].weight.detach(), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"`mode='agc'` needs whole output units on each rank; DTensor"):
            GradientClipping(mode="agc").on_fit_start(_fake_trainer(object()), module)
        GradientClipping(mode="norm").on_fit_start(_fake_trainer(object()), module)  # norm modes handle DTensors
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")  # same batches, on purpose
def test_two_optimizers_cadence_survives_resume(make_trainer: Callable[..., Trainer], tmp_path: Path) -> None:
    straight = MemoryLogger()
    make_trainer(max_steps=8, logger=straight, callbacks=[GradientClipping(log_every_n_steps=2)]).fit(TwoOptimizers())

    # max_epochs=-1: a checkpoint saved after a fit that stopped mid-epoch counts that epoch as done
    first = make_trainer(max_epochs=-1, max_steps=4, callbacks=[GradientClipping(log_every_n_steps=2)])
    first.fit(TwoOptimizers())
    ckpt = tmp_path / "half.ckpt"
    first.save_checkpoint(ckpt)
    resumed = MemoryLogger()
    clip = GradientClipping(log_every_n_steps=2)
    make_trainer(max_epochs=-1, max_steps=8, logger=resumed, callbacks=[clip]).fit(TwoOptimizers(), ckpt_path=ckpt)

    def logged(logger: MemoryLogger) -> list[tuple[int | None, list[str]]]:
        return [(s, sorted(k for k in m if k.endswith("/norm"))) for s, m in logger.logged]

    expected = [(1, ["grad_clip/opt0/norm"]), (1, ["grad_clip/opt1/norm"])]
    assert logged(straight) == [*expected, (3, ["grad_clip/opt0/norm"]), (3, ["grad_clip/opt1/norm"])]
    assert logged(resumed) == logged(straight)[2:]
