"""GradientClipping and clip_gradients: nothing the user asked for is ignored; double clipping, LBFGS refused."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_optim import GradientClipping, SchedulerStepper, clip_gradients
from tests.loggers import MemoryLogger
from tests.models import TinyModule

# -- arguments ------------------------------------------------------------------------------------------------

OTHER_MODE_ARGS = [
    ("value", {"max_norm": 0.5}, r"does not use `max_norm` \(an argument of mode 'norm'\).*`clip_value=0\.5`"),
    ("agc", {"max_norm": 0.5}, r"does not use `max_norm`.*Pass the bound of mode 'agc' as `agc_clipping=0\.5`"),
    ("percentile", {"max_norm": 0.5}, r"does not use `max_norm`.*Remove it, or set `mode='norm'`"),
    ("norm", {"clip_value": 0.1}, r"does not use `clip_value`.*as `max_norm=0\.1`, or set `mode='value'`"),
    ("norm", {"percentile": 50.0}, r"does not use `percentile` \(an argument of mode 'percentile'\)"),
    ("norm", {"z_threshold": 3.0}, r"does not use `z_threshold` \(an argument of mode 'zscore'\)"),
    ("zscore", {"window": 10}, r"`GradientClipping\(mode='zscore'\)` does not use `window`"),
    ("percentile", {"warmup_steps": 5}, r"does not use `warmup_steps`.*reads \['percentile', 'window'\]"),
    ("value", {"agc_exclude": ["head.*"]}, r"does not use `agc_exclude` \(an argument of mode 'agc'\)"),
    ("agc", {"ema_decay": 0.9}, r"does not use `ema_decay`"),
]


@pytest.mark.parametrize(("mode", "kwargs", "match"), OTHER_MODE_ARGS)
def test_an_argument_of_another_mode_raises(mode: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradientClipping(mode=mode, **kwargs)  # type: ignore[arg-type]


def test_positional_bound_with_another_mode_raises() -> None:
    with pytest.raises(ValueError, match=r"`GradientClipping\(mode='value'\)` does not use `max_norm`"):
        GradientClipping(0.5, mode="value")


def test_each_mode_reads_its_own_arguments() -> None:
    assert GradientClipping(mode="value", clip_value=0.1).clip_value == 0.1
    assert GradientClipping(mode="agc", agc_clipping=0.02, agc_eps=1e-2, agc_exclude=["net.*"]).agc_eps == 1e-2
    assert GradientClipping(mode="percentile", percentile=90, window=7).window == 7
    assert GradientClipping(mode="zscore", z_threshold=3.0, ema_decay=0.5, warmup_steps=2).warmup_steps == 2
    assert GradientClipping(0.5).max_norm == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "value", "max_norm": 0.5}, r"`clip_gradients\(mode='value'\)` does not use `max_norm`.*`clip_value"),
        ({"clip_value": 0.1}, r"`clip_gradients\(mode='norm'\)` does not use `clip_value`.*`max_norm=0\.1`"),
    ],
)
def test_clip_gradients_refuses_the_other_modes_bound(kwargs: dict[str, Any], match: str) -> None:
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match=match):
        clip_gradients(torch.optim.SGD(layer.parameters(), lr=0.1), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"skip_nonfinite": "False"}, TypeError, r"`skip_nonfinite` must be a bool, got 'False' \(str\)"),
        ({"skip_nonfinite": 1}, TypeError, r"`skip_nonfinite` must be a bool, got 1 \(int\)"),
        ({"foreach": "yes"}, TypeError, r"`foreach` must be a bool or None, got 'yes' \(str\)"),
        ({"mode": "percentile", "percentile": 0.9}, ValueError, r"percent in \[1, 100\].*`percentile=90`"),
        ({"mode": "percentile", "percentile": 0.5}, ValueError, r"For the 50th percentile pass `percentile=50`"),
        ({"mode": "percentile", "percentile": True}, TypeError, r"`percentile` must be a number"),
        ({"mode": "agc", "agc_exclude": [1]}, TypeError, r"list of name patterns \(str\), got \[1\]"),
    ],
)
def test_flags_and_percentile_are_checked(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        GradientClipping(**kwargs)


def test_clip_gradients_takes_the_optimizer() -> None:
    model = nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(TypeError, match=r"takes the optimizer.*got generator.*`torch.nn.utils.clip_grad_norm_`"):
        clip_gradients(model.parameters(), 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes the optimizer.*got list"):
        clip_gradients(list(model.parameters()), 1.0)  # type: ignore[arg-type]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"`skip_nonfinite` must be a bool, got 'False'"):
        clip_gradients(opt, skip_nonfinite="False")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`foreach` must be a bool or None, got 0"):
        clip_gradients(opt, foreach=0)  # type: ignore[arg-type]


# -- the Trainer holds one clipper ---------------------------------------------------------------------------


def test_two_clipping_callbacks_raise(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(max_steps=1, callbacks=[GradientClipping(0.5), GradientClipping(mode="value")])
    with pytest.raises(ValueError, match=r"has 2 `GradientClipping` callbacks \(GradientClipping\{.*Keep one"):
        trainer.fit(TinyModule())


class ManualClips(TinyModule):
    """Manual optimization that also clips by hand, with lit_optim's function or Lightning's method."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.how = how

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        opt = self.optimizers()
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        if self.how == "lit_optim":
            clip_gradients(opt, max_norm=0.01)  # type: ignore[arg-type]
        elif self.how == "lightning":
            self.clip_gradients(opt, gradient_clip_val=0.01)  # type: ignore[arg-type]
        else:
            self.clip_gradients(opt, gradient_clip_val=None)  # type: ignore[arg-type]  # asks for nothing
        opt.step()  # type: ignore[union-attr]
        return loss


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("lit_optim", r"`lit_optim.clip_gradients` was called on an optimizer that `GradientClipping` also clips"),
        ("lightning", r"Lightning was asked to clip gradients \(`clip_val=0\.01`.*clipped twice"),
    ],
)
def test_double_clipping_under_manual_optimization_raises(
    how: str, match: str, make_trainer: Callable[..., Trainer]
) -> None:
    trainer = make_trainer(max_steps=2, callbacks=[GradientClipping()])
    with pytest.raises(ValueError, match=match):
        trainer.fit(ManualClips(how))
    assert "clip_gradients" not in vars(trainer.precision_plugin)  # the guard is gone after the run


def test_lightning_clip_call_without_a_value_is_fine(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(max_steps=2, callbacks=[GradientClipping()])
    trainer.fit(ManualClips("nothing"))
    assert trainer.global_step == 2
    assert "clip_gradients" not in vars(trainer.precision_plugin)  # the guard is gone after the run


def test_clip_gradients_without_the_callback_then_with_it(make_trainer: Callable[..., Trainer]) -> None:
    model = ManualClips("lit_optim")
    make_trainer(max_steps=1).fit(model)  # no callback: the function alone is fine
    model.how = "nothing"
    make_trainer(max_steps=2, callbacks=[GradientClipping()]).fit(model)  # the earlier run's mark is forgotten


class ConfiguresClipping(TinyModule):
    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, **kwargs: Any) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=0.5)


def test_overridden_configure_gradient_clipping_raises(make_trainer: Callable[..., Trainer]) -> None:
    with pytest.raises(ValueError, match=r"an overridden `configure_gradient_clipping`.*clipped twice"):
        make_trainer(max_steps=1, callbacks=[GradientClipping()]).fit(ConfiguresClipping())


class LBFGSModule(TinyModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=4)


def test_lbfgs_is_refused(make_trainer: Callable[..., Trainer]) -> None:
    with pytest.raises(ValueError, match=r"does not support `torch.optim.LBFGS`.*up to `max_iter` times"):
        make_trainer(max_steps=3, callbacks=[GradientClipping()]).fit(LBFGSModule())


# -- what is logged -------------------------------------------------------------------------------------------


def test_clipped_reads_zero_when_the_norm_equals_the_threshold(make_trainer: Callable[..., Trainer]) -> None:
    """window=1: the threshold is the norm itself, torch's +1e-6 makes the coefficient 0.9999998: not clipped."""
    logger = MemoryLogger()
    clip = GradientClipping(mode="percentile", percentile=50, window=1, log_every_n_steps=1)
    make_trainer(max_steps=4, logger=logger, callbacks=[clip]).fit(TinyModule())
    norms, thresholds = logger.series("grad_clip/norm"), logger.series("grad_clip/threshold")
    assert thresholds == pytest.approx(norms, rel=1e-6)
    coefs = logger.series("grad_clip/clip_coef")
    f32 = torch.float32
    pairs = zip(norms, thresholds, strict=True)
    assert coefs == [(torch.tensor(t, dtype=f32) / (torch.tensor(n, dtype=f32) + 1e-6)).item() for n, t in pairs]
    assert all(c < 1.0 for c in coefs)
    assert logger.series("grad_clip/clipped") == [0.0] * 4


def test_clipped_is_norm_above_threshold(make_trainer: Callable[..., Trainer]) -> None:
    logger = MemoryLogger()
    make_trainer(max_steps=3, logger=logger, callbacks=[GradientClipping(0.05, log_every_n_steps=1)]).fit(TinyModule())
    norms = logger.series("grad_clip/norm")
    assert logger.series("grad_clip/clipped") == [float(n > 0.05) for n in norms] == [1.0, 1.0, 1.0]


class PreClipReader(Callback):
    """Reads ``pre_clip_norm`` in its own hook and again after the optimizer step."""

    def __init__(self, clip: GradientClipping) -> None:
        self.clip = clip
        self.seen: list[tuple[float | None, float]] = []
        self.after: list[Any] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        norm = self.clip.pre_clip_norm(optimizer)
        reference = self.reference[-1] if self.reference else math.nan
        self.seen.append((None if norm is None else norm.item(), reference))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.after.append(self.clip.pre_clip_norm(trainer.optimizers[0]))

    reference: list[float]


class NormBefore(Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.norms.append(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters()]).item())


def test_pre_clip_norm_is_shared_for_the_current_step_only(make_trainer: Callable[..., Trainer]) -> None:
    clip, before = GradientClipping(0.01, log_every_n_steps=100), NormBefore()
    early, late = PreClipReader(clip), PreClipReader(clip)
    early.reference = late.reference = before.norms
    make_trainer(max_steps=3, callbacks=[before, early, clip, late]).fit(TinyModule())
    assert [n for n, _ in early.seen] == [None, None, None]  # before the clipper ran this step
    assert [n for n, _ in late.seen] == [r for _, r in late.seen] == before.norms  # torch's norm, pre-clip, exact
    assert late.after == [None, None, None]  # the optimizer step ended
    assert clip.pre_clip_norm(object()) is None


def test_pre_clip_norm_under_manual_optimization_with_two_optimizers(make_trainer: Callable[..., Trainer]) -> None:
    class Reads(TinyModule):
        def __init__(self, clip: GradientClipping) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.clip = clip
            self.expected: list[float] = []  # the second optimizer's pre-clip norm, by torch

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            first, second = self.optimizers()  # type: ignore[misc]
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            first.zero_grad()
            second.zero_grad()
            self.manual_backward(loss)
            expected = torch.nn.utils.get_total_norm([p.grad for p in self.net[2].parameters()]).item()
            first.step()
            assert self.clip.pre_clip_norm(first) is None  # its step ended
            assert self.clip.pre_clip_norm(second) is None  # its clipping has not run yet
            second.step()
            self.expected.append(expected)
            return loss

        def configure_optimizers(self) -> Any:
            first, second = self.net[0].parameters(), self.net[2].parameters()
            return [torch.optim.SGD(first, lr=0.1), torch.optim.SGD(second, lr=0.1)]

    class ReadsInHook(Callback):
        def __init__(self, clip: GradientClipping) -> None:
            self.clip = clip
            self.norms: list[float] = []

        def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
            norm = self.clip.pre_clip_norm(optimizer)
            assert norm is not None
            self.norms.append(norm.item())

    clip = GradientClipping(0.01)
    reader = ReadsInHook(clip)
    model = Reads(clip)
    make_trainer(max_steps=4, callbacks=[clip, reader]).fit(model)
    assert reader.norms[1::2] == pytest.approx(model.expected, rel=1e-6)


# -- skipped steps --------------------------------------------------------------------------------------------


class InfOnce(TinyModule):
    """Step 1's gradients are non-finite; a LambdaLR stepped per step (by Lightning unless a stepper claims it)."""

    def on_after_backward(self) -> None:
        if self.trainer.global_step == 1:
            self.net[0].weight.grad[0, 0] = math.inf

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "inv"}}


def test_skip_with_a_scheduler_stepped_by_lightning_warns_once(make_trainer: Callable[..., Trainer]) -> None:
    clip = GradientClipping(skip_nonfinite=True)
    match = r"scheduler\(s\) \['inv'\] are stepped by Lightning.*`lit_optim.SchedulerStepper\(\)`"
    with pytest.warns(UserWarning, match=match) as record:
        make_trainer(max_steps=4, callbacks=[clip]).fit(InfOnce())
    assert clip.skipped_steps == 1
    assert sum("SchedulerStepper" in str(w.message) for w in record) == 1


def test_skip_with_scheduler_stepper_does_not_warn(make_trainer: Callable[..., Trainer]) -> None:
    clip = GradientClipping(skip_nonfinite=True)
    trainer = make_trainer(max_steps=4, callbacks=[SchedulerStepper(), clip])
    trainer.fit(InfOnce())  # warnings are errors here
    assert clip.skipped_steps == 1
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 / 4)  # 3 real steps, not 4


class InfAt(TinyModule):
    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad = bad

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.bad:
            self.net[0].weight.grad[0, 0] = math.inf


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")  # same batches, on purpose
def test_resume_after_a_skipped_step_keeps_the_count(make_trainer: Callable[..., Trainer], tmp_path: Path) -> None:
    def run(max_steps: int, logger: MemoryLogger | None = None, ckpt: Path | None = None) -> tuple[Trainer, Any]:
        clip = GradientClipping(skip_nonfinite=True, max_consecutive_skips=3, log_every_n_steps=1)
        trainer = make_trainer(max_epochs=-1, max_steps=max_steps, logger=logger or False, callbacks=[clip])
        torch.manual_seed(0)
        trainer.fit(InfAt({1, 4, 5}), ckpt_path=ckpt)
        return trainer, clip

    straight_logger = MemoryLogger()
    _, straight = run(8, straight_logger)
    first, clip = run(3)
    assert clip.skipped_steps == 1
    ckpt = tmp_path / "skipped.ckpt"
    first.save_checkpoint(ckpt)
    resumed_logger = MemoryLogger()
    _, resumed = run(8, resumed_logger, ckpt)
    assert resumed.skipped_steps == straight.skipped_steps == 3
    assert resumed_logger.series("grad_clip/skipped_steps") == straight_logger.series("grad_clip/skipped_steps")[3:]
    assert resumed.state_dict()["consecutive_skips"] == straight.state_dict()["consecutive_skips"] == {0: 0}
    # steps 4 and 5 were skipped in a row: the count in a row carried over the resume would make a third raise
    with pytest.raises(RuntimeError, match=r"non-finite on 3 consecutive optimizer steps"):
        make_trainer(max_steps=8, callbacks=[GradientClipping(skip_nonfinite=True, max_consecutive_skips=3)]).fit(
            InfAt({1, 2, 3})
        )


# -- hook dispatch --------------------------------------------------------------------------------------------


def test_unused_per_step_hooks_are_skipped_and_overrides_kept(make_trainer: Callable[..., Trainer]) -> None:
    clip = GradientClipping()
    assert clip.on_train_batch_end is None  # Lightning skips a hook that is not callable
    assert clip.on_before_backward is None
    assert callable(clip.on_before_optimizer_step)

    class CountsBatches(GradientClipping):
        def __init__(self) -> None:
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, *args: Any) -> None:
            self.batches += 1

    counter = CountsBatches()
    make_trainer(max_steps=3, callbacks=[counter]).fit(TinyModule())
    assert counter.batches == 3
