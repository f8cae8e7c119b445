"""Schedule specs as config data: LightningCLI's class_path form in hparams, and checkpoints that load with
``weights_only=True``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lit_optim import (
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    OneCycle,
    OptimizerMixin,
    Plateau,
    Polynomial,
    Step,
    Warmup,
    WarmupStableDecay,
)
from lit_optim.schedules._config import spec_from_config, spec_to_config
from tests.models import TinyModule

SPECS = [
    Constant(warmup=3),
    Linear(min_lr=0.1),
    Cosine(warmup={"duration": "5%", "shape": "cosine", "start_factor": 0.1}, min_lr=0.1),
    CosineRestarts(period="1ep", period_mult=2),
    Polynomial(power=2.0, warmup="1ep"),
    Step(every=30, gamma=0.5),
    MultiStep(milestones=[10, "50%"], gamma=0.5),
    Exponential(gamma=0.99),
    InverseSqrt(warmup=100),
    OneCycle(cycle_momentum=True),
    WarmupStableDecay(warmup=10, decay="20%", decay_shape="1-sqrt"),
    Plateau("val_loss", mode="max", factor=0.5, patience=2, warmup="2ep"),
    # the peers' options (issue 13)
    Cosine(warmup=Warmup(duration=4, start_factor=0.2), decay_end="80%", cycles=0.25, min_lr=0.1),
    Linear(min_lr_abs=1e-5, decay_end="3ep"),
    CosineRestarts(cycles=3, warmup=Warmup(duration=5, shape="1-sqrt", start_lr=1e-6), min_lr_abs=1e-5),
    CosineRestarts(period=4, period_mult=1.5, cycle_decay=0.5, cycle_limit=3, warmup_prefix=False),
    WarmupStableDecay(warmup=2, stable="50%", decay=10, decay_shape="cosine", cycles=1.0),
    Cyclic(up="1ep", down=3, mode="exp_range", gamma=0.99, cycle_momentum=True, min_lr_abs=1e-4),
    Constant(warmup=Warmup(duration=5, shape="constant", start_factor=1 / 3)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_config_round_trip_is_plain_and_exact(spec: Any, tmp_path: Path) -> None:
    config = spec_to_config(spec)
    torch.save(config, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)  # plain data only
    assert spec_from_config(loaded) == spec


@pytest.mark.parametrize(
    "spec",
    [Cosine(warmup=1 / 3), Step(every="0.1234567ep"), CosineRestarts(period=0.500000001), Linear(warmup="1.5ep")],
    ids=["third-of-run", "odd-epochs", "near-half", "readable"],
)
def test_durations_round_trip_exactly(spec: Any) -> None:
    assert spec_from_config(spec_to_config(spec)) == spec


def test_only_lit_optim_specs_are_built() -> None:
    with pytest.raises(TypeError, match=r"'torch.optim.SGD' is not a lit_optim schedule spec"):
        spec_from_config({"class_path": "torch.optim.SGD", "init_args": {}})
    sys.modules.pop("this", None)
    with pytest.raises(TypeError, match=r"'this.x' is not a lit_optim schedule spec"):
        spec_from_config({"class_path": "this.x"})
    assert "this" not in sys.modules  # refused before importing: a config must not run another module's code
    with pytest.raises(TypeError, match=r"'lit_optim.Schedule' is not a lit_optim schedule spec"):
        spec_from_config({"class_path": "lit_optim.Schedule"})
    with pytest.raises(ValueError, match=r"Cannot import schedule `class_path` 'lit_optim.Cosin'"):
        spec_from_config({"class_path": "lit_optim.Cosin"})
    assert spec_from_config("cosine") == "cosine"  # anything else is left to the caller


class _Lrs(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


class Scheduled(OptimizerMixin, TinyModule):
    def __init__(self, lr: float = 0.1, optimizer: str = "sgd", scheduler: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def test_mixin_takes_lightning_cli_class_path_hparams(make_trainer: Callable[..., L.Trainer]) -> None:
    recorder = _Lrs()
    config = {"class_path": "lit_optim.Linear", "init_args": {"warmup": 2}}
    make_trainer(max_steps=6, callbacks=[recorder]).fit(Scheduled(scheduler=config))
    # Linear with a 2-step warmup from 0 over 6 steps: 0, 0.5, then down from 1 over the remaining 4 steps.
    assert recorder.lrs == pytest.approx([0.1 * f for f in (0.0, 0.5, 1.0, 0.75, 0.5, 0.25)], rel=1e-12)


# The resumed run saves next to the checkpoint it resumes from, on purpose (same ModelCheckpoint setup).
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_mixin_checkpoint_with_a_spec_loads_with_weights_only_and_resumes_the_schedule(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    spec = Cosine(warmup="25%", min_lr=0.1)
    straight = _Lrs()
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[straight, saver],
                 enable_checkpointing=True).fit(Scheduled(scheduler=spec))
    ckpt = tmp_path / "epoch=0.ckpt"
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]["scheduler"]
    assert stored == spec_to_config(spec)
    model = Scheduled.load_from_checkpoint(ckpt)  # Lightning's default: torch.load(weights_only=True)
    assert model.hparams["scheduler"] == spec_to_config(spec)

    resumed = _Lrs()
    same_saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="resumed-{epoch}")
    make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[resumed, same_saver],
                 enable_checkpointing=True).fit(model, ckpt_path=ckpt)
    assert len(straight.lrs) == 8
    assert resumed.lrs == straight.lrs[4:]


def test_mixin_checkpoint_with_a_schedule_mapping_holding_objects_loads_with_weights_only(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    from lit_optim import Warmup

    scheduler = {"name": "cosine", "warmup": Warmup(duration="25%", shape="cosine"), "min_lr": 0.1}
    trainer = make_trainer(max_steps=4)
    trainer.fit(Scheduled(scheduler=scheduler))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    stored = torch.load(tmp_path / "run.ckpt", weights_only=True)["hyper_parameters"]["scheduler"]
    assert stored == {"name": "cosine", "warmup": {"duration": "25%", "shape": "cosine", "start_factor": 0.0},
                      "min_lr": 0.1}
    assert Scheduled.load_from_checkpoint(tmp_path / "run.ckpt").hparams["scheduler"] == stored
