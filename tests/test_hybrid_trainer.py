"""A HybridOptimizer through a real Trainer: exact weights against torch's Muon + AdamW stepped by hand, with a
lit_optim schedule and gradient accumulation; resume; LR logging per named group; clipping over both halves."""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_optim import (
    Cosine,
    GradientClipping,
    HybridOptimizer,
    LearningRateLogger,
    OptimizerMixin,
    ScheduleLR,
    configure_optimizers,
)
from tests.loggers import MemoryLogger
from tests.models import GPT
from tests.test_hybrid import assert_same_weights, hand_built

SCHEDULE = Cosine(warmup=2, min_lr=0.1)
LR = 0.02


class HybridGPT(LightningModule):
    """:class:`GPT` on fixed random tokens (batches of 2, in order), optimized by ``configure_optimizers("muon")``."""

    def __init__(self, batches: int = 8, scheduler: Any = SCHEDULE) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = GPT()
        self.batches, self.scheduler = batches, scheduler

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (tokens,) = batch
        logits = self.model(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(TensorDataset(tokens(self.batches)), batch_size=2)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "muon", lr=LR, scheduler=self.scheduler)


def tokens(batches: int) -> torch.Tensor:
    return torch.randint(0, 11, (2 * batches, 7), generator=torch.Generator().manual_seed(3))


def by_hand(steps: int, accumulate: int, scheduled: bool) -> nn.Module:
    """The reference: the same model, torch's Muon and AdamW stepped one after the other, accumulation by hand."""
    model = HybridGPT().model
    optimizers = hand_built(model, lr=LR, wd=0.01)
    schedulers = [ScheduleLR(o, SCHEDULE, total_steps=steps) for o in optimizers] if scheduled else []
    batches = tokens(steps * accumulate).split(2)
    for step in range(steps):
        for micro in batches[step * accumulate : (step + 1) * accumulate]:
            logits = model(micro[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), micro[:, 1:].reshape(-1))
            (loss / accumulate).backward()
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
    return model


@pytest.mark.parametrize(("scheduled", "accumulate"), [(False, 1), (True, 1), (True, 2)])
def test_fit_is_bit_identical_to_muon_and_adamw_by_hand(
    make_trainer: Callable[..., Trainer], scheduled: bool, accumulate: int
) -> None:
    module = HybridGPT(batches=4 * accumulate, scheduler=SCHEDULE if scheduled else None)
    make_trainer(max_steps=4, accumulate_grad_batches=accumulate).fit(module)
    assert module.trainer.global_step == 4
    assert isinstance(module.trainer.optimizers[0], HybridOptimizer)
    assert_same_weights(module.model, by_hand(4, accumulate, scheduled))


class Grads(Callback):
    """Record the total 2-norm of every gradient of every group, at ``on_before_optimizer_step``."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))


def test_schedule_lr_logger_and_clipping_see_both_halves(make_trainer: Callable[..., Trainer]) -> None:
    logger = MemoryLogger()
    before, after = Grads(), Grads()
    callbacks = [before, GradientClipping(max_norm=0.05), after, LearningRateLogger(log_momentum=True)]
    module = HybridGPT(batches=6)
    make_trainer(max_steps=6, logger=logger, log_every_n_steps=1, callbacks=callbacks).fit(module)

    expected = [LR * SCHEDULE.factor(step, 6) for step in range(6)]
    for group in ("muon/decay", "adamw/decay", "adamw/no_decay"):
        assert logger.series(f"lr/{group}") == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert logger.series("momentum/muon/decay") == [0.95] * 6  # Muon's momentum
    assert logger.series("momentum/adamw/decay") == [0.9] * 6  # AdamW's betas
    assert logger.series("beta2/adamw/no_decay") == [0.999] * 6
    assert "beta2/muon/decay" not in logger.logged[0][1]

    # one global norm over the gradients of both halves, and both halves clipped to it
    assert logger.series("grad_clip/norm") == pytest.approx(before.norms, rel=1e-5)
    assert all(norm > 0.05 for norm in before.norms)
    assert after.norms == pytest.approx([0.05] * 6, rel=1e-4)
    assert sorted(k for k in logger.logged[0][1] if k.startswith("grad_clip/group_norm/")) == [
        "grad_clip/group_norm/adamw/decay", "grad_clip/group_norm/adamw/no_decay", "grad_clip/group_norm/muon/decay",
    ]  # fmt: skip
    groups = ("muon/decay", "adamw/decay", "adamw/no_decay")
    squares = sum(logger.series(f"grad_clip/group_norm/{g}")[0] ** 2 for g in groups)
    assert math.sqrt(squares) == pytest.approx(before.norms[0], rel=1e-5)


def test_resume_mid_run_is_bit_identical_and_loads_with_weights_only(
    make_trainer: Callable[..., Trainer], tmp_path: Path
) -> None:
    run = {"max_epochs": 2, "limit_train_batches": 4}  # 8 optimizer steps, a checkpoint after the first 4
    def every_epoch(folder: str = "straight") -> ModelCheckpoint:
        return ModelCheckpoint(tmp_path / folder, filename="{epoch}", save_top_k=-1, save_on_train_epoch_end=True)

    straight = HybridGPT()
    straight_trainer = make_trainer(callbacks=[every_epoch()], **run)
    straight_trainer.fit(straight)

    ckpt = tmp_path / "straight" / "epoch=0.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    groups = saved["optimizer_states"][0]["param_groups"]
    assert [(g["name"], g["optimizer"]) for g in groups] == [
        ("muon/decay", "muon"), ("adamw/decay", "adamw"), ("adamw/no_decay", "adamw"),
    ]  # fmt: skip
    assert saved["lr_schedulers"][0]["last_epoch"] == 4

    resumed = HybridGPT()
    ckpt = ckpt.rename(tmp_path / "half.ckpt")
    shutil.rmtree(tmp_path / "straight")  # the resumed run has the same ModelCheckpoint, writing there
    resumed_trainer = make_trainer(callbacks=[every_epoch()], **run)  # the callbacks that made the checkpoint
    resumed_trainer.fit(resumed, ckpt_path=ckpt)
    assert resumed_trainer.global_step == 8
    assert_same_weights(resumed.model, straight.model)
    got = [g["lr"] for g in resumed_trainer.optimizers[0].param_groups]
    assert got == [g["lr"] for g in straight_trainer.optimizers[0].param_groups]
    state = resumed_trainer.optimizers[0].optimizers["muon"].state
    first = straight_trainer.optimizers[0].optimizers["muon"].state
    assert all(torch.equal(state[p]["momentum_buffer"], first[q]["momentum_buffer"]) for p, q in zip(
        resumed.model.parameters(), straight.model.parameters(), strict=True) if q in first)


def test_bf16_autocast_fits(make_trainer: Callable[..., Trainer]) -> None:
    module = HybridGPT(batches=2, scheduler=None)
    start = copy.deepcopy(module.model)
    make_trainer(max_steps=2, precision="bf16-mixed").fit(module)
    moved = [not torch.equal(a, b) for a, b in zip(module.model.parameters(), start.parameters(), strict=True)]
    assert all(moved)


def test_fp16_step_skipped_by_the_grad_scaler_skips_both_halves_and_the_schedule(
    make_trainer: Callable[..., Trainer],
) -> None:
    from lightning.pytorch.plugins import MixedPrecision

    class Overflow(HybridGPT):
        def on_after_backward(self) -> None:
            if self.trainer.global_step == 1 and not getattr(self, "_done", False):  # once: the GradScaler skips
                self._done = True
                next(self.model.parameters()).grad.fill_(float("inf"))

    module = Overflow(batches=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # Lightning refuses "16-mixed" on CPU; its plugin runs
    trainer = make_trainer(max_steps=5, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module)
    hybrid = trainer.optimizers[0]
    assert scaler.get_scale() == 512.0  # one overflow
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4  # 5 steps, one skipped: the schedule kept pace
    adam_steps = {float(s["step"]) for s in hybrid.optimizers["adamw"].state.values()}
    assert adam_steps == {4.0}  # AdamW stepped 4 times, not 5
    assert hybrid.param_groups[0]["lr"] == pytest.approx(LR * SCHEDULE.factor(4, 5))


def test_bf16_accumulation_and_monitor_resume_bit_identical(
    make_trainer: Callable[..., Trainer], tmp_path: Path
) -> None:
    # bf16 autocast, 2 micro-batches per step, OptimizerMonitor watching both halves: straight == stopped + resumed
    from lit_optim import OptimizerMonitor

    run = {"max_epochs": 2, "limit_train_batches": 4, "precision": "bf16-mixed", "accumulate_grad_batches": 2}

    def fit(folder: str, ckpt: Path | None = None) -> tuple[HybridGPT, Trainer, OptimizerMonitor]:
        module, monitor = HybridGPT(), OptimizerMonitor(spike_warmup_steps=1, log_every_n_steps=1)
        checkpoint = ModelCheckpoint(tmp_path / folder, filename="{epoch}", save_top_k=-1,
                                     save_on_train_epoch_end=True)
        trainer = make_trainer(callbacks=[monitor, checkpoint], logger=MemoryLogger(), **run)
        trainer.fit(module, ckpt_path=ckpt)
        return module, trainer, monitor

    straight, straight_trainer, straight_monitor = fit("straight")
    ckpt = (tmp_path / "straight" / "epoch=0.ckpt").rename(tmp_path / "half.ckpt")
    shutil.rmtree(tmp_path / "straight")  # the resumed run's ModelCheckpoint writes there again
    resumed, resumed_trainer, resumed_monitor = fit("straight", ckpt)
    assert resumed_trainer.global_step == straight_trainer.global_step == 4
    assert_same_weights(resumed.model, straight.model)
    assert [g["lr"] for g in resumed_trainer.optimizers[0].param_groups] == [
        g["lr"] for g in straight_trainer.optimizers[0].param_groups]
    assert resumed_monitor.state_dict() == straight_monitor.state_dict()
    assert straight_monitor.detector("loss").count + straight_monitor.skipped_steps > 0  # type: ignore[union-attr]



class MixinHybridGPT(OptimizerMixin, HybridGPT):
    """The hybrid GPT configured from its hparams, with its own fallback lr."""

    def __init__(self, optimizer: str = "muon", lr: float = LR, fallback_lr: float = LR / 5) -> None:
        super().__init__(batches=16, scheduler=None)
        self.save_hyperparameters()

    def configure_optimizers(self) -> Any:
        return OptimizerMixin.configure_optimizers(self)


def test_applied_range_test_keeps_the_fallback_ratio_in_the_hparams(make_trainer: Callable[..., Trainer]) -> None:
    from lit_optim import LRRangeTest

    model = MixinHybridGPT()
    test = LRRangeTest(min_lr=1e-4, max_lr=0.1, num_steps=12, rule="minimum", skip_end=1)
    make_trainer(max_steps=1, callbacks=[test]).fit(model)
    assert test.result is not None
    assert test.result.suggestion is not None
    factor = test.result.lr_to_configure / LR
    assert model.hparams["lr"] == test.result.lr_to_configure
    # the AdamW half stays at its ratio: rebuilding from the hparams gives the lrs the run used
    assert model.hparams["fallback_lr"] == pytest.approx(LR / 5 * factor, rel=1e-12)
    groups = model.trainer.optimizers[0].param_groups
    fallback = [g["lr"] for g in groups if g["name"].startswith("adamw/")]
    assert fallback == pytest.approx([model.hparams["fallback_lr"]] * len(fallback), rel=1e-9)
