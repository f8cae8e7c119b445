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
from lit_optim import Cosine, GradientClipping, LearningRateLogger, SchedulerStepper, configure_optimizers
from tests.loggers import MemoryLogger
from tests.models import TinyModule

CALLBACKS = [
    c for name in lit_optim.__all__ if isinstance(c := getattr(lit_optim, name), type) and issubclass(c, Callback)
]


def test_every_public_callback_is_listed_here() -> None:
    assert set(CALLBACKS) == {GradientClipping, LearningRateLogger, SchedulerStepper}


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


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_state_survives_a_checkpoint_of_a_real_fit(
    cls: type[Callback], make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    callback = cls()
    trainer = make_trainer(max_steps=5, logger=MemoryLogger(), callbacks=[callback])
    trainer.fit(_Scheduled())
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    # plain values only (weights_only); Lightning leaves an empty state out (the stateless SchedulerStepper's)
    saved = torch.load(path, weights_only=True)["callbacks"].get(callback.state_key, {})
    fresh = cls()
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == callback.state_dict() == saved


def test_differently_configured_instances_have_distinct_state_keys() -> None:
    assert GradientClipping(max_norm=1.0).state_key != GradientClipping(max_norm=0.5).state_key
    assert LearningRateLogger(log_every_n_steps=1).state_key != LearningRateLogger(log_every_n_steps=2).state_key
