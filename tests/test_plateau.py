from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchmetrics
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning, Callback, ModelCheckpoint
from torch.optim import lr_scheduler as tl

from lit_optim import (
    Plateau,
    PlateauLR,
    SchedulerStepper,
    TrainingLength,
    Warmup,
    configure_optimizers,
    plateau_scheduler_config,
)
from tests.ddp import run_ddp
from tests.loggers import MemoryLogger
from tests.models import TinyModule, manual_sgd_step
from tests.trainers import cpu_trainer

# ----------------------------------------------------------------------------- pure semantics vs torch

METRICS = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.80001, 0.85, 0.85, 0.85, 0.85, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"factor": 0.5, "patience": 1},
        {"factor": 0.5, "patience": 0, "cooldown": 2},
        {"factor": 0.3, "patience": 1, "threshold": 0.1, "threshold_mode": "abs"},
        {"factor": 0.5, "patience": 1, "threshold": 0.2},
        {"factor": 0.5, "patience": 1, "mode": "max"},
        {"factor": 0.5, "patience": 0, "mode": "max", "threshold_mode": "abs", "threshold": 0.01},
        {"factor": 0.1, "patience": 0, "eps": 0.05},
    ],
)
@pytest.mark.parametrize("min_lr", [0.0, 0.2, (0.5, 0.05)])
def test_same_metric_sequence_gives_same_lrs_as_torch(options: dict[str, Any], min_lr: Any) -> None:
    def optimizer() -> torch.optim.Optimizer:
        params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        return torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.02}])

    ours_opt, torch_opt = optimizer(), optimizer()
    ours = PlateauLR(ours_opt, Plateau("m", min_lr=min_lr, **options))
    ratios = min_lr if isinstance(min_lr, tuple) else (min_lr, min_lr)
    reference = tl.ReduceLROnPlateau(torch_opt, min_lr=[ratios[0] * 0.1, ratios[1] * 0.02], **options)
    for value in METRICS:
        ours.step_metric(value)
        reference.step(value)
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups]
        assert (ours.best, ours._state.num_bad_epochs, ours._state.cooldown_counter) == (
            reference.best,
            reference.num_bad_epochs,
            reference.cooldown_counter,
        )


def test_absolute_min_lr_matches_torch() -> None:
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    torch_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ours = PlateauLR(ours_opt, Plateau("m", factor=0.5, patience=0, min_lr=0.03, min_lr_mode="absolute"))
    reference = tl.ReduceLROnPlateau(torch_opt, factor=0.5, patience=0, min_lr=0.03)
    for _ in range(5):
        ours.step_metric(1.0)
        reference.step(1.0)
    assert ours_opt.param_groups[0]["lr"] == torch_opt.param_groups[0]["lr"] == 0.03
    assert ours.reductions == 2


def test_nonfinite_metric_counts_as_no_improvement_and_warns_once() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PlateauLR(opt, Plateau("m", factor=0.5, patience=1))
    sched.step_metric(1.0)
    with pytest.warns(RuntimeWarning, match=r"monitored metric 'm' is nan; it counts as no improvement"):
        sched.step_metric(math.nan)
    assert sched.best == 1.0
    sched.step_metric(-math.inf)  # no second warning (warnings are errors here)
    assert opt.param_groups[0]["lr"] == 0.5
    assert sched.best == 1.0


@pytest.mark.parametrize(("step", "factor"), [(0, 0.1), (1, 0.325), (2, 0.55), (4, 1.0), (9, 1.0)])
def test_warmup_formula(step: int, factor: float) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = PlateauLR(opt, Plateau("m", warmup=Warmup(duration=4, start_factor=0.1)))
    for _ in range(step):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * factor, rel=1e-12)


def test_reduction_during_warmup_scales_the_warmup() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PlateauLR(opt, Plateau("m", factor=0.5, patience=0, warmup=4))
    opt.step()
    sched.step()
    sched.step_metric(1.0)
    sched.step_metric(1.0)
    assert opt.param_groups[0]["lr"] == 0.5 * 0.25
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5 * 0.5


def test_mode_follows_torchmetrics_higher_is_better() -> None:
    assert Plateau("val_acc", mode=torchmetrics.classification.BinaryAccuracy()).mode == "max"
    assert Plateau("val_mse", mode=torchmetrics.MeanSquaredError()).mode == "min"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "minimum"}, ValueError, r"`mode` must be one of \['max', 'min'\], got 'minimum'. Did you mean 'min'"),
        ({"mode": object()}, ValueError, r"`mode` must be one of \['max', 'min'\] or a torchmetrics Metric"),
        ({"factor": 1.0}, ValueError, r"`factor` must be in \(0, 1\), got 1.0"),
        ({"factor": 0}, ValueError, r"`factor` must be in \(0, 1\], got 0"),
        ({"patience": -1}, ValueError, r"`patience` must be an int >= 0, got -1"),
        ({"patience": 1.5}, TypeError, r"`patience` must be an int >= 0, got 1.5 \(float\)"),
        ({"cooldown": -2}, ValueError, r"`cooldown` must be an int >= 0, got -2"),
        ({"threshold": -0.1}, ValueError, r"`threshold` must be >= 0 and finite, got -0.1"),
        ({"threshold_mode": "relative"}, ValueError, r"`threshold_mode` must be one of \['abs', 'rel'\]"),
        ({"min_lr": -1.0}, ValueError, r"`min_lr` must be >= 0 and finite, got -1.0"),
        ({"min_lr_mode": "abs"}, ValueError, r"`min_lr_mode` must be one of \['absolute', 'ratio'\], got 'abs'"),
        ({"warmup": 0}, ValueError, r"A duration must be > 0"),
        ({"on_missing_monitor": "skip"}, ValueError, r"`on_missing_monitor` must be one of \['raise', 'warn'\]"),
    ],
)
def test_bad_spec(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Plateau("val_loss", **kwargs)


def test_bad_monitor_and_min_lr_length() -> None:
    with pytest.raises(TypeError, match=r"`monitor` must be a non-empty metric name, got ''"):
        Plateau("")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"`min_lr` has 2 values but the optimizer has 1 parameter groups"):
        PlateauLR(opt, Plateau("m", min_lr=(0.1, 0.2)))


def test_spec_pickles_and_state_is_plain() -> None:
    spec = Plateau("val_loss", factor=0.5, min_lr=[0.1, 0.2])  # type: ignore[arg-type]
    assert spec.min_lr == (0.1, 0.2)
    assert pickle.loads(pickle.dumps(spec)) == spec
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    state = PlateauLR(opt, Plateau("m")).state_dict()
    assert all(isinstance(v, (int, float, list)) for v in state.values())


# ----------------------------------------------------------------------------- through a Trainer


def scripted_value(global_step: int) -> float:
    """A metric with plateaus: it improves every 24 optimizer steps and gets slowly worse in between."""
    return 1.0 - 0.1 * (global_step // 24) + 0.0025 * (global_step % 24)


class ScriptedModule(TinyModule):
    """Logs ``val_metric`` = ``scripted_value(global_step)`` from ``validation_step``."""

    def __init__(self, scheduler: str = "torch", log_if: Callable[[int], bool] = lambda step: True, **spec: Any):
        super().__init__(n=32)
        self.scheduler, self.log_if, self.spec = scheduler, log_if, spec

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        if self.log_if(self.trainer.global_step):
            self.log("val_metric", torch.tensor(scripted_value(self.trainer.global_step)))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        if self.scheduler == "torch":
            sched = tl.ReduceLROnPlateau(opt, factor=0.5, patience=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_metric"}}
        spec = {"factor": 0.5, "patience": 1, **self.spec}
        return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, Plateau("val_metric", **spec))}


class ValidationRecorder(Callback):
    """After each non-sanity validation (after the stepper): (global_step, metric or None, lr)."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, float | None, float]] = []
        self.step_lrs: list[float] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            logged = pl_module.log_if(trainer.global_step)  # type: ignore[operator]
            value = scripted_value(trainer.global_step) if logged else None
            self.runs.append((trainer.global_step, value, trainer.optimizers[0].param_groups[0]["lr"]))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.step_lrs.append(optimizer.param_groups[0]["lr"])


def torch_reference(values: list[float | None]) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = tl.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    lrs = []
    for value in values:
        if value is not None:
            sched.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


CADENCES = {
    "every-epoch": ({"max_epochs": 6, "limit_train_batches": 4}, [4, 8, 12, 16, 20, 24]),
    "val_check_interval=0.5": (
        {"max_epochs": 3, "limit_train_batches": 4, "val_check_interval": 0.5},
        [2, 4, 6, 8, 10, 12],
    ),
    "val_check_interval=3-steps": (
        {"max_epochs": 2, "limit_train_batches": 7, "val_check_interval": 3},
        [3, 6, 10, 13],
    ),
    "check_val_every_n_epoch=2": (
        {"max_epochs": 6, "limit_train_batches": 3, "check_val_every_n_epoch": 2},
        [6, 12, 18],
    ),
    "check_val_every_n_epoch=None": (
        {
            "max_steps": 20,
            "max_epochs": -1,
            "limit_train_batches": 4,
            "val_check_interval": 5,
            "check_val_every_n_epoch": None,
        },
        [5, 10, 15, 20],
    ),
    "limit_val_batches+sanity": (
        {"max_epochs": 4, "limit_train_batches": 4, "limit_val_batches": 1, "num_sanity_val_steps": 2},
        [4, 8, 12, 16],
    ),
}


@pytest.mark.parametrize("scheduler", ["torch", "lit_optim"])
@pytest.mark.parametrize("cadence", list(CADENCES))
def test_one_step_per_validation_run_for_every_cadence(
    make_trainer: Callable[..., Trainer], scheduler: str, cadence: str
) -> None:
    overrides, val_steps = CADENCES[cadence]
    recorder = ValidationRecorder()
    model = ScriptedModule(scheduler)
    trainer = make_trainer(callbacks=[SchedulerStepper(), recorder], **overrides)
    trainer.fit(model)
    assert [step for step, _, _ in recorder.runs] == val_steps
    values = [value for _, value, _ in recorder.runs]
    assert [lr for _, _, lr in recorder.runs] == torch_reference(values)
    assert min(lr for _, _, lr in recorder.runs) < 0.1  # the script does reduce


@pytest.mark.parametrize("scheduler", ["torch", "lit_optim"])
def test_validation_without_the_metric_never_reuses_a_stale_value(
    make_trainer: Callable[..., Trainer], scheduler: str
) -> None:
    recorder = ValidationRecorder()
    model = ScriptedModule(scheduler, log_if=lambda step: step % 8 != 0)
    trainer = make_trainer(callbacks=[SchedulerStepper(), recorder], max_epochs=6, limit_train_batches=4)
    with pytest.warns(RuntimeWarning, match=r"'val_metric' holds a value from before this validation run; skipping"):
        trainer.fit(model)
    values = [value for _, value, _ in recorder.runs]
    assert values.count(None) == 3
    assert [lr for _, _, lr in recorder.runs] == torch_reference(values)


def test_unknown_monitor_lists_logged_metrics(make_trainer: Callable[..., Trainer]) -> None:
    class Module(ScriptedModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, Plateau("val_metrc"))}

    trainer = make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2)
    with pytest.raises(ValueError, match=r"Unknown plateau monitor 'val_metrc'. Valid: \[.*'val_metric'.*\]. Did you "):
        trainer.fit(Module())


def test_unknown_monitor_can_warn_and_skip(make_trainer: Callable[..., Trainer]) -> None:
    class Module(ScriptedModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            spec = Plateau("val_metrc", patience=0, on_missing_monitor="warn")
            return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, spec)}

    model = Module()
    trainer = make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2, max_epochs=3)
    with pytest.warns(RuntimeWarning, match=r"'val_metrc' was not logged by this validation run or training epoch"):
        trainer.fit(model)
    assert model.optimizers().param_groups[0]["lr"] == 0.1


def test_plateau_without_validation_loop_needs_a_training_metric(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"Unknown plateau monitor 'val_metric'.*This run has no validation loop"):
        trainer.fit(ScriptedModule("lit_optim"))


class TrainOnly(LightningDataModule):
    def train_dataloader(self) -> Any:
        return TinyModule().train_dataloader()


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")  # the point
def test_plateau_without_validation_data_needs_a_training_metric(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2)
    with pytest.raises(ValueError, match=r"Unknown plateau monitor 'val_metric'.*This run has no validation loop"):
        trainer.fit(ScriptedModule("lit_optim"), datamodule=TrainOnly())


def test_rop_in_manual_optimization_needs_a_monitor(make_trainer: Callable[..., Trainer]) -> None:
    class Manual(ScriptedModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            manual_sgd_step(self, batch)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [tl.ReduceLROnPlateau(opt, factor=0.5, patience=1)]

    with pytest.raises(ValueError, match=r"ReduceLROnPlateau needs a metric to monitor.*SchedulerStepper\(monitor="):
        make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2).fit(Manual())
    recorder = ValidationRecorder()
    trainer = make_trainer(
        callbacks=[SchedulerStepper(monitor="val_metric"), recorder], max_epochs=6, limit_train_batches=4
    )
    trainer.fit(Manual())
    values = [value for _, value, _ in recorder.runs]
    assert [lr for _, _, lr in recorder.runs] == torch_reference(values)


class NanModule(ScriptedModule):
    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("val_metric", torch.tensor(math.nan if self.trainer.current_epoch >= 1 else 1.0))


def test_nan_metric_in_training_reduces_after_patience(make_trainer: Callable[..., Trainer]) -> None:
    model = NanModule("lit_optim", patience=1)
    trainer = make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2, max_epochs=4)
    with pytest.warns(RuntimeWarning, match=r"'val_metric' is nan; it counts as no improvement \(warned once\)"):
        trainer.fit(model)
    assert model.optimizers().param_groups[0]["lr"] == 0.05  # epochs 1, 2 bad -> one reduction, epoch 3 bad


class MetricModule(TinyModule):
    """Logs a torchmetrics MeanSquaredError object; the plateau's mode comes from the Metric."""

    def __init__(self) -> None:
        super().__init__(n=32)
        self.val_mse = torchmetrics.MeanSquaredError()
        self.values: list[float] = []

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        self.val_mse(self(x), y + self.trainer.global_step)  # grows with training: never improves
        self.log("val_mse", self.val_mse)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.values.append(float(self.val_mse.compute()))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        spec = Plateau("val_mse", mode=self.val_mse, factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, spec)}


@pytest.mark.parametrize("val_check_interval", [1.0, 0.5])
def test_torchmetrics_metric_at_epoch_and_step_cadence(
    make_trainer: Callable[..., Trainer], val_check_interval: float
) -> None:
    model = MetricModule()
    recorder = ValidationRecorder()
    model.log_if = lambda step: False  # type: ignore[method-assign]  # the recorder reads values from the model
    trainer = make_trainer(
        callbacks=[SchedulerStepper(), recorder],
        limit_train_batches=4,
        max_epochs=2,
        val_check_interval=val_check_interval,
    )
    trainer.fit(model)
    runs = 2 if val_check_interval == 1.0 else 4
    assert len(model.values) == runs
    assert model.values == sorted(model.values)  # strictly worse each time, so: one reduction per run after the 1st
    assert [lr for _, _, lr in recorder.runs] == [0.1 * 0.5**k for k in range(runs)]


def test_reductions_are_logged_and_printed(
    make_trainer: Callable[..., Trainer], caplog: pytest.LogCaptureFixture
) -> None:
    logger = MemoryLogger()
    trainer = make_trainer(callbacks=[SchedulerStepper()], logger=logger, limit_train_batches=4, max_epochs=6)
    with caplog.at_level(logging.INFO):
        trainer.fit(ScriptedModule("lit_optim"))
    logged = [(step, m["plateau/reductions"]) for step, m in logger.logged if "plateau/reductions" in m]
    reference = torch_reference([scripted_value(s) for s in (4, 8, 12, 16, 20, 24)])
    expected, count, previous = [], 0, 0.1
    for step, lr in zip((4, 8, 12, 16, 20, 24), reference, strict=True):
        count += lr < previous
        previous = lr
        expected.append((step - 1, float(count)))  # Lightning's logging row: where the val metric that drove it is
    assert logged == expected
    lines = [r.getMessage() for r in caplog.records if "learning rate reduced" in r.getMessage()]
    assert len(lines) == count > 0
    assert "val_metric=" in lines[0]


# ----------------------------------------------------------------------------- resume


def _run(tmp_path: Path, model: ScriptedModule, ckpt_path: str | None = None, **kwargs: Any) -> ValidationRecorder:
    recorder = ValidationRecorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, **kwargs.pop("checkpoint", {}))
    trainer = cpu_trainer(tmp_path, callbacks=[SchedulerStepper(), recorder, checkpoint], **kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # about data order; LRs are what we check
@pytest.mark.parametrize(
    ("where", "checkpoint", "ckpt_name"),
    [
        ("end-of-epoch", {"every_n_epochs": 1}, "epoch=1-step=8.ckpt"),
        ("mid-epoch-validation", {"save_on_train_epoch_end": False}, "epoch=1-step=6.ckpt"),
        # Not a validation batch: Lightning resumed from a checkpoint saved on a validation batch (before that
        # validation ran) skips that validation, so no plateau step can happen for it (documented in README).
        ("mid-epoch-steps", {"every_n_train_steps": 5}, "epoch=1-step=5.ckpt"),
        ("mid-warmup", {"every_n_train_steps": 3}, "epoch=0-step=3.ckpt"),
    ],
)
@pytest.mark.parametrize("scheduler", ["torch", "lit_optim"])
def test_resume_continues_exactly_like_an_uninterrupted_run(
    tmp_path: Path, where: str, checkpoint: dict[str, Any], ckpt_name: str, scheduler: str
) -> None:
    def model() -> ScriptedModule:
        if scheduler == "torch":
            return ScriptedModule("torch")
        return ScriptedModule("lit_optim", warmup=Warmup(duration=5, start_factor=0.2))

    kwargs = {"max_epochs": 5, "limit_train_batches": 4, "val_check_interval": 0.5}
    straight_model, resumed_model = model(), model()
    straight = _run(tmp_path / "a", straight_model, checkpoint=checkpoint, **kwargs)
    resumed = _run(
        tmp_path / "b", resumed_model, ckpt_path=str(tmp_path / "a" / ckpt_name), checkpoint=checkpoint, **kwargs
    )
    resume_step = int(ckpt_name.split("step=")[1].split(".")[0])
    assert resumed.step_lrs == straight.step_lrs[resume_step:]
    assert resumed.runs == [run for run in straight.runs if run[0] > resume_step]
    assert min(lr for _, _, lr in straight.runs) < 0.1
    steppers = [
        next(c for c in m.trainer.callbacks if isinstance(c, SchedulerStepper)) for m in (straight_model, resumed_model)
    ]
    assert steppers[0].reductions == steppers[1].reductions == {0: 4}  # the count carried over the checkpoint
    assert resumed_model.lr_schedulers().state_dict() == straight_model.lr_schedulers().state_dict()


# ----------------------------------------------------------------------------- 2-process DDP

DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lit_optim import Plateau, SchedulerStepper, plateau_scheduler_config
from tests.models import TinyModule

class Ranked(TinyModule):
    def validation_step(self, batch, batch_idx):
        # unsynced, different per rank: rank 0 sees a flat metric (alone it would reduce), rank 1 an improving one
        step = self.trainer.global_step
        value = 1.0 if self.global_rank == 0 else 1.0 / (1 + step)
        self.log("val_metric", torch.tensor(value))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        spec = Plateau("val_metric", factor=0.5, patience=0, warmup=3)
        return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, spec)}

class Record(Callback):
    def __init__(self):
        self.steps, self.epochs = [], []
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(optimizer.param_groups[0]["lr"])
    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(trainer.optimizers[0].param_groups[0]["lr"])

record = Record()
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, limit_train_batches=3,
                  limit_val_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, callbacks=[SchedulerStepper(), record])
model = Ranked(n=48)
trainer.fit(model)
sched = trainer.lr_scheduler_configs[0].scheduler
out = {"steps": record.steps, "epochs": record.epochs, "last_epoch": sched.last_epoch,
       "reductions": sched.reductions, "global_step": trainer.global_step}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.ddp
def test_ddp_ranks_take_identical_plateau_decisions(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(DDP_SCRIPT, tmp_path)
    assert rank0["steps"] == rank1["steps"]
    assert rank0["epochs"] == rank1["epochs"]
    assert rank0["reductions"] == rank1["reductions"]
    # 48 samples / batch 4 = 12 batches, split over 2 ranks = 6, limited to 3 per rank per epoch
    assert rank0["last_epoch"] == rank1["last_epoch"] == rank0["global_step"] == 12
    assert rank0["steps"][:4] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1], rel=1e-12)
    assert rank0["reductions"] == 0  # the rank mean improves every run; rank 0 alone would have reduced


def test_config_with_trainer_attaches_the_stepper(make_trainer: Callable[..., Trainer]) -> None:
    class Module(ScriptedModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            spec = Plateau("val_metric", factor=0.5, patience=1)
            return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, spec, self.trainer, name="lr")}

    recorder = ValidationRecorder()
    trainer = make_trainer(callbacks=[recorder], max_epochs=6, limit_train_batches=4)
    model = Module()
    trainer.fit(model)
    assert sum(isinstance(c, SchedulerStepper) for c in trainer.callbacks) == 1
    assert trainer.lr_scheduler_configs[0].name == "lr"
    values = [value for _, value, _ in recorder.runs]
    reference = torch_reference(values)
    # the stepper was appended after the recorder, so the recorder sees each run's lr before its plateau step
    assert [lr for _, _, lr in recorder.runs] == [0.1, *reference[:-1]]
    assert model.optimizers().param_groups[0]["lr"] == reference[-1] < 0.1


def test_lightning_strict_false_warns_and_skips_for_torch_rop(make_trainer: Callable[..., Trainer]) -> None:
    class Module(ScriptedModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_metrc", "strict": False}}

    model = Module()
    trainer = make_trainer(callbacks=[SchedulerStepper()], limit_train_batches=2, max_epochs=3)
    with pytest.warns(RuntimeWarning, match=r"'val_metrc' was not logged by this validation run or training epoch"):
        trainer.fit(model)
    assert model.optimizers().param_groups[0]["lr"] == 0.1
    assert model.lr_schedulers().last_epoch == 0


@pytest.mark.parametrize(
    ("warmup", "length", "steps"),
    [(3, None, 3), ("25%", TrainingLength(40, 10), 10), ("1ep", TrainingLength(40, 8), 8), (None, None, 0)],
)
def test_warmup_durations_resolve(warmup: Any, length: TrainingLength | None, steps: int) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert PlateauLR(opt, Plateau("m", warmup=warmup), length).warmup_steps == steps


def test_warmup_relative_to_an_unknown_run_raises() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"Plateau warmup 5% is relative to the run.*Pass the trainer"):
        PlateauLR(opt, Plateau("m", warmup="5%"))
    with pytest.raises(ValueError, match=r"Plateau warmup 4ep resolves to 40 optimizer steps, not shorter than"):
        PlateauLR(opt, Plateau("m", warmup="4ep"), TrainingLength(40, 10))


def test_warmup_in_epochs_resolves_against_the_trainer(make_trainer: Callable[..., Trainer]) -> None:
    class Module(ScriptedModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            spec = Plateau("val_metric", warmup=Warmup(duration="1ep", shape="cosine"))
            return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, spec, self.trainer)}

    recorder = ValidationRecorder()
    trainer = make_trainer(callbacks=[recorder], max_epochs=2, limit_train_batches=4)
    trainer.fit(Module())
    warmup = Warmup(duration=4, shape="cosine")
    assert trainer.lr_scheduler_configs[0].scheduler.warmup_steps == 4
    assert recorder.step_lrs == [0.1 * warmup.factor(s, 4) for s in range(4)] + [0.1] * 4


DDP_RANK_ZERO_ONLY_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lit_optim import Plateau, configure_optimizers
from tests.models import TinyModule

class RankZeroLogs(TinyModule):
    def validation_step(self, batch, batch_idx):
        if self.global_rank == 0:  # Lightning's `rank_zero_only=True` recipe: rank 1 never has the metric
            self.log("val_metric", torch.tensor(1.0), rank_zero_only=True)

    def configure_optimizers(self):
        spec = Plateau("val_metric", factor=0.5, patience=0)
        return configure_optimizers(self, "sgd", lr=0.1, weight_decay=0.0, scheduler=spec)

class Record(Callback):
    def __init__(self):
        self.epochs = []
    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(trainer.optimizers[0].param_groups[0]["lr"])

record = Record()
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, limit_train_batches=2,
                  limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, callbacks=[record])
trainer.fit(RankZeroLogs(n=32))
out = {"epochs": record.epochs, "reductions": trainer.lr_scheduler_configs[0].scheduler.reductions}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.ddp
def test_ddp_metric_logged_on_rank_zero_only_drives_every_rank(tmp_path: Path) -> None:
    # Before: rank 1 found no metric and raised (or skipped) while rank 0 waited in the all-reduce.
    rank0, rank1 = run_ddp(DDP_RANK_ZERO_ONLY_SCRIPT, tmp_path, timeout=150)
    assert rank0 == rank1 == {"epochs": [0.1, 0.05, 0.025, 0.0125], "reductions": 3}


DDP_NAN_SCRIPT = DDP_RANK_ZERO_ONLY_SCRIPT.replace(
    """        if self.global_rank == 0:  # Lightning's `rank_zero_only=True` recipe: rank 1 never has the metric
            self.log("val_metric", torch.tensor(1.0), rank_zero_only=True)""",
    """        epoch = self.current_epoch  # improving on both ranks, except that rank 0 logs NaN in epoch 1
        value = float("nan") if (self.global_rank, epoch) == (0, 1) else 1.0 / (1 + epoch)
        self.log("val_metric", torch.tensor(value))""",
)


@pytest.mark.ddp
@pytest.mark.filterwarnings("ignore:.*val_metric.*is nan")
def test_ddp_nan_on_one_rank_is_no_improvement_on_every_rank(tmp_path: Path) -> None:
    assert DDP_NAN_SCRIPT != DDP_RANK_ZERO_ONLY_SCRIPT
    rank0, rank1 = run_ddp(DDP_NAN_SCRIPT, tmp_path, timeout=150)
    assert rank0 == rank1 == {"epochs": [0.1, 0.05, 0.05, 0.05], "reductions": 1}


# ----------------------------------------------------------------------------- groups added during training


class Unfreeze(BaseFinetuning):
    """Freeze the first layer, then add it as a new param group (lr = current lr / 10) at epoch 1."""

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.net[0])

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.net[0], optimizer, lr=None, initial_denom_lr=10.0)


class FlatMetric(TinyModule):
    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("val_metric", torch.tensor(1.0))  # never improves: a reduction after every run but the first

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)  # BaseFinetuning's recipe
        spec = Plateau("val_metric", factor=0.5, patience=0, warmup=2)
        return {"optimizer": opt, "lr_scheduler": plateau_scheduler_config(opt, spec, self.trainer)}


class GroupLrs(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


def test_group_added_by_base_finetuning_joins_the_plateau(make_trainer: Callable[..., Trainer]) -> None:
    recorder = GroupLrs()
    trainer = make_trainer(
        callbacks=[Unfreeze(), recorder], max_epochs=4, limit_train_batches=2, limit_val_batches=1
    )
    model = FlatMetric()
    trainer.fit(model)
    # warmup over 2 steps, then the new group starts at 0.1 / 10 and is reduced with the others
    expected = [[0.0], [0.05], [0.1, 0.01], [0.1, 0.01], [0.05, 0.005], [0.05, 0.005]] + [[0.025, 0.0025]] * 2
    assert [len(lrs) for lrs in recorder.lrs] == [len(lrs) for lrs in expected]
    flat = [lr for lrs in expected for lr in lrs]
    assert [lr for lrs in recorder.lrs for lr in lrs] == pytest.approx(flat, rel=1e-12)
    assert [g["lr"] for g in model.optimizers().param_groups] == pytest.approx([0.0125, 0.00125], rel=1e-12)
    assert model.lr_schedulers().state_dict()["plateau_lrs"] == pytest.approx([0.0125, 0.00125], rel=1e-12)


def test_group_added_later_with_a_min_lr_per_group_raises() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PlateauLR(opt, Plateau("val_loss", factor=0.5, patience=0, min_lr=(0.1,)))
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5})
    opt.step()
    with pytest.raises(ValueError, match=r"`min_lr` has 1 value\(s\) but the optimizer now has 2 parameter groups"):
        sched.step()


class WorseningMetric(TinyModule):
    """``configure_optimizers(self, scheduler=Plateau(...))``; the metric gets worse with every validation run."""

    def __init__(self) -> None:
        super().__init__(n=16)
        self.runs = 0

    def on_validation_epoch_start(self) -> None:
        self.runs += 1

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("val_metric", torch.tensor(float(self.runs)))

    def configure_optimizers(self) -> Any:
        spec = Plateau("val_metric", factor=0.5, patience=0)
        return configure_optimizers(self, "sgd", lr=0.1, weight_decay=0.0, scheduler=spec)


def test_validate_after_fit_never_steps_and_a_second_fit_starts_afresh(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    model = WorseningMetric()
    trainer.fit(model)
    scheduler = model.lr_schedulers()
    assert scheduler.reductions == 2  # runs 1, 2, 3: the last two are worse
    state = scheduler.state_dict()
    for _ in range(2):
        trainer.validate(model, verbose=False)  # worse again, but outside fit: no plateau step
    assert scheduler.state_dict() == state
    assert model.optimizers().param_groups[0]["lr"] == 0.025
    assert len(model.optimizers()._optimizer_step_post_hooks) == 0
    trainer.fit_loop.max_epochs = 5
    trainer.fit(model)  # Lightning calls configure_optimizers again: a fresh optimizer and schedule
    assert sum(isinstance(c, SchedulerStepper) for c in trainer.callbacks) == 1
    assert model.lr_schedulers() is not scheduler
    assert model.lr_schedulers().reductions == 1  # epoch 3 sets the new schedule's best, epoch 4 is worse
    assert model.optimizers().param_groups[0]["lr"] == 0.05


def test_torch_rop_without_a_monitor_key_uses_the_stepper_monitor(make_trainer: Callable[..., Trainer]) -> None:
    class NoMonitorKey(ScriptedModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = tl.ReduceLROnPlateau(opt, factor=0.5, patience=1)
            # Lightning refuses a ReduceLROnPlateau without `monitor` unless told it is not a plateau config
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "reduce_on_plateau": False}}

    recorder = ValidationRecorder()
    trainer = make_trainer(
        callbacks=[SchedulerStepper(monitor="val_metric"), recorder], max_epochs=6, limit_train_batches=4
    )
    trainer.fit(NoMonitorKey())
    values = [value for _, value, _ in recorder.runs]
    assert [lr for _, _, lr in recorder.runs] == torch_reference(values)
    assert min(lr for _, _, lr in recorder.runs) < 0.1


def test_group_added_mid_warmup_joins_at_its_lr_when_a_validation_comes_first() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PlateauLR(opt, Plateau("val_loss", factor=0.5, patience=0, warmup=4))
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.5  # warmup factor 2/4
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.25})  # given under factor 0.5
    assert sched.step_metric(1.0) is False
    assert sched.step_metric(2.0) is True
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.125]
    assert sched.state_dict()["plateau_lrs"] == [0.5, 0.25]


class _PlateauModule(TinyModule):
    def __init__(self, config_monitor: str | None = None) -> None:
        super().__init__()
        self.config_monitor = config_monitor

    def configure_optimizers(self) -> Any:
        config = configure_optimizers(self, "sgd", lr=0.1, scheduler=Plateau("val_loss", patience=0))
        if self.config_monitor is not None:
            config["lr_scheduler"]["monitor"] = self.config_monitor
        return config


def test_two_names_for_the_monitored_metric_raise(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=1)
    with pytest.raises(ValueError, match=r"says `monitor='val_acc'` but its Plateau monitors 'val_loss'"):
        trainer.fit(_PlateauModule(config_monitor="val_acc"))


def test_validation_less_frequent_than_the_run_warns_that_nothing_reduces(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=1, max_epochs=2, check_val_every_n_epoch=3)
    with pytest.warns(RuntimeWarning, match=r"`check_val_every_n_epoch=3` is more than `max_epochs=2`"):
        trainer.fit(_PlateauModule())
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.1


class Worsening(ScriptedModule):
    """``val_metric`` grows at every validation run: every run after the first is a bad one."""

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("val_metric", torch.tensor(1.0 + self.trainer.global_step))


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.parametrize("ckpt_name", ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"], ids=["cooldown=2", "1"])
def test_resume_in_the_middle_of_a_cooldown(tmp_path: Path, ckpt_name: str) -> None:
    """Issue 13 test gap: a restored run must not reduce again while the saved cooldown is still running."""
    kwargs: dict[str, Any] = {"max_epochs": 8, "limit_train_batches": 4, "checkpoint": {"every_n_epochs": 1}}
    straight_model, resumed_model = (Worsening("lit_optim", patience=0, cooldown=2) for _ in range(2))
    straight = _run(tmp_path / "a", straight_model, **kwargs)
    # torch's rule written out: patience 0, cooldown 2 -> the runs after the first reduce at 1, 4, 7 (0-based)
    assert [lr for _, _, lr in straight.runs] == [0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125]
    saved = torch.load(tmp_path / "a" / ckpt_name, weights_only=True)["lr_schedulers"][0]
    assert saved["cooldown_counter"] == (2 if ckpt_name.startswith("epoch=1") else 1)  # stopped mid-cooldown
    resumed = _run(tmp_path / "b", resumed_model, ckpt_path=str(tmp_path / "a" / ckpt_name), **kwargs)
    step = int(ckpt_name.split("step=")[1].split(".")[0])
    assert resumed.step_lrs == straight.step_lrs[step:]
    assert resumed.runs == [run for run in straight.runs if run[0] > step]
