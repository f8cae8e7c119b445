"""OptimizerMonitor through a real Trainer: values against a hand computation, spikes, skipping, resume, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_optim import Cosine, GradientClipping, OptimizerMonitor, configure_optimizers
from tests.loggers import MemoryLogger
from tests.models import TinyModule

METRICS = ("update_ratio", "update_rms", "param_norm", "grad_norm")


def _named_groups(module: nn.Module) -> list[dict[str, Any]]:
    weights = [p for n, p in module.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in module.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "name": "decay"}, {"params": biases, "name": "no_decay", "weight_decay": 0.0}]


class SGDModule(TinyModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(_named_groups(self), lr=0.1, momentum=0.9, weight_decay=0.05)


class AdamWModule(TinyModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(_named_groups(self), lr=0.01, weight_decay=0.1)


class StepRecorder(Callback):
    """The full weights and gradients right before each optimizer step, the weights and state right after it."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self._open: dict[str, Any] | None = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        groups = optimizer.param_groups
        self._open = {
            "step": trainer.global_step,
            "before": [[p.detach().double().clone() for p in g["params"]] for g in groups],
            "grads": [[p.grad.detach().double().clone() for p in g["params"] if p.grad is not None] for g in groups],
            "lr": [g["lr"] for g in groups],
            "optimizer": optimizer,
        }

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        record, self._open = self._open, None
        if record is None:
            return
        optimizer = record.pop("optimizer")
        record["after"] = [[p.detach().double().clone() for p in g["params"]] for g in optimizer.param_groups]
        record["v"] = [
            [state["exp_avg_sq"].double().clone() for p in g["params"] if "exp_avg_sq" in (state := optimizer.state[p])]
            for g in optimizer.param_groups
        ]
        self.records[record["step"]] = record


def _norm(tensors: list[torch.Tensor]) -> float:
    return torch.cat([t.flatten() for t in tensors]).norm().item() if tensors else 0.0


def _expected(record: dict[str, Any], names: list[str]) -> dict[str, float]:
    """The logged row, computed by hand from the weights before and after the step."""
    out: dict[str, float] = {}
    groups = [*zip(names, record["before"], record["after"], record["grads"], record["v"], strict=True),
              ("global", [t for g in record["before"] for t in g], [t for g in record["after"] for t in g],
               [t for g in record["grads"] for t in g], [t for g in record["v"] for t in g])]
    for name, before, after, grads, v in groups:
        delta = _norm([a - b for a, b in zip(after, before, strict=True)])
        n = sum(t.numel() for t in before)
        out[f"optimizer/update_ratio/{name}"] = delta / _norm(before)
        out[f"optimizer/update_rms/{name}"] = delta / math.sqrt(n)
        out[f"optimizer/param_norm/{name}"] = _norm(before)
        out[f"optimizer/grad_norm/{name}"] = _norm(grads)
        if v:
            out[f"optimizer/sqrt_v/{name}"] = torch.cat([t.flatten() for t in v]).sqrt().mean().item()
    return out


@pytest.mark.parametrize("module_cls", [SGDModule, AdamWModule], ids=["sgd", "adamw"])
def test_values_equal_a_hand_computation_with_accumulation(
    module_cls: type[TinyModule], make_trainer: Callable[..., L.Trainer]
) -> None:
    logger, recorder = MemoryLogger(), StepRecorder()
    monitor = OptimizerMonitor(log_every_n_steps=1, spike_on=())
    trainer = make_trainer(max_steps=4, accumulate_grad_batches=2, logger=logger, callbacks=[recorder, monitor])
    trainer.fit(module_cls())
    rows = {step: m for step, m in logger.logged if any(k.startswith("optimizer/") for k in m)}
    assert sorted(rows) == [0, 1, 2, 3] == sorted(recorder.records)
    for step, row in rows.items():
        expected = _expected(recorder.records[step], ["decay", "no_decay"])
        assert set(row) == set(expected)  # the exact keys: sqrt_v only for AdamW
        assert row == pytest.approx(expected, rel=2e-5)
        assert all(row[f"optimizer/update_ratio/{g}"] > 0 for g in ("decay", "no_decay", "global"))


def test_sgd_update_is_the_closed_form_step(make_trainer: Callable[..., L.Trainer]) -> None:
    # plain SGD with weight decay: delta = -lr * (g + wd * w), so the logged update RMS is known from g and w alone
    class PlainSGD(TinyModule):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(_named_groups(self), lr=0.1, weight_decay=0.05)

    logger, recorder = MemoryLogger(), StepRecorder()
    trainer = make_trainer(max_steps=2, logger=logger, callbacks=[recorder, OptimizerMonitor(log_every_n_steps=1)])
    trainer.fit(PlainSGD())
    for step, row in ((s, m) for s, m in logger.logged if "optimizer/update_rms/decay" in m):
        record = recorder.records[step]
        for name, before, grads, wd in zip(("decay", "no_decay"), record["before"], record["grads"], (0.05, 0.0),
                                           strict=True):
            delta = [0.1 * (g + wd * w) for g, w in zip(grads, before, strict=True)]
            n = sum(t.numel() for t in before)
            assert row[f"optimizer/update_rms/{name}"] == pytest.approx(_norm(delta) / math.sqrt(n), rel=2e-5)


def test_logs_on_the_rows_gradient_clipping_uses(make_trainer: Callable[..., L.Trainer]) -> None:
    logger = MemoryLogger()
    callbacks = [OptimizerMonitor(log_every_n_steps=3), GradientClipping(max_norm=10.0, log_every_n_steps=3)]
    make_trainer(max_steps=9, logger=logger, callbacks=callbacks).fit(SGDModule())
    monitor_rows = [s for s, m in logger.logged if "optimizer/update_ratio/global" in m]
    clip_rows = [s for s, m in logger.logged if "grad_clip/norm" in m]
    assert monitor_rows == clip_rows == [2, 5, 8]
    # measured before the clipper ran: the same pre-clip norms, per group too
    for key in ("global", "decay", "no_decay"):
        ours = logger.series(f"optimizer/grad_norm/{key}")
        theirs = logger.series("grad_clip/norm" if key == "global" else f"grad_clip/group_norm/{key}")
        assert ours == pytest.approx(theirs, rel=1e-6)


class _FakeClipper(Callback):
    """Exposes ``pre_clip_norm`` like GradientClipping does once it shares its norm; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def pre_clip_norm(self, optimizer: Any) -> torch.Tensor:
        self.calls += 1
        return torch.tensor(123.0)


def test_shares_the_clippers_pre_clip_norm_when_it_runs_first(
    make_trainer: Callable[..., L.Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lit_optim.callbacks.optimizer_monitor as module

    measured: list[int] = []
    real = module.grouped_norms
    monkeypatch.setattr(module, "grouped_norms", lambda *a, **k: measured.append(1) or real(*a, **k))
    logger, clipper = MemoryLogger(), _FakeClipper()
    monitor = OptimizerMonitor(log_every_n_steps=2, spike_on=["grad_norm"])
    make_trainer(max_steps=4, logger=logger, callbacks=[clipper, monitor]).fit(SGDModule())
    assert clipper.calls == 4  # the norm was computed once, by the clipper
    assert measured == []
    assert logger.series("optimizer/grad_norm/global") == [123.0, 123.0]
    assert not any(k.startswith("optimizer/grad_norm/decay") for _, m in logger.logged for k in m)
    assert monitor.detector("grad_norm").stats[1] == pytest.approx(123.0)


def test_refuses_a_gradient_clipping_placed_before_it_without_a_shared_norm(
    make_trainer: Callable[..., L.Trainer]
) -> None:
    # an inf-norm clipper can never share the 2-norm; a clipper without the accessor cannot share at all
    clippers = [GradientClipping(norm_type=math.inf)]
    if not callable(getattr(GradientClipping, "pre_clip_norm", None)):
        clippers.append(GradientClipping())
    for clipper in clippers:
        trainer = make_trainer(max_steps=1, callbacks=[clipper, OptimizerMonitor()])
        with pytest.raises(ValueError, match=r"norm_type=.*Put `OptimizerMonitor` before `GradientClipping`"):
            trainer.fit(SGDModule())


def test_a_preceding_clipper_without_a_norm_this_step_means_no_grad_norm(
    make_trainer: Callable[..., L.Trainer]
) -> None:
    class Silent(_FakeClipper):
        def pre_clip_norm(self, optimizer: Any) -> None:  # type: ignore[override]
            return None

    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=1)
    make_trainer(max_steps=2, logger=logger, callbacks=[Silent(), monitor]).fit(SGDModule())
    keys = {k for _, m in logger.logged for k in m}
    assert "optimizer/update_ratio/global" in keys
    assert not [k for k in keys if k.startswith("optimizer/grad_norm")]  # never the norm of clipped gradients
    assert monitor.detector("grad_norm").count == 0  # type: ignore[union-attr]


def test_keys_of_unnamed_groups_and_a_group_called_global(make_trainer: Callable[..., L.Trainer]) -> None:
    class Odd(TinyModule):
        def configure_optimizers(self) -> Any:
            first, second = self.net[0], self.net[2]
            return torch.optim.SGD([{"params": first.parameters(), "name": "global"},
                                    {"params": second.parameters()}], lr=0.1)

    logger = MemoryLogger()
    make_trainer(max_steps=1, logger=logger, callbacks=[OptimizerMonitor(log_every_n_steps=1)]).fit(Odd())
    keys = {k for _, m in logger.logged for k in m if k.startswith("optimizer/update_ratio/")}
    assert keys == {"optimizer/update_ratio/global-0", "optimizer/update_ratio/group1", "optimizer/update_ratio/global"}
    every = sorted(k for _, m in logger.logged for k in m)
    assert not [(a, b) for a in every for b in every if b.startswith(a + "/")]  # no key is a path prefix of another


# -- spikes ----------------------------------------------------------------------------------------------------


class LossSpike(TinyModule):
    """Adds ``factor * loss`` (detached: the gradients stay the same) to the loss at ``at`` global steps."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(_named_groups(self), lr=0.02)

    def __init__(self, at: tuple[int, ...], factor: float = 100.0, real: bool = False) -> None:
        super().__init__()
        self.at, self.factor, self.real = at, factor, real

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        if self.trainer.global_step in self.at:
            loss = loss * self.factor if self.real else loss + self.factor * loss.detach()
        return loss


def test_injected_loss_spike_is_detected_at_its_step(make_trainer: Callable[..., L.Trainer]) -> None:
    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=1, spike_warmup_steps=3)
    make_trainer(max_steps=10, logger=logger, callbacks=[monitor]).fit(LossSpike(at=(6,)))
    assert logger.series("optimizer/spikes/loss") == [0] * 6 + [1] + [0] * 3
    assert logger.series("optimizer/spikes/grad_norm") == [0] * 10  # the gradients never changed
    count, _, _ = monitor.detector("loss").stats
    assert count == 9  # the spike never entered the statistics


def test_spikes_between_logging_rows_are_counted_on_the_next_row(make_trainer: Callable[..., L.Trainer]) -> None:
    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=4, spike_warmup_steps=3, spike_on=["loss"])
    make_trainer(max_steps=12, logger=logger, callbacks=[monitor]).fit(LossSpike(at=(5, 6, 9)))
    rows = [(s, m["optimizer/spikes/loss"]) for s, m in logger.logged if "optimizer/spikes/loss" in m]
    assert rows == [(3, 0), (7, 2), (11, 1)]


def test_loss_spike_matches_a_hand_rolled_ema(make_trainer: Callable[..., L.Trainer]) -> None:
    # the detector's statistics equal the formula written out here, over the losses the model produced
    losses: list[float] = []

    class Recording(SGDModule):
        def on_before_optimizer_step(self, optimizer: Any) -> None:
            losses.append(self.trainer.callback_metrics.get("train_loss", torch.tensor(math.nan)).item())

    monitor = OptimizerMonitor(spike_on=["loss"], spike_warmup_steps=2, spike_ema_decay=0.5)
    make_trainer(max_steps=5, callbacks=[monitor]).fit(Recording())
    mean = var = 0.0
    for n, x in enumerate(losses, start=1):
        if n > 2:
            assert x <= mean + 6.0 * math.sqrt(var)
        w = 1 / n if n <= 2 else 1 - 0.5
        delta = x - mean
        mean += w * delta
        var = (1 - w) * var + w * delta * (x - mean)
    assert monitor.detector("loss").stats == pytest.approx((5.0, mean, var), rel=1e-6)


def test_skip_leaves_weights_state_and_schedule_untouched(make_trainer: Callable[..., L.Trainer]) -> None:
    class Scheduled(LossSpike):
        def configure_optimizers(self) -> Any:
            return configure_optimizers(self, "adamw", lr=0.01, scheduler=Cosine(warmup=2))

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if self.trainer.global_step == 6:
                optimizer = self.trainer.optimizers[0]
                self.before = ([p.detach().clone() for p in self.parameters()],
                               [{k: v.clone() for k, v in optimizer.state[p].items()} for p in self.parameters()],
                               [g["lr"] for g in optimizer.param_groups])

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 6:
                optimizer = self.trainer.optimizers[0]
                self.after = ([p.detach().clone() for p in self.parameters()],
                              [{k: v.clone() for k, v in optimizer.state[p].items()} for p in self.parameters()],
                              [g["lr"] for g in optimizer.param_groups])

    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=1000, spike_warmup_steps=3, action="skip")
    model = Scheduled(at=(6,), factor=1e4, real=True)
    trainer = make_trainer(max_steps=8, logger=logger, callbacks=[monitor])
    # the skipped step does not advance the schedule, which the stepper reports at the end of the fit
    with pytest.warns(RuntimeWarning, match=r"1 optimizer step\(s\) had no gradients.*OptimizerMonitor"):
        trainer.fit(model)
    (w0, s0, lr0), (w1, s1, lr1) = model.before, model.after
    assert all(torch.equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(s0, s1, strict=True))
    assert lr0 == lr1
    assert monitor.skipped_steps == 1
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 7  # 8 global steps, one skipped
    # written at its own row although it is not a logging row (the skip costs a sync anyway)
    assert [(s, m["optimizer/spikes/loss"], m["optimizer/skipped_steps"]) for s, m in logger.logged
            if "optimizer/spikes/loss" in m] == [(6, 1, 1)]


def test_raises_after_consecutive_spikes(make_trainer: Callable[..., L.Trainer]) -> None:
    monitor = OptimizerMonitor(spike_warmup_steps=3, action="raise", max_consecutive_spikes=2, spike_on=["loss"])
    trainer = make_trainer(max_steps=10, callbacks=[monitor])
    message = r"2 consecutive optimizer steps spiked \(last one in \['loss'\] at global step 5"
    with pytest.raises(RuntimeError, match=message):
        trainer.fit(LossSpike(at=(4, 5)))


def test_an_isolated_spike_does_not_raise(make_trainer: Callable[..., L.Trainer]) -> None:
    monitor = OptimizerMonitor(spike_warmup_steps=3, action="raise", max_consecutive_spikes=2, spike_on=["loss"])
    trainer = make_trainer(max_steps=8, callbacks=[monitor])
    trainer.fit(LossSpike(at=(4, 6)))
    assert trainer.global_step == 8


# -- resume ----------------------------------------------------------------------------------------------------


def test_resume_restores_spike_statistics_exactly(make_trainer: Callable[..., L.Trainer], tmp_path: Path) -> None:
    def monitor() -> OptimizerMonitor:
        return OptimizerMonitor(spike_warmup_steps=2, action="skip")

    def module() -> LossSpike:
        torch.manual_seed(1)
        model = LossSpike(at=(2, 5), factor=1e4, real=True)
        model.n = 16  # 4 steps per epoch
        return model

    straight, m_straight = monitor(), module()
    make_trainer(max_epochs=2, callbacks=[straight]).fit(m_straight)
    first = monitor()
    trainer = make_trainer(max_epochs=1, callbacks=[first])
    trainer.fit(module())
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    resumed, m_resumed = monitor(), module()
    make_trainer(max_epochs=2, callbacks=[resumed]).fit(m_resumed, ckpt_path=path)
    assert resumed.state_dict() == straight.state_dict() != first.state_dict()
    assert resumed.skipped_steps == straight.skipped_steps == 2
    assert resumed.detector("loss").stats == straight.detector("loss").stats
    assert resumed.detector("loss").stats[0] == 6  # 8 steps, 2 spikes left out
    for a, b in zip(m_straight.parameters(), m_resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_logs_the_spikes_an_uninterrupted_run_logs(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    def module() -> LossSpike:
        torch.manual_seed(1)
        model = LossSpike(at=(3, 4))
        model.n = 16  # 4 steps per epoch: the checkpoint falls between two logging rows (2 and 5)
        return model

    def fit(logger: MemoryLogger, max_epochs: int, ckpt: Path | None = None) -> L.Trainer:
        monitor = OptimizerMonitor(log_every_n_steps=3, spike_warmup_steps=2, spike_on=["loss"])
        trainer = make_trainer(max_epochs=max_epochs, logger=logger, callbacks=[monitor])
        trainer.fit(module(), ckpt_path=ckpt)
        return trainer

    straight, first, resumed = MemoryLogger(), MemoryLogger(), MemoryLogger()
    fit(straight, 2)
    path = tmp_path / "half.ckpt"
    fit(first, 1).save_checkpoint(path)
    fit(resumed, 2, path)

    def spikes(logger: MemoryLogger) -> list[tuple[int | None, float]]:
        return [(s, m["optimizer/spikes/loss"]) for s, m in logger.logged if "optimizer/spikes/loss" in m]

    assert spikes(straight) == [(2, 0), (5, 2)]  # the spike at step 3 waited across the checkpoint
    assert spikes(first) + spikes(resumed) == spikes(straight)


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spike_threshold": 0.0}, ValueError, r"`spike_threshold` must be > 0 and finite, got 0.0"),
        ({"spike_threshold": -2}, ValueError, r"`spike_threshold` must be > 0 and finite, got -2"),
        ({"spike_threshold": math.inf}, ValueError, r"`spike_threshold` must be > 0 and finite, got inf"),
        ({"spike_threshold": "6"}, TypeError, r"`spike_threshold` must be a number, got '6'"),
        ({"spike_ema_decay": 1.0}, ValueError, r"`ema_decay` must be in \(0, 1\), got 1.0"),
        ({"spike_ema_decay": 0}, ValueError, r"`ema_decay` must be in \(0, 1\), got 0"),
        ({"spike_warmup_steps": 0}, ValueError, r"`warmup_steps` must be an int >= 1, got 0"),
        ({"action": "skipp"}, ValueError, r"one of \['log', 'raise', 'skip'\], got 'skipp'. Did you mean 'skip'\?"),
        ({"action": "stop"}, ValueError, r"`action` must be one of \['log', 'raise', 'skip'\], got 'stop'\.$"),
        ({"spike_on": ["los"]}, ValueError, r"`spike_on` must be one of \['grad_norm', 'loss'\], got 'los'. Did you"),
        ({"spike_on": "loss"}, TypeError, r"got the string 'loss'. Wrap it: `spike_on=\['loss'\]`"),
        ({"log_every_n_steps": 0}, ValueError, r"`log_every_n_steps` must be an int >= 1, got 0"),
        ({"log_every_n_steps": 2.5}, TypeError, r"`log_every_n_steps` must be an int >= 1, got 2.5"),
        ({"action": "skip", "spike_on": []}, ValueError, r"`action='skip'` acts on spikes, but `spike_on` is empty"),
        ({"spike_on": None}, TypeError, r"`spike_on` must be a list of signals \(or `\(\)` to turn .*\), got None"),
        ({"max_consecutive_spikes": 3}, ValueError, r"`max_consecutive_spikes=3` only applies to `action='skip'`"),
        ({"action": "raise", "max_consecutive_spikes": 0}, ValueError, r"`max_consecutive_spikes` must be an int >= 1"),
        ({"action": "skip", "max_consecutive_spikes": 1.5}, TypeError, r"`max_consecutive_spikes` must be an int"),
    ],
)
def test_bad_arguments_raise_clearly(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        OptimizerMonitor(**kwargs)


def test_arguments_are_not_mutated_and_spike_on_is_normalised() -> None:
    signals = ["loss", "grad_norm", "loss"]
    monitor = OptimizerMonitor(spike_on=signals)
    assert signals == ["loss", "grad_norm", "loss"]
    assert monitor.spike_on == ("grad_norm", "loss")


# -- adversarial uses ------------------------------------------------------------------------------------------


class TwoOptimizers(TinyModule):
    """Manual optimization: SGD on the first layer, AdamW on the second, each with its own loss."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        first, second = self.optimizers()  # type: ignore[misc]
        x, y = batch
        for opt, scale in ((first, 1.0), (second, 2.0)):
            opt.zero_grad()
            self.manual_backward(scale * nn.functional.mse_loss(self(x), y))
            opt.step()

    def configure_optimizers(self) -> Any:
        return (torch.optim.SGD(self.net[0].parameters(), lr=0.01),
                torch.optim.AdamW([{"params": self.net[2].parameters(), "name": "head"}], lr=0.01))


def test_several_optimizers_get_their_own_keys_and_detectors(make_trainer: Callable[..., L.Trainer]) -> None:
    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=2, spike_warmup_steps=2)
    make_trainer(max_steps=8, logger=logger, callbacks=[monitor]).fit(TwoOptimizers())  # 4 steps of each
    keys = {k for _, m in logger.logged for k in m}
    assert "optimizer/opt0/update_ratio/group0" in keys
    assert "optimizer/opt1/update_ratio/head" in keys
    assert "optimizer/opt1/sqrt_v/head" in keys
    assert not any(k.startswith("optimizer/opt0/sqrt_v") for k in keys)  # SGD has no second moment
    assert len(logger.series("optimizer/opt0/update_ratio/global")) == 2
    assert len(logger.series("optimizer/opt1/update_ratio/global")) == 2
    first, second = monitor.detector("loss", 0), monitor.detector("loss", 1)
    assert first is not None
    assert second is not None
    assert first.count == second.count == 4
    assert second.mean == pytest.approx(2 * first.mean, rel=0.2)  # each optimizer saw its own loss


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")  # on purpose, below
def test_steps_without_a_loss_empty_groups_and_no_logger(make_trainer: Callable[..., L.Trainer]) -> None:
    class Odd(TinyModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx == 1 else super().training_step(batch, batch_idx)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([{"params": self.parameters(), "name": "all"}, {"params": [], "name": "empty"}],
                                   lr=0.01)

    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=1, spike_warmup_steps=2)
    make_trainer(max_steps=4, logger=logger, callbacks=[monitor]).fit(Odd())
    rows = [s for s, m in logger.logged if "optimizer/update_ratio/global" in m]
    assert rows == [0, 2, 3]  # global step 1 trained nothing: no row
    rows = [m for _, m in logger.logged if "optimizer/update_ratio/global" in m]
    assert all("optimizer/update_ratio/empty" not in m and "optimizer/update_ratio/all" in m for m in rows)
    detector = monitor.detector("loss")
    assert detector is not None
    assert detector.count == 3  # the batch that returned None had no loss and no step

    quiet = OptimizerMonitor(log_every_n_steps=1, spike_warmup_steps=2)
    make_trainer(max_steps=3, callbacks=[quiet]).fit(LossSpike(at=(2,)))  # no logger: nothing to write, still watches
    assert quiet.detector("loss") is not None
    assert quiet.detector("loss").stats[0] == 2  # type: ignore[union-attr]


def test_loss_under_accumulation_is_the_window_mean(make_trainer: Callable[..., L.Trainer]) -> None:
    losses: list[float] = []

    class Recording(LossSpike):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            losses.append(loss.item())
            return loss

    monitor = OptimizerMonitor(spike_on=["loss"], spike_warmup_steps=100)  # Welford: the plain mean and variance
    make_trainer(max_steps=4, accumulate_grad_batches=3, callbacks=[monitor]).fit(Recording(at=()))
    windows = [sum(losses[i : i + 3]) / 3 for i in range(0, 12, 3)]
    detector = monitor.detector("loss")
    assert detector is not None
    assert detector.stats == pytest.approx((4, sum(windows) / 4, torch.tensor(windows).var(unbiased=False).item()))


@pytest.mark.gpu
def test_fp16_loss_is_unscaled_and_values_match_by_hand(make_trainer: Callable[..., L.Trainer]) -> None:
    losses: list[float] = []

    class Recording(AdamWModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            losses.append(loss.float().item())
            return loss

    logger, recorder = MemoryLogger(), StepRecorder()
    monitor = OptimizerMonitor(log_every_n_steps=1, spike_on=["loss"], spike_warmup_steps=100)
    trainer = make_trainer(accelerator="cuda", precision="16-mixed", max_steps=4, logger=logger,
                           callbacks=[recorder, monitor])
    trainer.fit(Recording())
    detector = monitor.detector("loss")
    assert detector is not None
    assert detector.mean == pytest.approx(sum(losses) / len(losses), rel=1e-4)  # not multiplied by the scale
    for step, row in logger.logged:
        if step in recorder.records and "optimizer/update_ratio/global" in row:
            expected = _expected(recorder.records[step], ["decay", "no_decay"])
            assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-4)


def test_warns_once_when_an_optimizer_never_runs_its_step_post_hooks(make_trainer: Callable[..., L.Trainer]) -> None:
    class Hookless(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:
            with torch.enable_grad():
                closure()
            with torch.no_grad():
                self._update()

        def _update(self) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])

        step.hooked = True  # type: ignore[attr-defined]  # torch then leaves it unwrapped: no hooks run

    class Module(TinyModule):
        def configure_optimizers(self) -> Any:
            return Hookless(self.parameters(), lr=0.01)

    logger = MemoryLogger()
    trainer = make_trainer(max_steps=3, logger=logger, callbacks=[OptimizerMonitor(log_every_n_steps=1)])
    with pytest.warns(UserWarning, match=r"`Hookless.step\(\)` did not run the optimizer's step post-hooks"):
        trainer.fit(Module())
    assert not any("optimizer/update_ratio/global" in m for _, m in logger.logged)


@pytest.mark.parametrize("name", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_refuses_strategies_that_flatten_parameters(name: str) -> None:
    from types import SimpleNamespace

    import lightning.pytorch.strategies as strategies

    cls = getattr(strategies, name)
    trainer = SimpleNamespace(strategy=cls.__new__(cls))  # the check reads the type only
    with pytest.raises(ValueError, match=rf"cannot measure updates under `{name}`.*ModelParallelStrategy"):
        OptimizerMonitor().on_fit_start(trainer, None)  # type: ignore[arg-type]


def test_a_real_gradient_clipping_first_shares_its_norm_on_the_hybrid(
    make_trainer: Callable[..., L.Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # [GradientClipping(), OptimizerMonitor()] is the documented pairing: it must train, not refuse the 2-norm clipper
    import lit_optim.callbacks.optimizer_monitor as module
    from tests.test_hybrid_trainer import HybridGPT

    measured: list[int] = []
    real = module.grouped_norms
    monkeypatch.setattr(module, "grouped_norms", lambda *a, **k: measured.append(1) or real(*a, **k))
    logger, monitor = MemoryLogger(), OptimizerMonitor(log_every_n_steps=2, spike_on=["grad_norm"])
    clipper = GradientClipping(max_norm=0.5, log_every_n_steps=2)
    make_trainer(max_steps=4, logger=logger, callbacks=[clipper, monitor]).fit(HybridGPT(scheduler=None))
    assert measured == []  # the norm was computed once per step, by the clipper
    ours, theirs = logger.series("optimizer/grad_norm/global"), logger.series("grad_clip/norm")
    assert len(ours) == 2
    assert ours == theirs  # the very same pre-clip value, on the same rows
    assert theirs[0] > 0.5  # the gradients were clipped, yet the monitor logs the pre-clip norm
    keys = {k for _, m in logger.logged for k in m}
    assert {"grad_clip/group_norm/muon/decay", "optimizer/update_ratio/muon/decay"} <= keys
    assert not [k for k in keys if k.startswith("optimizer/grad_norm/") and k != "optimizer/grad_norm/global"]
    assert monitor.detector("grad_norm").count == 4  # type: ignore[union-attr]


@pytest.mark.parametrize("names", [("global", "global-0"), ("a", "a/b"), ("global/x", "opt0")])
def test_odd_group_names_give_one_key_each_and_no_key_a_path_prefix_of_another(
    names: tuple[str, str], make_trainer: Callable[..., L.Trainer]
) -> None:
    class Odd(TinyModule):
        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW([{"params": self.net[0].parameters(), "name": names[0]},
                                      {"params": self.net[2].parameters(), "name": names[1]}], lr=0.01)

    logger = MemoryLogger()
    make_trainer(max_steps=1, logger=logger, callbacks=[OptimizerMonitor(log_every_n_steps=1)]).fit(Odd())
    keys = {k for _, m in logger.logged for k in m if k.startswith("optimizer/update_ratio/")}
    assert len(keys) == 3  # each group and the global value: none overwrote another
    every = sorted(k for _, m in logger.logged for k in m)
    assert not [(a, b) for a in every for b in every if b.startswith(a + "/")]


def test_hybrid_values_equal_a_hand_computation_per_group_of_both_halves(
    make_trainer: Callable[..., L.Trainer]
) -> None:
    # Muon's half has a momentum buffer, no exp_avg_sq: sqrt_v covers the AdamW groups (and its global, them only)
    from tests.test_hybrid_trainer import HybridGPT

    logger, recorder = MemoryLogger(), StepRecorder()
    monitor = OptimizerMonitor(log_every_n_steps=1, spike_on=())
    trainer = make_trainer(max_steps=3, accumulate_grad_batches=2, logger=logger, callbacks=[recorder, monitor])
    trainer.fit(HybridGPT(scheduler=None))
    names = ["muon/decay", "adamw/decay", "adamw/no_decay"]
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == names
    rows = {step: m for step, m in logger.logged if any(k.startswith("optimizer/") for k in m)}
    assert sorted(rows) == [0, 1, 2]
    for step, row in rows.items():
        expected = _expected(recorder.records[step], names)
        assert "optimizer/sqrt_v/muon/decay" not in row
        assert set(row) == set(expected)
        assert row == pytest.approx(expected, rel=2e-5)


def test_detector_of_an_unknown_signal_raises_instead_of_returning_none() -> None:
    with pytest.raises(ValueError, match=r"`signal` must be one of \['grad_norm', 'loss'\], got 'los'. Did you mean"):
        OptimizerMonitor().detector("los")
    assert OptimizerMonitor().detector("loss") is None  # a valid signal before training: nothing has run yet
