"""Issue 3 acceptance: through a real Trainer, the lr at every optimizer step is the preview curve, exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, StochasticWeightAveraging

from lit_optim import (
    Cosine,
    GradientClipping,
    Linear,
    SchedulerStepper,
    Warmup,
    configure_optimizers,
    lightning_scheduler_config,
    preview_schedule,
)
from lit_optim.schedules import Schedule
from tests.ddp import run_ddp
from tests.models import TinyModule
from tests.trainers import cpu_trainer

SCHEDULE = Cosine(warmup=Warmup(duration=4, shape="linear"), min_lr=0.05)


class Recorder(Callback):
    """The lrs of each optimizer's groups just before each real optimizer step (one with gradients)."""

    def __init__(self) -> None:
        self.lrs: dict[int, list[tuple[float, ...]]] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            index = [id(o) for o in trainer.optimizers].index(id(optimizer))
            self.lrs.setdefault(index, []).append(tuple(float(g["lr"]) for g in optimizer.param_groups))


class Scheduled(TinyModule):
    def __init__(self, schedule: Schedule = SCHEDULE, skip: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.schedule, self.skip = schedule, skip

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return None if batch_idx in self.skip else super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            [
                {"params": self.net[0].parameters(), "lr": 0.1, "name": "body"},
                {"params": self.net[2].parameters(), "lr": 0.5, "name": "head"},
            ]
        )
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, self.schedule, self.trainer)}


BASE_LRS = {"body": 0.1, "head": 0.5}


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_epochs": 3, "accumulate_grad_batches": 3},
        {"max_epochs": 2, "limit_train_batches": 5},
        {"max_epochs": 2, "limit_train_batches": 0.5, "accumulate_grad_batches": 3},
        {"max_epochs": -1, "max_steps": 11},
        {"max_epochs": 10, "max_steps": 13},
        {"max_epochs": 2, "val_check_interval": 0.25, "limit_val_batches": 1},
    ],
    ids=["accumulate=3", "limit_train_batches=5", "limit=0.5+accumulate", "max_steps", "max_steps<max_epochs", "vci"],
)
def test_every_step_follows_the_preview(make_trainer: Callable[..., Trainer], overrides: dict[str, Any]) -> None:
    recorder = Recorder()
    overrides.setdefault("limit_val_batches", 0)
    trainer = make_trainer(callbacks=[recorder], **overrides)
    trainer.fit(Scheduled())
    assert sum(isinstance(c, SchedulerStepper) for c in trainer.callbacks) == 1  # attached by the config helper
    curve = preview_schedule(SCHEDULE, trainer, base_lrs=BASE_LRS)
    assert len(recorder.lrs[0]) == len(curve) == trainer.global_step
    assert recorder.lrs[0] == list(curve.lrs)  # exactly, float for float
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == trainer.global_step


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")  # on purpose here
def test_skipped_training_steps_do_not_consume_the_schedule(make_trainer: Callable[..., Trainer]) -> None:
    recorder = Recorder()
    trainer = make_trainer(callbacks=[recorder], limit_val_batches=0, max_epochs=2)
    with pytest.warns(RuntimeWarning, match=r"4 optimizer step\(s\) had no gradients .* ended at step 28 of 32, so the "
                      r"last 4 steps of its curve .* `SchedulerStepper\(skipped_steps='advance'\)`"):
        trainer.fit(Scheduled(skip=frozenset({2, 5})))
    curve = preview_schedule(SCHEDULE, trainer, base_lrs=BASE_LRS)
    real_steps = trainer.global_step - 4  # two skipped batches per epoch
    assert recorder.lrs[0] == list(curve.lrs[:real_steps])  # the preview, step for trained step: it stops early
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == real_steps


class GlobalStepRecorder(Callback):
    """The lrs of optimizer 0 at each global step, trained or not."""

    def __init__(self) -> None:
        self.lrs: dict[int, tuple[float, ...]] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs[trainer.global_step] = tuple(float(g["lr"]) for g in optimizer.param_groups)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")  # on purpose here
def test_skipped_steps_advance_follows_global_step_and_the_whole_preview(make_trainer: Callable[..., Trainer]) -> None:
    recorder, steps = Recorder(), GlobalStepRecorder()
    callbacks = [SchedulerStepper(skipped_steps="advance"), recorder, steps]
    trainer = make_trainer(callbacks=callbacks, limit_val_batches=0, max_epochs=2)
    trainer.fit(Scheduled(skip=frozenset({2, 5})))  # no warning: the schedule reaches its end
    curve = preview_schedule(SCHEDULE, trainer, base_lrs=BASE_LRS)
    assert trainer.global_step == len(curve) == 32
    assert [steps.lrs[s] for s in range(32)] == list(curve.lrs)  # the lr at global step s is the preview's step s
    trained = [s for s in range(32) if s % 16 not in (2, 5)]
    assert recorder.lrs[0] == [curve.lrs[s] for s in trained]
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 32


def test_skipped_steps_option_is_checked() -> None:
    with pytest.raises(ValueError, match=r"`skipped_steps` must be one of \['advance', 'hold'\], got 'skip'"):
        SchedulerStepper(skipped_steps="skip")  # type: ignore[arg-type]


class TwoOptimizers(TinyModule):
    """Manual optimization: body steps every batch, head every other batch; each has its own schedule."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        body, head = self.optimizers()
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        self.manual_backward(loss)
        body.step()
        body.zero_grad()
        if batch_idx % 2 == 1:
            head.step()
        head.zero_grad()

    def configure_optimizers(self) -> Any:
        body = torch.optim.SGD(self.net[0].parameters(), lr=0.1)
        head = torch.optim.AdamW(self.net[2].parameters(), lr=0.01)
        return [
            {"optimizer": body, "lr_scheduler": lightning_scheduler_config(body, SCHEDULE, self.trainer)},
            {"optimizer": head, "lr_scheduler": lightning_scheduler_config(head, "linear", self.trainer)},
        ]


def test_two_optimizers_each_follow_their_own_preview(make_trainer: Callable[..., Trainer]) -> None:
    recorder = Recorder()
    trainer = make_trainer(callbacks=[recorder], limit_val_batches=0, max_epochs=2, limit_train_batches=8)
    match = r"lr_scheduler_configs\[1\] at step 8 of its 16 \(resolved from the run\): under manual optimization"
    with pytest.warns(RuntimeWarning, match=match):  # the head's schedule stopped half-way: said, not silent
        trainer.fit(TwoOptimizers())
    body_curve = preview_schedule(SCHEDULE, trainer, base_lrs=0.1)
    head_curve = preview_schedule("linear", trainer, base_lrs=0.01)
    assert len(body_curve) == 16
    assert recorder.lrs[0] == list(body_curve.lrs)
    assert recorder.lrs[1] == list(head_curve.lrs[:8])  # half as many steps, on the same (per-batch) curve


# ----------------------------------------------------------------------------- resume


def _fit(root: Path, ckpt_path: str | None = None) -> tuple[Recorder, Trainer]:
    recorder = Recorder()
    callbacks = [recorder, ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_train_steps=1)]
    trainer = cpu_trainer(root, max_epochs=4, limit_train_batches=5, limit_val_batches=1, callbacks=callbacks)
    trainer.fit(Scheduled(), ckpt_path=ckpt_path)
    return recorder, trainer


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # about data order; lrs are what we check
@pytest.mark.parametrize(
    ("where", "ckpt_name"),
    [
        ("mid-warmup", "epoch=0-step=2.ckpt"),
        ("mid-epoch", "epoch=1-step=7.ckpt"),
        ("epoch-boundary", "epoch=1-step=10.ckpt"),
        ("late", "epoch=3-step=18.ckpt"),
    ],
)
def test_resume_follows_the_uninterrupted_trajectory(tmp_path: Path, where: str, ckpt_name: str) -> None:
    straight, trainer = _fit(tmp_path / "a")
    curve = preview_schedule(SCHEDULE, trainer, base_lrs=BASE_LRS)
    assert straight.lrs[0] == list(curve.lrs)
    resumed, _ = _fit(tmp_path / "b", ckpt_path=str(tmp_path / "a" / ckpt_name))
    step = int(ckpt_name.split("step=")[1].split(".")[0])
    assert resumed.lrs[0] == straight.lrs[0][step:]


# ----------------------------------------------------------------------------- 2-process DDP

DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lit_optim import Cosine, Warmup, lightning_scheduler_config
from tests.models import TinyModule

class Scheduled(TinyModule):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        schedule = Cosine(warmup=Warmup(duration=3), min_lr=0.1)
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, schedule, self.trainer)}

class Record(Callback):
    def __init__(self):
        self.lrs = []
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

record = Record()
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_val_batches=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[record])
trainer.fit(Scheduled(n=40))
sched = trainer.lr_scheduler_configs[0].scheduler
out = {"lrs": record.lrs, "last_epoch": sched.last_epoch, "total": sched.total_steps,
       "global_step": trainer.global_step}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.ddp
def test_ddp_both_ranks_follow_the_same_per_rank_schedule(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(DDP_SCRIPT, tmp_path)
    assert rank0["lrs"] == rank1["lrs"]
    # 40 samples / batch 4 = 10 batches, 5 per rank per epoch, 2 epochs: 10 optimizer steps per rank
    assert rank0["total"] == rank0["last_epoch"] == rank0["global_step"] == len(rank0["lrs"]) == 10
    curve = preview_schedule(Cosine(warmup=Warmup(duration=3), min_lr=0.1), 10, base_lrs=0.1)
    assert rank0["lrs"] == [row[0] for row in curve.lrs]


# ----------------------------------------------------------------------------- skipped non-finite steps


class InfAt(TinyModule):
    """``configure_optimizers(self, scheduler=...)``; the loss of the batches in ``inf_batches`` is inf."""

    def __init__(self, inf_batches: frozenset[int]) -> None:
        super().__init__(n=32)
        self.inf_batches = inf_batches

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return loss * math.inf if batch_idx in self.inf_batches else loss

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "sgd", lr=0.1, weight_decay=0.0, scheduler=Linear())


class BatchEndLr(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_nonfinite_step_skipped_by_gradient_clipping_does_not_advance_the_schedule(
    make_trainer: Callable[..., Trainer],
) -> None:
    # 8 batches, accumulate 2: optimizer steps end at batches 1, 3, 5, 7; batch 3's inf spoils step 1.
    recorder, clipping = BatchEndLr(), GradientClipping(skip_nonfinite=True)
    trainer = make_trainer(
        callbacks=[clipping, recorder], accumulate_grad_batches=2, limit_train_batches=8, limit_val_batches=0
    )
    model = InfAt(frozenset({3}))
    with pytest.warns(RuntimeWarning, match=r"1 optimizer step\(s\) had no gradients .*ended at step 3 of 4"):
        trainer.fit(model)
    curve = [row[0] for row in preview_schedule(Linear(), 4, base_lrs=0.1).lrs]
    assert clipping.skipped_steps == 1
    steps_done = [0, 1, 1, 1, 1, 2, 2, 3]  # real optimizer steps after each batch
    assert recorder.lrs == [curve[k] for k in steps_done]
    assert model.lr_schedulers().last_epoch == 3
    assert trainer.global_step == 4  # Lightning counts the skipped call; the schedule does not


class LinearDecay(TinyModule):
    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "sgd", lr=0.1, weight_decay=0.0, scheduler=Linear())


@pytest.mark.filterwarnings("ignore:SWA is currently only supported every epoch")  # Lightning's, about our config
def test_a_scheduler_replaced_by_swa_is_no_longer_stepped(make_trainer: Callable[..., Trainer]) -> None:
    recorder = Recorder()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=1)
    trainer = make_trainer(callbacks=[swa, recorder], max_epochs=4, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(LinearDecay(n=16))
    curve = [row[0] for row in preview_schedule(Linear(), 16, base_lrs=0.1).lrs]
    lrs = [lrs[0] for lrs in recorder.lrs[0]]
    # SWA swaps in SWALR at epoch index 1 (`swa_epoch_start - 1`); it anneals from the lr it found (curve[4])
    # to 0.01 over one epoch. The replaced schedule must not overwrite that lr after every optimizer step.
    assert lrs == curve[:5] + [curve[4]] * 3 + [0.01] * 8
