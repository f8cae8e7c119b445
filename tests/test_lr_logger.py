"""LearningRateLogger: keys, steps and values as real loggers wrote them on disk."""

from __future__ import annotations

import csv
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from lit_optim import LearningRateLogger
from lit_optim._logging import group_names as _group_names
from lit_optim.callbacks.lr_logger import _mismatch_message, _optimizer_names
from tests.models import TinyModule

MakeTrainer = Callable[..., Trainer]


def named_groups(module: TinyModule) -> list[dict[str, Any]]:
    """Weights in ``decay`` (lr from the optimizer default), biases in ``no_decay`` (own lr), built by hand."""
    weights = [module.net[0].weight, module.net[2].weight]
    biases = [module.net[0].bias, module.net[2].bias]
    return [
        {"params": weights, "name": "decay", "weight_decay": 0.01},
        {"params": biases, "name": "no_decay", "weight_decay": 0.0, "lr": 0.05},
    ]


class SGDInverse(TinyModule):
    """SGD(momentum=0.9) on named groups, LambdaLR lr_g(s) = base_g * 1/(s+1), stepped per optimizer step."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(named_groups(self), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AdamWHalving(TinyModule):
    """AdamW(betas=(0.8, 0.95)) on named groups, lr halved every 2 optimizer steps (StepLR)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(named_groups(self), lr=0.1, betas=(0.8, 0.95))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def csv_rows(logger: CSVLogger, key: str) -> list[dict[str, str]]:
    """The rows of metrics.csv that carry ``key``."""
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get(key, "") != ""]


def csv_series(logger: CSVLogger, key: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[key])) for row in csv_rows(logger, key)]


def csv_columns(logger: CSVLogger) -> set[str]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return set(next(csv.reader(f)))


SGD_KEYS = {
    "lr/decay", "momentum/decay", "weight_decay/decay",
    "lr/no_decay", "momentum/no_decay", "weight_decay/no_decay",
}  # fmt: skip


# --- what lands on disk -----------------------------------------------------------------------------------------


def test_csv_one_row_per_optimizer_step_under_accumulation(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(
        logger=logger, callbacks=[LearningRateLogger(log_every_n_steps=1)],
        accumulate_grad_batches=4, limit_train_batches=16,
    )  # fmt: skip
    trainer.fit(SGDInverse())
    assert trainer.global_step == 4
    assert {c for c in csv_columns(logger) if "/" in c} == SGD_KEYS
    steps = [0, 1, 2, 3]
    assert csv_series(logger, "lr/decay") == [(s, 0.1 * (1 / (s + 1))) for s in steps]
    assert csv_series(logger, "lr/no_decay") == [(s, 0.05 * (1 / (s + 1))) for s in steps]
    assert csv_series(logger, "momentum/decay") == [(s, 0.9) for s in steps]
    assert csv_series(logger, "weight_decay/decay") == [(s, 0.01) for s in steps]
    assert csv_series(logger, "weight_decay/no_decay") == [(s, 0.0) for s in steps]


@pytest.mark.parametrize("every", [3, None])
def test_accumulation_with_a_period_counts_optimizer_steps(
    every: int | None, make_trainer: MakeTrainer, tmp_path: Path
) -> None:
    """7 optimizer steps of 2 micro-batches each, a period of 3 (the callback's or the Trainer's): rows at the
    optimizer steps 0, 2, 5, where `self.log` rows are too (counting batches would give 0, 1, 4 or other rows)."""
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(
        logger=logger, callbacks=[LearningRateLogger(log_every_n_steps=every)],
        accumulate_grad_batches=2, limit_train_batches=14, log_every_n_steps=3,
    )  # fmt: skip
    trainer.fit(SGDInverse())
    assert trainer.global_step == 7
    steps = [0, 2, 5]
    assert csv_series(logger, "lr/decay") == [(s, 0.1 * (1 / (s + 1))) for s in steps]
    assert csv_series(logger, "lr/no_decay") == [(s, 0.05 * (1 / (s + 1))) for s in steps]
    assert [s for s, _ in csv_series(logger, "train_loss")] == [2, 5]  # Lightning's own rows: the same axis


def test_lightning_monitor_duplicates_under_accumulation_we_do_not(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    ours, theirs = CSVLogger(tmp_path, name="ours", version=0), CSVLogger(tmp_path, name="theirs", version=0)
    for logger, callback in ((ours, LearningRateLogger(log_every_n_steps=1)), (theirs, LearningRateMonitor())):
        trainer = make_trainer(
            logger=logger, callbacks=[callback], accumulate_grad_batches=4, limit_train_batches=8, log_every_n_steps=1
        )
        trainer.fit(SGDInverse())
    assert [s for s, _ in csv_series(ours, "lr/decay")] == [0, 1]
    assert len(csv_series(theirs, "lr-SGD/decay")) == 8  # one per micro-batch


def test_tensorboard_keys_steps_values(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version=0, default_hp_metric=False)
    trainer = make_trainer(logger=logger, callbacks=[LearningRateLogger(log_every_n_steps=2)], limit_train_batches=6)
    trainer.fit(AdamWHalving())
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    ours = {t for t in events.Tags()["scalars"] if t not in {"train_loss", "val_loss", "epoch"}}
    assert ours == {f"{k}/{g}" for k in ("lr", "momentum", "beta2", "weight_decay") for g in ("decay", "no_decay")}

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    f32 = np.float32
    steps = (0, 1, 3, 5)  # the first step, then Lightning's rows: (s + 1) % 2 == 0
    assert series("lr/decay") == [(s, f32(0.1 * 0.5 ** (s // 2))) for s in steps]
    assert series("lr/no_decay") == [(s, f32(0.05 * 0.5 ** (s // 2))) for s in steps]
    assert series("momentum/decay") == [(s, f32(0.8)) for s in steps]
    assert series("beta2/no_decay") == [(s, f32(0.95)) for s in steps]
    assert series("weight_decay/decay") == [(s, f32(0.01)) for s in steps]


def test_default_period_is_the_trainers(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(logger=logger, callbacks=[LearningRateLogger()], limit_train_batches=7, log_every_n_steps=3)
    trainer.fit(SGDInverse())
    assert csv_series(logger, "lr/decay") == [(s, 0.1 * (1 / (s + 1))) for s in (0, 2, 5)]


def test_trainer_period_zero_logs_nothing_and_says_so(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(logger=logger, callbacks=[LearningRateLogger()], limit_train_batches=3, log_every_n_steps=0)
    with pytest.warns(UserWarning, match=r"follows `Trainer\(log_every_n_steps=0\)` and logs no steps"):
        trainer.fit(SGDInverse())
    assert not (Path(logger.log_dir) / "metrics.csv").exists() or "lr/decay" not in csv_columns(logger)


class TwoOptimizers(TinyModule):
    """Manual optimization: SGD on the first layer, Adam on the second; Adam's lr halves after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        first, second = self.optimizers()  # type: ignore[misc]
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        second.optimizer.param_groups[0]["lr"] *= 0.5
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        first = torch.optim.SGD([{"params": self.net[0].parameters(), "name": "body"}], lr=0.1, momentum=0.5)
        second = torch.optim.Adam(self.net[2].parameters(), lr=0.01, betas=(0.8, 0.99))
        return [first, second]


def test_two_optimizers_are_qualified_and_logged_on_lightnings_axis(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(logger=logger, callbacks=[LearningRateLogger()], limit_train_batches=5, log_every_n_steps=4)
    trainer.fit(TwoOptimizers())
    assert trainer.global_step == 10  # Lightning counts both optimizers' steps
    assert {c for c in csv_columns(logger) if "/" in c} == {
        "lr/SGD/body", "momentum/SGD/body", "weight_decay/SGD/body",
        "lr/Adam/group0", "momentum/Adam/group0", "beta2/Adam/group0", "weight_decay/Adam/group0",
    }  # fmt: skip
    # one row per batch b (Lightning's own axis, where `self.log` writes), for both optimizers: the first batch and
    # then the batch ending each window, (b + 1) % 4 == 0. Adam's k-th step is taken with lr 0.01 * 0.5**k.
    assert csv_series(logger, "lr/SGD/body") == [(0, 0.1), (3, 0.1)]
    assert csv_series(logger, "momentum/SGD/body") == [(0, 0.5), (3, 0.5)]
    assert csv_series(logger, "lr/Adam/group0") == [(0, 0.01), (3, 0.01 * 0.5**3)]
    assert csv_series(logger, "beta2/Adam/group0") == [(0, 0.99), (3, 0.99)]
    assert [s for s, _ in csv_series(logger, "train_loss")] == [3]  # `self.log`'s row of batch 3 is the same row


class Unfreeze(BaseFinetuning):
    """Freeze the first layer; at epoch 1 add it as a new, unnamed group with lr = head lr / 10."""

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.net[0])

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Any) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.net[0], optimizer, initial_denom_lr=10.0)


class HeadOnly(TinyModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([{"params": self.net[2].parameters(), "name": "head"}], lr=0.1)


def test_group_added_mid_run_gets_a_stable_key(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(
        logger=logger, callbacks=[Unfreeze(), LearningRateLogger(log_every_n_steps=1)],
        limit_train_batches=2, max_epochs=2,
    )  # fmt: skip
    trainer.fit(HeadOnly())
    assert csv_series(logger, "lr/head") == [(0, 0.1), (1, 0.1), (2, 0.1), (3, 0.1)]
    assert csv_series(logger, "lr/group1") == [(2, 0.1 / 10.0), (3, 0.1 / 10.0)]
    assert csv_series(logger, "weight_decay/group1") == [(2, 0.0), (3, 0.0)]


class EpochStep(TinyModule):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(named_groups(self), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def test_epoch_interval_logs_once_per_epoch_at_its_first_step(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    callback = LearningRateLogger(logging_interval="epoch", log_momentum=False, log_weight_decay=False)
    trainer = make_trainer(logger=logger, callbacks=[callback], limit_train_batches=2, max_epochs=3)
    trainer.fit(EpochStep())
    assert {c for c in csv_columns(logger) if "/" in c} == {"lr/decay", "lr/no_decay"}
    assert csv_series(logger, "lr/decay") == [(0, 0.1), (2, 0.1 * 0.5), (4, 0.1 * 0.5 * 0.5)]
    assert csv_series(logger, "lr/no_decay") == [(0, 0.05), (2, 0.05 * 0.5), (4, 0.05 * 0.5 * 0.5)]


class PlateauEveryEpoch(TinyModule):
    """ReduceLROnPlateau that sees no improvement after the first epoch (absolute threshold 1e9)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=0, threshold=1e9, threshold_mode="abs"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


def test_plateau_reduction_shows_at_the_next_step(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(
        logger=logger, callbacks=[LearningRateLogger(log_every_n_steps=1, log_momentum=False)],
        limit_train_batches=2, limit_val_batches=1, max_epochs=3,
    )  # fmt: skip
    trainer.fit(PlateauEveryEpoch())
    # epoch 0 sets the best value, epoch 1 does not improve -> halved before epoch 2's first step.
    assert csv_series(logger, "lr/group0") == [(0, 0.1), (1, 0.1), (2, 0.1), (3, 0.1), (4, 0.05), (5, 0.05)]


def test_resume_continues_the_logging_windows(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    def run(name: str, epochs: int, ckpt: Path | None = None) -> CSVLogger:
        logger = CSVLogger(tmp_path, name=name, version=0)
        callbacks = [LearningRateLogger(log_every_n_steps=3)]
        trainer = make_trainer(logger=logger, callbacks=callbacks, limit_train_batches=2, max_epochs=epochs)
        trainer.fit(SGDInverse(), ckpt_path=ckpt)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        return logger

    straight = run("straight", epochs=4)
    first = run("first", epochs=1)  # steps 0-1, logs 0
    second = run("second", epochs=4, ckpt=tmp_path / "first.ckpt")  # steps 2-7: window 0 was already logged
    expected = [(s, 0.1 * (1 / (s + 1))) for s in (0, 2, 5)]
    assert csv_series(straight, "lr/decay") == expected
    assert csv_series(first, "lr/decay") + csv_series(second, "lr/decay") == expected


# --- no logger ---------------------------------------------------------------------------------------------------


def test_no_logger_warns_once(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(callbacks=[LearningRateLogger(log_every_n_steps=1)], limit_train_batches=3)
    with pytest.warns(UserWarning, match=r"found no logger on the Trainer.*`strict=True`") as record:
        trainer.fit(SGDInverse())
    assert len([w for w in record if "no logger" in str(w.message)]) == 1


def test_no_logger_strict_raises(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(callbacks=[LearningRateLogger(strict=True)], limit_train_batches=1)
    with pytest.raises(ValueError, match=r"found no logger on the Trainer.*Pass `logger=...`"):
        trainer.fit(SGDInverse())


# --- Lightning's LearningRateMonitor and named groups -----------------------------------------------------------


def test_lightning_monitor_shows_group_names(make_trainer: MakeTrainer, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    monitor = LearningRateMonitor(logging_interval="step", log_weight_decay=True)
    trainer = make_trainer(logger=logger, callbacks=[monitor], limit_train_batches=2, log_every_n_steps=1)
    trainer.fit(SGDInverse())
    assert {c for c in csv_columns(logger) if c.startswith("lr-")} == {
        "lr-SGD/decay", "lr-SGD/no_decay", "lr-SGD/decay-weight_decay", "lr-SGD/no_decay-weight_decay",
    }  # fmt: skip
    assert csv_series(logger, "lr-SGD/no_decay") == [(0, 0.05), (1, 0.05 * (1 / 2))]


# --- naming rules and the mismatch report (pure functions) ------------------------------------------------------


def test_group_names_fallbacks_duplicates_and_known_prefix() -> None:
    groups: list[dict[str, Any]] = [{"name": "decay"}, {}, {"name": "decay"}, {"name": ""}, {"name": 3}]
    assert _group_names(groups) == ["decay", "group1", "decay-2", "group3", "3"]
    # groups appended later keep the earlier names and get their own
    assert _group_names([*groups, {"name": "head"}, {}], known=_group_names(groups)) == [
        "decay", "group1", "decay-2", "group3", "3", "head", "group6",
    ]  # fmt: skip


def test_optimizer_names_number_repeated_classes() -> None:
    p = [nn.Parameter(torch.zeros(1))]
    opts = [torch.optim.Adam(p), torch.optim.SGD(p, lr=0.1), torch.optim.Adam(p), torch.optim.Adam(p)]
    assert _optimizer_names(opts) == ["Adam", "SGD", "Adam-1", "Adam-2"]


def test_optimizer_metrics_reads_each_family_like_torch_stores_it() -> None:
    p = [nn.Parameter(torch.zeros(1))]
    callback = LearningRateLogger()
    rms = torch.optim.RMSprop(p, lr=0.01, momentum=0.3, weight_decay=0.2)
    assert callback.optimizer_metrics(rms) == {"lr/group0": 0.01, "momentum/group0": 0.3, "weight_decay/group0": 0.2}
    nadam = torch.optim.NAdam(p, lr=0.002, betas=(0.7, 0.9))
    assert callback.optimizer_metrics(nadam, prefix="NAdam/") == {
        "lr/NAdam/group0": 0.002, "momentum/NAdam/group0": 0.7, "beta2/NAdam/group0": 0.9,
        "weight_decay/NAdam/group0": 0.0,
    }  # fmt: skip
    adagrad = torch.optim.Adagrad(p, lr=0.5)
    assert LearningRateLogger(log_weight_decay=False).optimizer_metrics(adagrad) == {"lr/group0": 0.5}


def test_mismatch_message_names_keys_ranks_and_values() -> None:
    gathered = [[0.1, 0.9, 0.01], [0.1, 0.9, 0.02], [0.2, 0.9, 0.01]]
    message = _mismatch_message(["lr/decay", "momentum/decay", "lr/no_decay"], gathered, step=7)
    assert message == (
        "LearningRateLogger: ranks [1, 2] hold values different from rank 0 at global step 7: "
        "lr/decay: rank 0: 0.1, rank 1: 0.1, rank 2: 0.2; lr/no_decay: rank 0: 0.01, rank 1: 0.02, rank 2: 0.01."
    )
    assert _mismatch_message(["lr/decay"], [[0.1], [0.1]], step=0) is None


def test_mismatch_message_treats_nan_on_every_rank_as_equal() -> None:
    nan = float("nan")
    assert _mismatch_message(["lr/decay"], [[nan], [nan]], step=3) is None  # identical, if broken, on every rank
    assert _mismatch_message(["lr/decay"], [[nan], [0.1]], step=3) == (
        "LearningRateLogger: ranks [1] hold values different from rank 0 at global step 3: "
        "lr/decay: rank 0: nan, rank 1: 0.1."
    )


# --- arguments ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logging_interval": "steps"}, ValueError,
         r"`logging_interval` must be one of \['epoch', 'step'\], got 'steps'. Did you mean 'step'\?"),
        ({"logging_interval": None}, ValueError, r"`logging_interval` must be one of \['epoch', 'step'\], got None"),
        ({"log_every_n_steps": 0}, ValueError, r"`log_every_n_steps` must be an int >= 1, got 0"),
        ({"log_every_n_steps": -5}, ValueError, r"`log_every_n_steps` must be an int >= 1, got -5"),
        ({"log_every_n_steps": 2.0}, TypeError, r"`log_every_n_steps` must be an int >= 1, got 2.0 \(float\)"),
        ({"check_consistency_every_n_steps": 0}, ValueError,
         r"`check_consistency_every_n_steps` must be an int >= 1, got 0"),
        ({"on_mismatch": "warning"}, ValueError,
         r"`on_mismatch` must be one of \['raise', 'warn'\], got 'warning'. Did you mean 'warn'\?"),
        ({"log_momentum": "yes"}, TypeError, r"`log_momentum` must be a bool, got 'yes' \(str\)"),
        ({"strict": 1}, TypeError, r"`strict` must be a bool, got 1 \(int\)"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LearningRateLogger(**kwargs)


def test_pickles_and_state_key_tells_instances_apart() -> None:
    callback = LearningRateLogger(log_every_n_steps=5)
    clone = pickle.loads(pickle.dumps(callback))
    assert clone.log_every_n_steps == 5
    assert clone.state_key == callback.state_key
    assert LearningRateLogger(logging_interval="epoch").state_key != callback.state_key


class _SaveAt(Callback):
    """Saves ``mid.ckpt`` after optimizer step ``step`` (mid-epoch), like a step-interval ModelCheckpoint."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended.*")
def test_epoch_interval_resumed_mid_epoch_does_not_log_that_epoch_again(
    make_trainer: MakeTrainer, tmp_path: Path
) -> None:
    def run(name: str, ckpt: Path | None = None) -> CSVLogger:
        logger = CSVLogger(tmp_path, name=name, version=0)
        callback = LearningRateLogger(logging_interval="epoch", log_momentum=False, log_weight_decay=False)
        callbacks = [callback, _SaveAt(tmp_path / "mid.ckpt", step=6)]
        trainer = make_trainer(logger=logger, callbacks=callbacks, limit_train_batches=4, max_epochs=3)
        trainer.fit(EpochStep(), ckpt_path=ckpt)
        return logger

    straight = run("straight")  # epochs start at steps 0, 4, 8; saves mid-epoch 1, at step 6
    expected = [(0, 0.1), (4, 0.1 * 0.5), (8, 0.1 * 0.5 * 0.5)]
    assert csv_series(straight, "lr/decay") == expected
    resumed = run("resumed", ckpt=tmp_path / "mid.ckpt")
    assert csv_series(resumed, "lr/decay") == expected[2:]  # epoch 1 was logged before the save


class LBFGSModule(TinyModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.LBFGS([{"params": self.parameters(), "name": "all"}], lr=0.1, max_iter=4)


def test_lbfgs_closure_evaluations_log_once_per_optimizer_step(make_trainer: MakeTrainer) -> None:
    """Lightning calls `on_before_optimizer_step` once per closure evaluation (up to max_iter=4 per step)."""
    from tests.loggers import MemoryLogger

    class CountHook(Callback):
        calls = 0

        def on_before_optimizer_step(self, *args: Any) -> None:
            CountHook.calls += 1

    logger = MemoryLogger()
    make_trainer(max_steps=3, logger=logger, callbacks=[CountHook(), LearningRateLogger(log_every_n_steps=1)]).fit(
        LBFGSModule()
    )
    assert CountHook.calls > 3
    assert [step for step, metrics in logger.logged if "lr/all" in metrics] == [0, 1, 2]


def test_group_names_are_unique_and_never_a_path_prefix_of_one_another() -> None:
    def names(*raw: str, reserved: tuple[str, ...] = ()) -> list[str]:
        return _group_names([{"name": n} for n in raw], reserved=reserved)

    assert names("a/b", "a") == ["a/b", "a-1"]  # `lr/a` next to `lr/a/b` breaks MLflow's file store
    assert names("global", reserved=("global",))[0] not in ("global",)  # a reserved name is never a group's
    for raw in (("a", "a/b", "a/b/c", "a"), ("group1", "", "group1/x"), ("global", "global-0", "global/x")):
        got = names(*raw, reserved=("global",))
        every = [*got, "global"]
        assert len(set(every)) == len(every)
        assert not [(a, b) for a in every for b in every if b.startswith(a + "/")]
