"""Schedule-free bad input, without needing the `schedulefree` package (its absence is simulated)."""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_optim import Constant, Cosine, Plateau, ScheduleFreeMode, Warmup, configure_optimizers
from lit_optim.optim.optimizers import resolve_optimizer
from lit_optim.optim.schedule_free import SCHEDULE_FREE_OPTIMIZERS, has_train_eval_modes, schedule_free_lr
from tests.models import TinyModule


class ModalSGD(torch.optim.SGD):
    """A schedule-free-like optimizer (train()/eval() with a `train_mode` flag) that needs no package."""

    def __init__(self, params: Any, lr: float = 0.1, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.train_mode = False

    def train(self) -> None:
        self.train_mode = True

    def eval(self) -> None:
        self.train_mode = False


class TrainOnlySGD(torch.optim.SGD):
    def train(self) -> None:
        pass


@pytest.fixture
def no_schedulefree(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "schedulefree" or name.startswith("schedulefree."):
            raise ModuleNotFoundError("No module named 'schedulefree'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "schedulefree", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: fake_import(name))


@pytest.mark.parametrize("name", ["adamw_schedulefree", "SGD_ScheduleFree", "radam_schedulefree", "AdamWScheduleFree"])
def test_a_missing_package_names_the_extra(no_schedulefree: None, name: str) -> None:
    with pytest.raises(ImportError, match=re.escape('pip install "lit_optim[schedulefree]"')):
        resolve_optimizer(name)
    with pytest.raises(ImportError, match=r"from the optional `schedulefree` package, which is not installed"):
        configure_optimizers(nn.Linear(2, 1), name)


def test_other_names_resolve_without_the_package(no_schedulefree: None) -> None:
    assert resolve_optimizer("adamw") is torch.optim.AdamW


def test_unknown_names_list_the_schedule_free_ones_and_suggest_the_closest() -> None:
    with pytest.raises(ValueError, match=r"Did you mean 'adamw_schedulefree'\?") as info:
        resolve_optimizer("adamw_schedulfree")
    for name in SCHEDULE_FREE_OPTIMIZERS:
        assert repr(name) in str(info.value)


def test_train_without_eval_is_refused() -> None:
    with pytest.raises(TypeError, match=r"TrainOnlySGD has a `train\(\)` method but no `eval\(\)`"):
        configure_optimizers(nn.Linear(2, 1), TrainOnlySGD, lr=0.1)
    with pytest.raises(TypeError, match=r"no `eval\(\)`"):
        has_train_eval_modes(TrainOnlySGD)
    assert has_train_eval_modes(ModalSGD)
    assert not has_train_eval_modes(torch.optim.SGD)


@pytest.mark.parametrize(
    "scheduler",
    [Cosine(), "cosine", {"name": "linear", "warmup": 2}, {"class_path": "lit_optim.Cosine", "init_args": {}},
     Plateau("val_loss")],
)
def test_a_decaying_schedule_with_a_schedule_free_optimizer_warns_naming_the_fix(
    make_trainer: Callable[..., L.Trainer], scheduler: Any
) -> None:
    class Model(TinyModule):
        def configure_optimizers(self) -> Any:
            return configure_optimizers(self, ModalSGD, lr=0.1, scheduler=scheduler)

    fix = r"Use `scheduler=None`, `scheduler=Constant\(warmup=...\)` for a warmup"
    with pytest.warns(RuntimeWarning, match=rf"ModalSGD is schedule-free, but the scheduler .* adds .*{fix}"):
        make_trainer(max_steps=4).fit(Model())  # warned, then applied as asked


@pytest.mark.parametrize("scheduler", [None, Constant(), Constant(warmup=Warmup(duration=3, start_factor=0.1))])
def test_no_schedule_or_a_warmup_is_fine(make_trainer: Callable[..., L.Trainer], scheduler: Any) -> None:
    class Model(TinyModule):
        def configure_optimizers(self) -> Any:
            return configure_optimizers(self, ModalSGD, lr=0.1, scheduler=scheduler)

    trainer = make_trainer(max_steps=4)
    trainer.fit(Model())  # warnings are errors: none is raised
    assert sum(isinstance(c, ScheduleFreeMode) for c in trainer.callbacks) == 1


def test_weights_only_checkpoints_warn(make_trainer: Callable[..., L.Trainer], tmp_path: Any) -> None:
    class Model(TinyModule):
        def configure_optimizers(self) -> Any:
            return configure_optimizers(self, ModalSGD, lr=0.1)

    trainer = make_trainer(max_steps=2, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)])
    with pytest.warns(RuntimeWarning, match=r"save_weights_only=True\) skips callback hooks.*save_weights_only=False"):
        trainer.fit(Model())


def test_the_effective_lr_follows_schedulefree_warmup_formula() -> None:
    group = {"lr": 0.2, "warmup_steps": 4, "k": 0, "train_mode": True}
    assert [schedule_free_lr({**group, "k": k}) for k in range(6)] == [0.2 * (k + 1) / 4 for k in range(4)] + [0.2] * 2
    assert schedule_free_lr({"lr": 0.2, "warmup_steps": 4, "k": 0}) is None  # not a schedulefree group
