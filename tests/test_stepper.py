from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch.optim import lr_scheduler as tl

from lit_optim import SchedulerStepper, ensure_stepper
from lit_optim.callbacks._intervals import infer_interval
from tests.models import TinyModule
from tests.trainers import cpu_trainer


def _f(step: int) -> float:
    """A schedule whose every value is distinct: a wrong step count shows at once."""
    return 1.0 / (1.0 + step)


class LrRecorder(Callback):
    """Record the lr of every group of every optimizer, just before each real optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.by_optimizer: dict[int, list[float]] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            self.lrs.append([g["lr"] for g in optimizer.param_groups])
            index = [id(o) for o in trainer.optimizers].index(id(optimizer))
            self.by_optimizer.setdefault(index, []).append(optimizer.param_groups[0]["lr"])


class LambdaModule(TinyModule):
    def __init__(self, interval: str | None = "step", skip: frozenset[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval, self.skip = interval, skip

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if batch_idx in self.skip:
            return None
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = tl.LambdaLR(opt, _f)
        if self.interval is None:
            return {"optimizer": opt, "lr_scheduler": sched}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


def _fit(make_trainer: Callable[..., Trainer], model: LightningModule, **kwargs: Any) -> LrRecorder:
    recorder = LrRecorder()
    callbacks = [SchedulerStepper(), recorder, *kwargs.pop("callbacks", [])]
    trainer = make_trainer(callbacks=callbacks, limit_val_batches=0, **kwargs)
    trainer.fit(model)
    return recorder


@pytest.mark.parametrize(
    ("accumulate", "limit", "epochs", "steps"),
    [(1, 5, 2, 10), (3, 7, 2, 6), (3, 6, 1, 2), (2, 16, 1, 8)],
)
def test_per_step_schedule_advances_once_per_optimizer_step(
    make_trainer: Callable[..., Trainer], accumulate: int, limit: int, epochs: int, steps: int
) -> None:
    model = LambdaModule()
    recorder = _fit(
        make_trainer, model, accumulate_grad_batches=accumulate, limit_train_batches=limit, max_epochs=epochs
    )
    assert [lrs[0] for lrs in recorder.lrs] == [0.1 * _f(k) for k in range(steps)]
    assert model.lr_schedulers().last_epoch == steps


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")  # on purpose here
def test_skipped_training_step_does_not_advance_schedule(make_trainer: Callable[..., Trainer]) -> None:
    model = LambdaModule(skip=frozenset({1, 4, 5}))
    recorder = _fit(make_trainer, model, limit_train_batches=8)
    assert [lrs[0] for lrs in recorder.lrs] == [0.1 * _f(k) for k in range(5)]
    assert model.lr_schedulers().last_epoch == 5


def test_lightning_never_steps_a_claimed_epoch_scheduler(make_trainer: Callable[..., Trainer]) -> None:
    class StepLRModule(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": tl.StepLR(opt, step_size=1, gamma=0.5)}

    model = StepLRModule()
    recorder = _fit(make_trainer, model, limit_train_batches=2, max_epochs=3)
    assert [lrs[0] for lrs in recorder.lrs] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert model.lr_schedulers().last_epoch == 3  # stepped once per epoch, by the stepper only
    assert model.trainer.lr_scheduler_configs[0].frequency == 1  # restored after fit


def _reference(scheduler_factory: Callable[[torch.optim.Optimizer], Any], steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = scheduler_factory(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _warmup_cosine(opt: torch.optim.Optimizer) -> tl.SequentialLR:
    """The usual per-step recipe: 4 steps of linear warmup, then cosine over the remaining 4 of 8 steps."""
    warmup = tl.LinearLR(opt, start_factor=0.1, total_iters=4)
    return tl.SequentialLR(opt, [warmup, tl.CosineAnnealingLR(opt, T_max=4)], milestones=[4])


def _chained_epochs(opt: torch.optim.Optimizer) -> tl.ChainedScheduler:
    return tl.ChainedScheduler([tl.StepLR(opt, step_size=1, gamma=0.5), tl.ConstantLR(opt, 0.5, total_iters=1)])


def _chained_steps(opt: torch.optim.Optimizer) -> tl.ChainedScheduler:
    return tl.ChainedScheduler([tl.ConstantLR(opt, 0.5, total_iters=3), tl.CosineAnnealingLR(opt, T_max=8)])


@pytest.mark.parametrize(
    ("name", "factory", "per_step"),
    [
        ("OneCycleLR", lambda o: tl.OneCycleLR(o, max_lr=0.1, total_steps=8), True),
        ("CyclicLR", lambda o: tl.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3), True),
        ("CosineAnnealingLR-steps", lambda o: tl.CosineAnnealingLR(o, T_max=8), True),
        ("CosineAnnealingLR-epochs", lambda o: tl.CosineAnnealingLR(o, T_max=2), False),
        ("MultiStepLR-steps", lambda o: tl.MultiStepLR(o, milestones=[3, 6], gamma=0.5), True),
        ("LinearLR-epochs", lambda o: tl.LinearLR(o, start_factor=0.5, total_iters=2), False),
        ("PolynomialLR-steps", lambda o: tl.PolynomialLR(o, total_iters=8, power=2.0), True),
        # composites are judged from their parts
        ("SequentialLR-steps", _warmup_cosine, True),
        ("ChainedScheduler-steps", _chained_steps, True),
        ("ChainedScheduler-epochs", _chained_epochs, False),
    ],
)
def test_plain_torch_scheduler_interval_is_inferred(
    make_trainer: Callable[..., Trainer], name: str, factory: Callable[[Any], Any], per_step: bool
) -> None:
    class Module(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": factory(opt)}  # Lightning's default interval: "epoch"

    recorder = _fit(make_trainer, Module(), limit_train_batches=4, max_epochs=2)
    got = [lrs[0] for lrs in recorder.lrs]
    if per_step:
        assert got == _reference(factory, 8)
    else:
        per_epoch = _reference(factory, 2)
        assert got == [per_epoch[0]] * 4 + [per_epoch[1]] * 4


def test_infer_interval_table() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert infer_interval(tl.StepLR(opt, step_size=30), "epoch", 90, 9000) == ("epoch", None)
    assert infer_interval(tl.CosineAnnealingLR(opt, T_max=9000), "epoch", 90, 9000) == ("step", None)
    assert infer_interval(tl.LinearLR(opt, total_iters=500), "epoch", 90, 9000) == ("step", None)
    assert infer_interval(tl.ReduceLROnPlateau(opt), "epoch", 90, 9000) == ("plateau", None)
    assert infer_interval(tl.LambdaLR(opt, _f), "step", 90, 9000) == ("step", None)
    # A period longer than the run's epochs may be meant in epochs of a longer run: per step, but said.
    interval, why = infer_interval(tl.StepLR(opt, step_size=3000), "epoch", 90, 9000)
    assert interval == "step"
    assert why is not None
    assert "StepLR's period of 3000 is longer than `max_epochs`=90" in why
    # No length to judge by (a LambdaLR warmup is the classic per-batch schedule left at 'epoch'): said too.
    interval, why = infer_interval(tl.LambdaLR(opt, _f), "epoch", 90, 9000)
    assert interval == "epoch"
    assert why is not None
    assert "LambdaLR has no length" in why
    assert "'interval': 'step'" in why
    interval, why = infer_interval(tl.StepLR(opt, step_size=30), "epoch", -1, 9000)
    assert interval == "step"
    assert why is not None
    assert "`max_epochs` is not set" in why
    interval, why = infer_interval(tl.CosineAnnealingLR(opt, T_max=10**6), "epoch", 90, 9000)
    assert interval == "epoch"
    assert why is not None
    assert "more than both" in why


def test_ambiguous_interval_warns_once_with_override_hint(make_trainer: Callable[..., Trainer]) -> None:
    class Module(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": tl.ExponentialLR(opt, gamma=0.5)}

    with pytest.warns(RuntimeWarning, match=r"ExponentialLR has no length.*intervals=\{'ExponentialLR': 'step'\}"):
        recorder = _fit(make_trainer, Module(), limit_train_batches=2, max_epochs=2)
    assert [lrs[0] for lrs in recorder.lrs] == [0.1, 0.1, 0.05, 0.05]


def test_intervals_override(make_trainer: Callable[..., Trainer]) -> None:
    class Module(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": tl.ExponentialLR(opt, gamma=0.5)}

    recorder = LrRecorder()
    trainer = make_trainer(
        callbacks=[SchedulerStepper(intervals={"ExponentialLR": "step"}), recorder],
        limit_train_batches=3,
        limit_val_batches=0,
    )
    trainer.fit(Module())
    assert [lrs[0] for lrs in recorder.lrs] == [0.1, 0.05, 0.025]


def test_frequency_counts_optimizer_steps(make_trainer: Callable[..., Trainer]) -> None:
    class Module(LambdaModule):
        def configure_optimizers(self) -> Any:
            config = super().configure_optimizers()
            config["lr_scheduler"]["frequency"] = 2
            return config

    recorder = _fit(make_trainer, Module(), limit_train_batches=9, accumulate_grad_batches=2)
    # 5 optimizer steps (the last one on the final, partial accumulation); the schedule steps after #2 and #4.
    assert [lrs[0] for lrs in recorder.lrs] == [0.1 * _f(k) for k in (0, 0, 1, 1, 2)]


class TwoOptimizerModule(TinyModule):
    """Manual optimization: the head steps every batch, the body every other batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        body_opt, head_opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss)
        head_opt.step()
        head_opt.zero_grad()
        if batch_idx % 2 == 1:
            body_opt.step()
            body_opt.zero_grad()
        return loss

    def configure_optimizers(self) -> Any:
        body = torch.optim.SGD(self.net[0].parameters(), lr=0.1)
        head = torch.optim.SGD(self.net[2].parameters(), lr=1.0)
        return [body, head], [
            {"scheduler": tl.LambdaLR(body, _f), "interval": "step"},
            {"scheduler": tl.LambdaLR(head, lambda s: 0.5**s), "interval": "step"},
        ]


def test_manual_optimization_each_optimizer_follows_its_own_schedule(make_trainer: Callable[..., Trainer]) -> None:
    model = TwoOptimizerModule()
    recorder = _fit(make_trainer, model, limit_train_batches=6)
    body_sched, head_sched = model.lr_schedulers()
    assert head_sched.last_epoch == 6
    assert body_sched.last_epoch == 3
    assert recorder.by_optimizer[1] == [0.5**k for k in range(6)]
    assert recorder.by_optimizer[0] == [0.1 * _f(k) for k in range(3)]
    assert model.optimizers()[0].param_groups[0]["lr"] == 0.1 * _f(3)
    assert model.optimizers()[1].param_groups[0]["lr"] == 0.5**6


def test_post_hooks_removed_after_fit(make_trainer: Callable[..., Trainer]) -> None:
    model = LambdaModule()
    _fit(make_trainer, model, limit_train_batches=2)
    assert len(model.trainer.optimizers[0]._optimizer_step_post_hooks) == 0


class InfGradModule(LambdaModule):
    """Batch 2 produces an infinite loss: fp16 AMP's GradScaler must skip that optimizer step."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return loss * math.inf if batch_idx == 2 else loss


def test_fp16_amp_skipped_step_does_not_advance_schedule(make_trainer: Callable[..., Trainer]) -> None:
    model = InfGradModule()
    trainer = make_trainer(
        callbacks=[SchedulerStepper()],
        limit_train_batches=5,
        limit_val_batches=0,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=16.0))],
    )
    trainer.fit(model)
    scaler = trainer.precision_plugin.scaler
    assert scaler is not None
    assert scaler.get_scale() == 8.0  # the scaler saw exactly one inf step and backed off once
    assert model.lr_schedulers().last_epoch == 4  # 5 batches, one skipped
    assert model.optimizers().param_groups[0]["lr"] == 0.1 * _f(4)


def test_ensure_stepper_goes_before_checkpoint_callbacks(make_trainer: Callable[..., Trainer]) -> None:
    checkpoint = ModelCheckpoint()
    trainer = make_trainer(callbacks=[checkpoint], enable_checkpointing=True)
    stepper = ensure_stepper(trainer)
    names = [type(c).__name__ for c in trainer.callbacks]
    assert names.index("SchedulerStepper") < names.index("ModelCheckpoint")
    assert ensure_stepper(trainer) is stepper
    assert sum(isinstance(c, SchedulerStepper) for c in trainer.callbacks) == 1


def test_ensure_stepper_appends_without_checkpoint(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer()
    stepper = ensure_stepper(trainer)
    assert trainer.callbacks[-1] is stepper


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`intervals` must be one of \['epoch', 'plateau', 'step'\], got 'steps'"):
        SchedulerStepper(intervals={"StepLR": "steps"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"`on_missing_monitor` must be one of \['raise', 'warn'\], got 'ignore'"):
        SchedulerStepper(on_missing_monitor="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`monitor` must be a non-empty metric name or None, got ''"):
        SchedulerStepper(monitor="")


def test_pickles_and_keeps_no_state_of_its_own() -> None:
    stepper = SchedulerStepper(intervals={"StepLR": "step"})
    clone = pickle.loads(pickle.dumps(stepper))
    assert clone.intervals == {"StepLR": "step"}
    # All progress lives in the schedulers (checkpointed by Lightning), so a stepper attached inside
    # configure_optimizers - after Lightning restored callback states - resumes exactly.
    assert clone.state_dict() == {}


class EpochModule(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": tl.StepLR(opt, step_size=1, gamma=0.5), "name": "s"}}


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.parametrize(
    ("checkpoint", "ckpt_name"),
    [
        ({"every_n_epochs": 1, "save_on_train_epoch_end": True}, "epoch=1-step=8.ckpt"),  # after the epoch step
        ({"every_n_epochs": 1, "save_on_train_epoch_end": False}, "epoch=1-step=8.ckpt"),  # at validation end
    ],
)
def test_epoch_scheduler_resume_neither_repeats_nor_misses_a_step(
    tmp_path: Path, checkpoint: dict[str, Any], ckpt_name: str
) -> None:
    def fit(root: Path, ckpt_path: str | None = None) -> LrRecorder:
        recorder = LrRecorder()
        callbacks = [SchedulerStepper(), recorder, ModelCheckpoint(dirpath=root, save_top_k=-1, **checkpoint)]
        trainer = cpu_trainer(root, max_epochs=4, limit_train_batches=4, limit_val_batches=1, callbacks=callbacks)
        trainer.fit(EpochModule(), ckpt_path=ckpt_path)
        return recorder

    straight = fit(tmp_path / "a")
    assert [lrs[0] for lrs in straight.lrs] == [0.1 * 0.5 ** (k // 4) for k in range(16)]
    resumed = fit(tmp_path / "b", ckpt_path=str(tmp_path / "a" / ckpt_name))
    assert resumed.lrs == straight.lrs[8:]


def test_override_plateau_must_match_the_scheduler_kind(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(callbacks=[SchedulerStepper(intervals={"LambdaLR": "plateau"})], limit_train_batches=2)
    with pytest.raises(ValueError, match=r"`intervals\['LambdaLR'\]` is 'plateau', but only ReduceLROnPlateau steps"):
        trainer.fit(LambdaModule())


class IntervalSpy(Callback):
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen.add(trainer.lr_scheduler_configs[0].interval)


def test_config_interval_reflects_the_inferred_cadence_during_fit(make_trainer: Callable[..., Trainer]) -> None:
    class Module(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": tl.OneCycleLR(opt, max_lr=0.1, total_steps=4)}

    spy = IntervalSpy()
    trainer = make_trainer(callbacks=[SchedulerStepper(), spy], limit_train_batches=4, limit_val_batches=0)
    trainer.fit(Module())
    assert spy.seen == {"step"}  # what LearningRateMonitor reads to choose its logging cadence
    assert trainer.lr_scheduler_configs[0].interval == "epoch"  # the user's config is restored after fit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_amp_skipped_step_on_cuda(make_trainer: Callable[..., Trainer]) -> None:
    model = InfGradModule()
    trainer = make_trainer(
        accelerator="cuda",
        callbacks=[SchedulerStepper()],
        limit_train_batches=5,
        limit_val_batches=0,
        plugins=[MixedPrecision("16-mixed", "cuda", scaler=torch.amp.GradScaler("cuda", init_scale=16.0))],
    )
    trainer.fit(model)
    assert model.lr_schedulers().last_epoch == 4  # 5 batches, the inf one skipped by the GradScaler
    assert model.optimizers().param_groups[0]["lr"] == 0.1 * _f(4)


def test_infer_interval_of_composite_schedulers() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    # SequentialLR spans its last milestone plus its last part: 4 + 4 = 8 calls.
    assert infer_interval(_warmup_cosine(opt), "epoch", 2, 8) == ("step", None)
    assert infer_interval(_warmup_cosine(opt), "epoch", 8, 80) == ("epoch", None)
    cyclic = tl.SequentialLR(opt, [tl.LinearLR(opt, total_iters=2), tl.OneCycleLR(opt, 0.1, total_steps=6)], [2])
    assert infer_interval(cyclic, "epoch", 100, 8) == ("step", None)  # a per-step part makes the whole per-step
    # ChainedScheduler spans its longest part.
    assert infer_interval(_chained_steps(opt), "epoch", 2, 8) == ("step", None)
    assert infer_interval(_chained_epochs(opt), "epoch", 2, 8) == ("epoch", None)


class SelfSteppingModule(TwoOptimizerModule):
    """Lightning's manual-optimization recipe: the user steps the schedulers; the stepper would step them too."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.lr_schedulers()[1].step()  # type: ignore[index]
        return loss


def test_scheduler_stepped_by_the_user_as_well_raises_instead_of_double_stepping(
    make_trainer: Callable[..., Trainer],
) -> None:
    model = SelfSteppingModule()
    with pytest.raises(RuntimeError, match=r"LambdaLR \(lr_scheduler_configs\[1\]\) was stepped outside"):
        _fit(make_trainer, model, limit_train_batches=4)
    assert model.lr_schedulers()[1].last_epoch == 2  # type: ignore[index]  # caught at the second batch


class EveryThirdStep(LambdaModule):
    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        config["lr_scheduler"]["frequency"] = 3
        return config


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # about data order; lrs are what we check
@pytest.mark.parametrize("ckpt_name", ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=1-step=9.ckpt"])
def test_frequency_window_survives_resume(tmp_path: Path, ckpt_name: str) -> None:
    def fit(root: Path, ckpt_path: str | None = None) -> LrRecorder:
        recorder = LrRecorder()
        checkpoint = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_train_steps=1)
        callbacks = [SchedulerStepper(), recorder, checkpoint]
        trainer = cpu_trainer(root, max_epochs=3, limit_train_batches=5, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(EveryThirdStep(), ckpt_path=ckpt_path)
        return recorder

    straight = fit(tmp_path / "a")
    assert [lrs[0] for lrs in straight.lrs] == [0.1 * _f(k // 3) for k in range(15)]
    resumed = fit(tmp_path / "b", ckpt_path=str(tmp_path / "a" / ckpt_name))
    step = int(ckpt_name.split("step=")[1].split(".")[0])
    assert resumed.lrs == straight.lrs[step:]


def test_a_bare_schedule_lr_is_stepped_per_optimizer_step(make_trainer: Callable[..., Trainer]) -> None:
    from lit_optim import Linear, ScheduleLR

    class Module(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [ScheduleLR(opt, Linear(), total_steps=8)]  # no config dict: Lightning says "epoch"

    model = Module()
    recorder = _fit(make_trainer, model, limit_train_batches=4, max_epochs=2)
    assert [lrs[0] for lrs in recorder.lrs] == [0.1 * (1 - k / 8) for k in range(8)]
    assert model.lr_schedulers().last_epoch == 8
    assert infer_interval(model.lr_schedulers(), "epoch", 2, 8) == ("step", None)
