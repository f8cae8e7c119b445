"""What every public callback promises: builds with defaults, pickles, its state survives a real fit's
checkpoint, and two differently configured instances can live on one Trainer."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lit_optim
from lit_optim import (
    Cosine,
    GradientClipping,
    LearningRateLogger,
    LRRangeTest,
    OptimizerMonitor,
    ScheduleFreeMode,
    SchedulerStepper,
    configure_optimizers,
)
from tests.loggers import MemoryLogger
from tests.models import TinyModule

CALLBACKS = [
    c for name in lit_optim.__all__ if isinstance(c := getattr(lit_optim, name), type) and issubclass(c, Callback)
]


def test_every_public_callback_is_listed_here() -> None:
    assert set(CALLBACKS) == {
        GradientClipping,
        LearningRateLogger,
        LRRangeTest,
        OptimizerMonitor,
        ScheduleFreeMode,
        SchedulerStepper,
    }


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_builds_with_defaults_and_pickles(cls: type[Callback]) -> None:
    callback = cls()
    clone = pickle.loads(pickle.dumps(callback))
    assert type(clone) is cls
    assert clone.state_key == callback.state_key
    assert clone.state_dict() == callback.state_dict()


class _Scheduled(TinyModule):
    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "adamw", lr=0.01, scheduler=Cosine(warmup=2))


# Configurations that leave real run-time state behind (a percentile window, skip counters, logging windows).
STATEFUL: dict[type[Callback], Callable[[], Callback]] = {
    GradientClipping: lambda: GradientClipping(mode="percentile", window=3, skip_nonfinite=True, log_every_n_steps=2),
    LearningRateLogger: lambda: LearningRateLogger(log_every_n_steps=2),
    OptimizerMonitor: lambda: OptimizerMonitor(spike_warmup_steps=2, action="skip", log_every_n_steps=2),
    SchedulerStepper: SchedulerStepper,
    ScheduleFreeMode: ScheduleFreeMode,
    LRRangeTest: lambda: LRRangeTest(num_steps=13),  # its record of the test: base lr, suggestion, steps
}


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_state_survives_a_checkpoint_of_a_real_fit(
    cls: type[Callback], make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    callback = STATEFUL[cls]()
    trainer = make_trainer(max_steps=5, logger=MemoryLogger(), callbacks=[callback])
    trainer.fit(_Scheduled())
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    # plain values only (weights_only); Lightning leaves an empty state out (the stateless SchedulerStepper's)
    saved = torch.load(path, weights_only=True)["callbacks"].get(callback.state_key, {})
    fresh = STATEFUL[cls]()
    fresh.load_state_dict(saved)
    assert _plain(fresh.state_dict()) == _plain(callback.state_dict()) == _plain(saved)
    if cls not in (SchedulerStepper, ScheduleFreeMode):  # stateless by design (progress: schedulers, optimizers)
        assert _plain(saved) != _plain(STATEFUL[cls]().state_dict())  # the fit left state to restore


def _plain(value: Any) -> Any:
    """Tensors as lists, so states compare by value."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def test_differently_configured_instances_have_distinct_state_keys() -> None:
    assert GradientClipping(max_norm=1.0).state_key != GradientClipping(max_norm=0.5).state_key
    assert LearningRateLogger(log_every_n_steps=1).state_key != LearningRateLogger(log_every_n_steps=2).state_key
    assert OptimizerMonitor(spike_on=["loss"]).state_key != OptimizerMonitor(spike_on=["grad_norm"]).state_key


class _DuplicateNames(TinyModule):
    def configure_optimizers(self) -> Any:
        first, second = self.net[0], self.net[2]
        groups = [{"params": first.parameters(), "name": "a"}, {"params": second.parameters(), "name": "a"}]
        return torch.optim.SGD(groups, lr=0.1)


def test_logging_callbacks_name_groups_alike(make_trainer: Callable[..., L.Trainer]) -> None:
    logger = MemoryLogger()
    callbacks = [GradientClipping(log_every_n_steps=1), LearningRateLogger(log_every_n_steps=1)]
    make_trainer(max_steps=1, logger=logger, callbacks=callbacks).fit(_DuplicateNames())
    keys = {k for _, metrics in logger.logged for k in metrics}
    assert {k.removeprefix("lr/") for k in keys if k.startswith("lr/")} == {"a", "a-1"}
    group_norms = {k.removeprefix("grad_clip/group_norm/") for k in keys if k.startswith("grad_clip/group_norm/")}
    assert group_norms == {"a", "a-1"}
