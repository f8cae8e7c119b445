"""The whole lit_optim stack adds no host-device sync on training steps where nothing is logged.

A guard switches on at ``on_train_batch_start`` (first callback) and off at ``on_train_batch_end`` (last
callback) of every batch, so everything in between (Lightning's step, the stack's hooks, the optimizer's step
post-hooks) runs under it. On CPU the guard makes every Python-level tensor-to-host conversion raise; on CUDA it
is ``torch.cuda.set_sync_debug_mode("error")``. The model logs nothing and the callbacks log every 1000 steps, so
only the first step (global step 0) may sync; the guard starts from the second.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

import lit_optim
from lit_optim import Cosine, GradientClipping, LearningRateLogger, OptimizerMonitor, configure_optimizers
from tests.models import TinyModule

_CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
_PACKAGE = str(Path(lit_optim.__file__).parent)
_TORCH_OPTIM = str(Path(torch.optim.__file__).parent)


def _called_from_lit_optim() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_TORCH_OPTIM):  # a torch optimizer's own step (the hybrid steps them)
            return False
        if frame.f_code.co_filename.startswith(_PACKAGE):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@contextmanager
def _no_host_conversions() -> Iterator[None]:
    """Make tensor-to-host conversions raise when lit_optim code is on the stack (torch's CPU Adam itself
    calls ``.item()`` on its step counter; that is not ours to judge)."""
    saved = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def refusing(name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            if _called_from_lit_optim():
                raise AssertionError("host-device sync on a step that logs nothing")
            return saved[name](*args, **kwargs)

        return refuse

    try:
        for name in _CONVERSIONS:
            setattr(torch.Tensor, name, refusing(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


class _GuardOn(Callback):
    def __init__(self, device: str) -> None:
        self.device = device
        self.guarded_steps = 0
        self._cm: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 0:
            return
        self.guarded_steps += 1
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        else:
            self._cm = _no_host_conversions()
            self._cm.__enter__()

    def release(self) -> None:
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        elif self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


class _GuardOff(Callback):
    def __init__(self, on: _GuardOn) -> None:
        self.on = on

    def on_train_batch_end(self, *args: Any) -> None:
        self.on.release()

    def on_exception(self, *args: Any) -> None:
        self.on.release()


class QuietModule(TinyModule):
    """Logs nothing, so Lightning itself has no reason to sync; uses the whole lit_optim stack."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "adamw", lr=1e-2, weight_decay=0.1, scheduler=Cosine(warmup="20%"))


def _fit_guarded(device: str, make_trainer: Any, **trainer_kwargs: Any) -> tuple[_GuardOn, L.Trainer]:
    on = _GuardOn(device)
    monitor = OptimizerMonitor(log_every_n_steps=1000, spike_warmup_steps=2)  # watches the loss and grad norm
    callbacks = [on, monitor, GradientClipping(max_norm=0.5, log_every_n_steps=1000),
                 LearningRateLogger(log_every_n_steps=1000), _GuardOff(on)]
    trainer = make_trainer(accelerator=device, max_steps=8, callbacks=callbacks,
                           logger=L.pytorch.loggers.CSVLogger(trainer_kwargs.pop("root")), **trainer_kwargs)
    trainer.fit(QuietModule())
    assert monitor.detector("loss").stats[0] > 2  # it did run
    assert monitor.detector("grad_norm").stats[0] > 2
    return on, trainer


def test_stack_is_sync_free_on_cpu(make_trainer: Any, tmp_path: Any) -> None:
    on, trainer = _fit_guarded("cpu", make_trainer, root=tmp_path)
    assert trainer.global_step == 8
    assert on.guarded_steps == 7


def test_guard_catches_a_sync(make_trainer: Any, tmp_path: Any) -> None:
    # The same run logging every step must trip the guard: proves the guard is live.
    on = _GuardOn("cpu")
    callbacks = [on, GradientClipping(max_norm=0.5, log_every_n_steps=1), _GuardOff(on)]
    trainer = make_trainer(max_steps=3, callbacks=callbacks, logger=L.pytorch.loggers.CSVLogger(tmp_path))
    with pytest.raises(AssertionError, match="host-device sync"):
        trainer.fit(QuietModule())


@pytest.mark.parametrize("kwargs", [{"log_every_n_steps": 1}, {"action": "skip"}], ids=["logging", "skip"])
def test_guard_catches_the_monitors_documented_syncs(make_trainer: Any, tmp_path: Any, kwargs: dict[str, Any]) -> None:
    # OptimizerMonitor syncs on logging steps and, with action="skip", on every step: the guard must see both
    on = _GuardOn("cpu")
    callbacks = [on, OptimizerMonitor(**kwargs), _GuardOff(on)]
    trainer = make_trainer(max_steps=3, callbacks=callbacks, logger=L.pytorch.loggers.CSVLogger(tmp_path))
    with pytest.raises(AssertionError, match="host-device sync"):
        trainer.fit(QuietModule())


@pytest.mark.gpu
def test_stack_is_sync_free_on_cuda(make_trainer: Any, tmp_path: Any) -> None:
    on, _ = _fit_guarded("cuda", make_trainer, root=tmp_path)
    assert on.guarded_steps == 7


@pytest.mark.gpu
def test_stack_is_sync_free_on_cuda_bf16(make_trainer: Any, tmp_path: Any) -> None:
    on, _ = _fit_guarded("cuda", make_trainer, root=tmp_path, precision="bf16-mixed")
    assert on.guarded_steps == 7


class QuietScheduleFree(QuietModule):
    """A schedule-free optimizer with a weight-decay schedule and batch-size scaling, validated every 3 steps (so
    ``ScheduleFreeMode`` switches back to train mode inside the guarded window)."""

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return None

    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self, "adamw_schedulefree", lr=1e-2, warmup_steps=2, lr_scaling="linear", reference_batch_size=8,
            param_schedules={"weight_decay": lit_optim.ParamSchedule(start=0.0, end=0.1, shape="linear")},
        )


def test_schedule_free_stack_is_sync_free_on_cpu(make_trainer: Any, tmp_path: Any) -> None:
    pytest.importorskip("schedulefree")
    on = _GuardOn("cpu")
    switches: list[bool] = []

    class _Modes(Callback):  # after ScheduleFreeMode: the mode each guarded batch trains in
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            switches.append(bool(trainer.optimizers[0].param_groups[0]["train_mode"]))

    callbacks = [on, GradientClipping(max_norm=0.5, log_every_n_steps=1000),
                 LearningRateLogger(log_every_n_steps=1000), _Modes(), _GuardOff(on)]
    trainer = make_trainer(max_steps=8, callbacks=callbacks, val_check_interval=3, limit_val_batches=1,
                           logger=L.pytorch.loggers.CSVLogger(tmp_path))
    trainer.fit(QuietScheduleFree())
    assert on.guarded_steps == 7
    assert switches == [True] * 8
    assert not trainer.optimizers[0].param_groups[0]["train_mode"]  # eval at the end of fit


def test_hybrid_with_the_clipper_first_sharing_its_norm_is_sync_free_on_cpu(make_trainer: Any, tmp_path: Any) -> None:
    # Muon + AdamW, the monitor reusing GradientClipping's pre-clip norm (clipper first): still no sync per step
    from tests.test_hybrid_trainer import HybridGPT

    on = _GuardOn("cpu")
    monitor = OptimizerMonitor(log_every_n_steps=1000)  # no spike can be flagged in its 20 warm-up values
    callbacks = [on, GradientClipping(max_norm=0.5, log_every_n_steps=1000), monitor,
                 LearningRateLogger(log_every_n_steps=1000), _GuardOff(on)]
    trainer = make_trainer(max_steps=6, callbacks=callbacks, logger=L.pytorch.loggers.CSVLogger(tmp_path))
    trainer.fit(HybridGPT(batches=6))
    assert on.guarded_steps == 5
    assert monitor.detector("grad_norm").count == 6  # type: ignore[union-attr]
