"""Resume edge cases of ``SchedulerStepper`` found in review: each run N+K straight vs N, save, restore, K more,
compared lr for lr (plain Lightning measured alongside where it supports the case)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.optim import lr_scheduler as tl

from lit_optim import SchedulerStepper
from tests.ddp import run_ddp
from tests.models import TinyModule, manual_sgd_step
from tests.trainers import cpu_trainer

BATCHES = 4


class Recorder(Callback):
    """The lr of every optimizer's first group just before each of its steps."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


class HandSteppedEpoch(TinyModule):
    """Manual optimization, Lightning's recipe: the epoch scheduler stepped by hand on each epoch's last batch."""

    def __init__(self) -> None:
        super().__init__(n=4 * BATCHES)
        self.automatic_optimization = False

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": tl.StepLR(opt, step_size=1, gamma=0.5)}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = manual_sgd_step(self, batch)
        if self.trainer.is_last_batch:
            self.lr_schedulers().step()  # type: ignore[union-attr]
        return loss


def _fit(root: Path, model: LightningModule, stepper: bool, epochs: int, ckpt_path: str | None = None) -> Recorder:
    recorder = Recorder()
    callbacks: list[Callback] = [recorder, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_train_steps=1)]
    if stepper:
        callbacks.insert(0, SchedulerStepper())
    trainer = cpu_trainer(root, max_epochs=epochs, limit_val_batches=1, callbacks=callbacks)
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder


@pytest.mark.filterwarnings("ignore:.*is stepped by your `training_step`:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")
@pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization:UserWarning")
@pytest.mark.parametrize("step", [4, 6, 8], ids=["first-epoch-last-step", "mid-epoch", "second-epoch-last-step"])
@pytest.mark.parametrize("stepper", [False, True], ids=["plain", "stepper"])
def test_hand_stepped_epoch_scheduler_is_not_caught_up_again_on_resume(
    tmp_path: Path, stepper: bool, step: int
) -> None:
    straight = _fit(tmp_path / "straight", HandSteppedEpoch(), stepper, epochs=4).lrs
    assert straight == [0.1 * 0.5 ** (i // BATCHES) for i in range(4 * BATCHES)]
    epoch = (step - 1) // BATCHES
    ckpt = tmp_path / "straight" / "ckpt" / f"epoch={epoch}-step={step}.ckpt"
    resumed = _fit(tmp_path / "resumed", HandSteppedEpoch(), stepper, epochs=4, ckpt_path=str(ckpt)).lrs
    assert resumed == straight[step:]


class PlateauOnEpochMetric(TinyModule):
    """A ``ReduceLROnPlateau`` (cooldown 2) on a training metric that never improves, logged either by
    ``training_step`` with ``on_epoch=True`` or by the module's own ``on_train_epoch_end``."""

    def __init__(self, where: str) -> None:
        super().__init__(n=4 * BATCHES)
        self.where = where

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.where == "training_step":
            self.log("flat", 1.0, on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.where == "on_train_epoch_end":
            self.log("flat", 1.0)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0, cooldown=2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "flat"}}


def _fit_plateau(root: Path, where: str, stepper: bool, ckpt_path: str | None = None) -> Recorder:
    recorder = Recorder()
    callbacks: list[Callback] = [
        recorder,
        ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True),
    ]
    if stepper:
        callbacks.insert(0, SchedulerStepper())
    trainer = cpu_trainer(root, max_epochs=7, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(PlateauOnEpochMetric(where), ckpt_path=ckpt_path)
    return recorder


def _plateau_closed_form(epochs: int) -> list[float]:
    """torch's rule with patience 0, cooldown 2 on a constant metric: the first epoch sets the best, then a
    reduction at every epoch end that is out of cooldown (epochs 1, 4, 7, ...)."""
    lrs, lr, cooldown, bad = [], 0.1, 0, 0
    for epoch in range(epochs):
        lrs += [lr] * BATCHES
        if epoch == 0:
            continue
        bad += 1
        if cooldown > 0:
            cooldown, bad = cooldown - 1, 0
        if bad > 0:
            lr, cooldown, bad = lr * 0.5, 2, 0
    return lrs


@pytest.mark.parametrize("where", ["training_step", "on_train_epoch_end"])
def test_plateau_on_a_metric_logged_by_the_modules_epoch_end_hook_works_as_in_lightning(
    tmp_path: Path, where: str
) -> None:
    plain = _fit_plateau(tmp_path / "plain", where, stepper=False).lrs
    assert plain == _plateau_closed_form(7)
    assert _fit_plateau(tmp_path / "stepper", where, stepper=True).lrs == plain


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
@pytest.mark.parametrize("where", ["training_step", "on_train_epoch_end"])
@pytest.mark.parametrize("epoch", [2, 3], ids=["mid-cooldown", "cooldown-end"])
def test_plateau_on_a_training_metric_resumes_mid_cooldown(tmp_path: Path, where: str, epoch: int) -> None:
    straight = _fit_plateau(tmp_path / "straight", where, stepper=True).lrs
    ckpt = tmp_path / "straight" / "ckpt" / f"epoch={epoch - 1}-step={epoch * BATCHES}.ckpt"
    resumed = _fit_plateau(tmp_path / "resumed", where, stepper=True, ckpt_path=str(ckpt)).lrs
    assert resumed == straight[epoch * BATCHES :]


class Mixed(TinyModule):
    """One optimizer driven by a per-step warmup, a per-epoch StepLR, a per-epoch ExponentialLR with frequency 2
    and a ReduceLROnPlateau on val_loss (torch's schedulers chain); every batch holds the same samples, so a resumed
    run re-reading an epoch's batches trains on the same data."""

    def train_dataloader(self) -> Any:
        x, y = self.val_dataloader().dataset.tensors
        data = torch.utils.data.TensorDataset(x[:4].repeat(2 * BATCHES, 1), y[:4].repeat(2 * BATCHES, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        plateau = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0, cooldown=1, threshold=0.5)
        return [opt], [
            {"scheduler": tl.LinearLR(opt, 0.1, 1.0, total_iters=6), "interval": "step"},
            {"scheduler": tl.StepLR(opt, 1, 0.7), "interval": "epoch"},
            {"scheduler": tl.ExponentialLR(opt, 0.9), "interval": "epoch", "frequency": 2},
            {"scheduler": plateau, "monitor": "val_loss"},
        ]


def _fit_mixed(root: Path, ckpt_path: str | None = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    recorder, model = Recorder(), Mixed()
    callbacks: list[Callback] = [
        SchedulerStepper(intervals={"ExponentialLR": "epoch"}),
        recorder,
        ModelCheckpoint(dirpath=root / "steps", save_top_k=-1, every_n_train_steps=1),
        ModelCheckpoint(dirpath=root / "val_end", monitor="val_loss", save_top_k=-1, save_on_train_epoch_end=False),
        ModelCheckpoint(dirpath=root / "train_end", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True),
    ]
    trainer = cpu_trainer(
        root,
        max_epochs=6,
        accumulate_grad_batches=2,
        val_check_interval=0.5,
        check_val_every_n_epoch=2,
        limit_val_batches=1,
        callbacks=callbacks,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder.lrs, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")
@pytest.mark.filterwarnings("ignore:.*has no length to compare:RuntimeWarning")
def test_step_epoch_and_plateau_schedulers_together_resume_exactly(tmp_path: Path) -> None:
    """4 optimizer steps per epoch (8 batches, accumulation 2), validation twice in every second epoch. A step
    checkpoint taken just before a validation run is left out: Lightning does not rerun that validation on resume."""
    lrs, weights = _fit_mixed(tmp_path / "straight")
    assert len(lrs) == 24
    for folder, name, step in [
        ("steps", "epoch=0-step=3", 3),  # mid-epoch
        ("steps", "epoch=2-step=12", 12),  # the last step of an epoch without validation
        ("train_end", "epoch=1-step=8", 8),  # after the epoch-end validation and the epoch's end
        ("val_end", "epoch=3-step=14", 14),  # at the end of a mid-epoch validation run
        ("val_end", "epoch=3-step=16", 16),  # at the end of an epoch-end validation run
    ]:
        ckpt = tmp_path / "straight" / folder / f"{name}.ckpt"
        resumed, resumed_weights = _fit_mixed(tmp_path / f"resumed-{folder}-{step}", ckpt_path=str(ckpt))
        assert resumed == lrs[step:], (folder, step)
        for key, value in weights.items():
            assert torch.equal(resumed_weights[key], value), (folder, step, key)


class BrokenStep(tl.StepLR):
    """A scheduler whose ``step()`` raises from its second epoch end on."""

    def step(self, *args: Any, **kwargs: Any) -> None:
        if self.last_epoch >= 1:
            raise ValueError("step broke")
        super().step(*args, **kwargs)


class BrokenWithPlateau(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = tl.ReduceLROnPlateau(opt, patience=0)
        return [opt], [BrokenStep(opt, 1, 0.5), {"scheduler": plateau, "monitor": "val_loss", "frequency": 3}]


def test_a_scheduler_whose_step_raises_leaves_the_module_and_configs_as_they_were(tmp_path: Path) -> None:
    stepper = SchedulerStepper(intervals={"BrokenStep": "epoch"})
    trainer = cpu_trainer(tmp_path, max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=[stepper])
    model = BrokenWithPlateau()
    with pytest.raises(ValueError, match="step broke"):
        trainer.fit(model)
    assert trainer.current_epoch == 1  # raised at the second epoch end, no hang
    assert "on_train_epoch_end" not in model.__dict__  # the stepper's wrapper is gone: the module is reusable
    assert [(c.frequency, c.interval) for c in trainer.lr_scheduler_configs] == [(1, "epoch"), (3, "epoch")]


DDP_EPOCH_END_METRIC_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from lightning.pytorch import Trainer
from torch.optim import lr_scheduler as tl
from tests.models import TinyModule
from lit_optim import SchedulerStepper

class EpochEndMetric(TinyModule):
    def on_train_epoch_start(self):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])

    def on_train_epoch_end(self):  # no sync_dist: rank 0 improves, rank 1 never does; their mean improves
        self.log("flat", 1.0 / (1 + self.current_epoch) if self.global_rank == 0 else 10.0)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "flat"}}

model = EpochEndMetric(n=16)
model.lrs = []
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, limit_train_batches=1,
                  limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[SchedulerStepper()])
trainer.fit(model)
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps({"lrs": model.lrs}))
"""


@pytest.mark.ddp
def test_ddp_plateau_on_a_metric_logged_by_the_modules_epoch_end_hook_is_rank_identical(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(DDP_EPOCH_END_METRIC_SCRIPT, tmp_path, timeout=150)
    assert rank0 == rank1 == {"lrs": [0.1, 0.1, 0.1, 0.1]}  # the rank mean improves; rank 1 alone would reduce


def test_two_steppers_on_one_trainer_are_refused_naming_the_duplicate(tmp_path: Path) -> None:
    # e.g. one in `callbacks=[...]` in code and one from a LightningCLI config: each would step every scheduler
    trainer = cpu_trainer(tmp_path, max_epochs=2, callbacks=[SchedulerStepper(), SchedulerStepper()])
    with pytest.raises(ValueError, match=r"The Trainer has 2 SchedulerStepper callbacks.*Keep one"):
        trainer.fit(HandSteppedEpoch())
    assert trainer.global_step == 0
