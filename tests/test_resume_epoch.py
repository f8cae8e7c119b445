"""Issue 13: per-epoch schedulers resume exactly from any checkpoint: mid-epoch, on an epoch's last optimizer step,
at the end of the training epoch and at the end of its validation run; the lr at every resumed step and the final
weights are those of the uninterrupted run, bit for bit. Plain Lightning is measured alongside (``stepper=False``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.optim import lr_scheduler as tl
from torch.utils.data import DataLoader, TensorDataset

from lit_optim import Cosine, ScheduleLR, SchedulerStepper, Step, lightning_scheduler_config, preview_schedule
from tests.models import TinyModule
from tests.trainers import cpu_trainer

EPOCHS, BATCHES = 4, 4


class Recorder(Callback):
    """The lrs of every group just before each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[tuple[float, ...]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append(tuple(float(g["lr"]) for g in optimizer.param_groups))


class Model(TinyModule):
    """Every batch holds the same samples, so a resumed run that re-reads an epoch's batches in another order (the
    dataloader is not resumable mid-epoch) trains on the same data: the weights depend only on the lrs used."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def train_dataloader(self) -> DataLoader:
        x, y = self.val_dataloader().dataset.tensors
        return DataLoader(TensorDataset(x[:4].repeat(BATCHES, 1), y[:4].repeat(BATCHES, 1)), batch_size=4)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            [
                {"params": self.net[0].parameters(), "lr": 0.1},
                {"params": self.net[2].parameters(), "lr": 0.4},
            ],
            momentum=0.9,
        )
        if self.kind == "StepLR":
            return {"optimizer": opt, "lr_scheduler": tl.StepLR(opt, step_size=1, gamma=0.5)}
        if self.kind == "CosineAnnealingLR":
            return {"optimizer": opt, "lr_scheduler": tl.CosineAnnealingLR(opt, T_max=EPOCHS)}
        if self.kind == "Step(every='1ep')":  # a lit_optim spec whose curve moves once per epoch
            return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, SPEC, self.trainer)}
        # "ScheduleLR-per-epoch": a lit_optim schedule stepped once per epoch, its steps counting epochs
        return {"optimizer": opt, "lr_scheduler": ScheduleLR(opt, Cosine(min_lr=0.1), total_steps=EPOCHS)}


SPEC = Step(every="1ep", gamma=0.5)


def _expected(kind: str) -> list[tuple[float, ...]]:
    """The closed form of each schedule at every optimizer step of the run."""
    rows = []
    for step in range(EPOCHS * BATCHES):
        epoch = step // BATCHES
        if kind in ("StepLR", "Step(every='1ep')"):
            factor = 0.5**epoch
        elif kind == "CosineAnnealingLR":  # torch's closed form, eta_min = 0
            factor = (1 + math.cos(math.pi * epoch / EPOCHS)) / 2
        else:  # lit_optim's Cosine(min_lr=0.1) over EPOCHS steps, one per epoch
            factor = 0.1 + 0.9 * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2
        rows.append((0.1 * factor, 0.4 * factor))
    return rows


def _fit(root: Path, kind: str, stepper: bool, ckpt_path: str | None = None) -> tuple[list[Any], dict[str, Any]]:
    recorder = Recorder()
    callbacks: list[Callback] = [
        recorder,
        ModelCheckpoint(dirpath=root / "steps", save_top_k=-1, every_n_train_steps=1),
        ModelCheckpoint(dirpath=root / "train_end", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True),
        ModelCheckpoint(  # `monitor` only to give it a state key of its own
            dirpath=root / "val_end", monitor="val_loss", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=False
        ),
    ]
    if kind == "ScheduleLR-per-epoch":
        callbacks.insert(0, SchedulerStepper(intervals={"ScheduleLR": "epoch"}))
    elif stepper and kind != "Step(every='1ep')":  # that one attaches a stepper itself
        callbacks.insert(0, SchedulerStepper())
    trainer = cpu_trainer(
        root, max_epochs=EPOCHS, limit_train_batches=BATCHES, limit_val_batches=1, callbacks=callbacks
    )
    model = Model(kind)
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder.lrs, {k: v.clone() for k, v in model.state_dict().items()}


_STRAIGHT: dict[tuple[str, bool], tuple[Path, list[Any], dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], tuple[Path, list[Any], Any]]:
    def run(kind: str, stepper: bool) -> tuple[Path, list[Any], dict[str, Any]]:
        if (kind, stepper) not in _STRAIGHT:
            root = tmp_path_factory.mktemp(f"straight-{len(_STRAIGHT)}")
            _STRAIGHT[kind, stepper] = (root, *_fit(root, kind, stepper))
        return _STRAIGHT[kind, stepper]

    return run


POSITIONS = {
    "last-step-of-epoch": ("steps", "epoch=1-step=8.ckpt", 8),
    "mid-epoch": ("steps", "epoch=1-step=6.ckpt", 6),
    "train-epoch-end": ("train_end", "epoch=1-step=8.ckpt", 8),
    "validation-end": ("val_end", "epoch=1-step=8.ckpt", 8),
}
CASES = [
    *((kind, stepper) for kind in ("StepLR", "CosineAnnealingLR") for stepper in (False, True)),
    ("Step(every='1ep')", True),  # attaches the stepper itself
    ("ScheduleLR-per-epoch", True),  # stepped per epoch by `intervals`; plain Lightning would step it per epoch too
]


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # every batch is the same here
@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize(("kind", "stepper"), CASES, ids=[f"{k}-{'stepper' if s else 'plain'}" for k, s in CASES])
def test_per_epoch_schedule_resumes_exactly_from_any_checkpoint(
    tmp_path: Path,
    straight: Callable[[str, bool], tuple[Path, list[Any], dict[str, Any]]],
    kind: str,
    stepper: bool,
    position: str,
) -> None:
    root, lrs, weights = straight(kind, stepper)
    flat = [lr for row in lrs for lr in row]
    assert flat == pytest.approx([lr for row in _expected(kind) for lr in row], rel=1e-12, abs=0)
    folder, name, step = POSITIONS[position]
    resumed_lrs, resumed_weights = _fit(tmp_path, kind, stepper, ckpt_path=str(root / folder / name))
    assert resumed_lrs == lrs[step:]  # the lr at every resumed step, float for float
    for key, value in weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_the_preview_of_an_epoch_spec_is_what_the_trainer_uses(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = cpu_trainer(tmp_path, max_epochs=EPOCHS, limit_train_batches=BATCHES, callbacks=[recorder])
    trainer.fit(Model("Step(every='1ep')"))
    assert recorder.lrs == list(preview_schedule(SPEC, trainer, base_lrs=[0.1, 0.4]).lrs)
