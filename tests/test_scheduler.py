from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler

from lit_optim.scheduler_config import lightning_scheduler_config
from lit_optim.schedules import (
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    Step,
    Warmup,
    WarmupStableDecay,
)
from lit_optim.schedules.durations import TrainingLength
from lit_optim.schedules.scheduler import ScheduleLR
from tests.models import TinyModule

BASE_LRS = (0.1, 0.03, 1e-4)


def make_optimizer(cls: type[torch.optim.Optimizer] = torch.optim.SGD, **kwargs: Any) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in BASE_LRS]
    return cls(groups, **kwargs)


def drive(scheduler: LRScheduler, steps: int) -> list[list[float]]:
    """The lr of every group used at each of ``steps`` optimizer steps."""
    opt = scheduler.optimizer
    lrs = []
    for _ in range(steps):
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return lrs


def ours(schedule: Schedule, total: int, steps: int | None = None, **kwargs: Any) -> list[list[float]]:
    """Our lrs over ``steps`` optimizer steps (default: the run's ``total``)."""
    return drive(ScheduleLR(make_optimizer(), schedule, total, **kwargs), total if steps is None else steps)


def torchs(make: Callable[[torch.optim.Optimizer], LRScheduler], steps: int) -> list[list[float]]:
    return drive(make(make_optimizer()), steps)


def assert_curves_equal(a: list[list[float]], b: list[list[float]], rel: float = 1e-12) -> None:
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x == pytest.approx(y, rel=rel, abs=1e-15), f"step {step}: {x} != {y}"


def test_constant_with_linear_warmup_matches_linear_lr() -> None:
    expected = torchs(lambda o: LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=7), 20)
    assert_curves_equal(ours(Constant(warmup=Warmup(duration=7, start_factor=0.25)), 20), expected)


def test_linear_decay_matches_linear_lr() -> None:
    expected = torchs(lambda o: LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=20), 21)
    assert_curves_equal(ours(Linear(min_lr=0.1), 20, steps=21), expected)  # and holds the floor after


@pytest.mark.parametrize("min_lr", [0.0, 0.05])
def test_cosine_matches_cosine_annealing_lr(min_lr: float) -> None:
    total = 30

    def make(o: torch.optim.Optimizer) -> LRScheduler:
        # torch's eta_min is absolute and shared by the groups; ours is a ratio per group: compare one group
        for g in o.param_groups[1:]:
            g["lr"] = BASE_LRS[0]
        return CosineAnnealingLR(o, T_max=total, eta_min=min_lr * BASE_LRS[0])

    expected = [row[:1] for row in torchs(make, total)]
    got = [row[:1] for row in ours(Cosine(min_lr=min_lr), total)]
    assert_curves_equal(got, expected, rel=1e-9)  # torch's recursive form accumulates rounding


def test_cosine_with_warmup_closed_form_every_group() -> None:
    total, warmup, m = 50, 5, 0.1
    got = ours(Cosine(warmup=warmup, min_lr=m), total)
    for s, row in enumerate(got):
        if s < warmup:
            f = s / warmup
        else:
            p = (s - warmup) / (total - warmup)
            f = m + (1 - m) * (1 + math.cos(math.pi * p)) / 2
        assert row == pytest.approx([b * f for b in BASE_LRS], rel=1e-14, abs=0)


def test_fraction_and_epoch_durations_resolve_once() -> None:
    sched = ScheduleLR(make_optimizer(), Cosine(warmup="2ep"), total_steps=100, steps_per_epoch=7)
    assert sched.schedule == Cosine(warmup=Warmup(duration=14))
    sched = ScheduleLR(make_optimizer(), Cosine(warmup="5%"), total_steps=100)
    assert sched.schedule == Cosine(warmup=Warmup(duration=5))


def test_string_schedule_name() -> None:
    sched = ScheduleLR(make_optimizer(), "cosine", total_steps=10)
    assert sched.schedule == Cosine()


def test_construction_errors() -> None:
    with pytest.raises(TypeError, match=r"`schedule` must be a lit_optim schedule .* got <function"):
        ScheduleLR(make_optimizer(), lambda s: 1.0, total_steps=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown schedule 'cosin'\. Valid: \[.*\]\. Did you mean 'cosine'\?"):
        ScheduleLR(make_optimizer(), "cosin", total_steps=10)
    with pytest.raises(ValueError, match=r"`total_steps` must be an int >= 1, got 0"):
        ScheduleLR(make_optimizer(), Cosine(), total_steps=0)
    with pytest.raises(ValueError, match=r"The warmup \(10steps\) resolves to 10 steps, not shorter than the run"):
        ScheduleLR(make_optimizer(), Cosine(warmup=10), total_steps=10)
    with pytest.raises(ValueError, match=r"The warmup \(1ep\) resolves to 12 steps, not shorter than the run of 10"):
        ScheduleLR(make_optimizer(), Cosine(warmup="1ep"), total_steps=10, steps_per_epoch=12)
    with pytest.raises(ValueError, match=r"Cannot resolve 1ep to optimizer steps: the number of steps per epoch"):
        ScheduleLR(make_optimizer(), Cosine(warmup="1ep"), total_steps=10)


def test_group_added_later_joins_at_current_point() -> None:
    opt = make_optimizer()
    sched = ScheduleLR(opt, Linear(), total_steps=10)
    drive(sched, 4)  # now at step 4: factor 0.6
    opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.06})
    opt.step()
    sched.step()  # step 5: factor 0.5
    assert opt.param_groups[3]["initial_lr"] == pytest.approx(0.1)
    assert opt.param_groups[3]["lr"] == pytest.approx(0.05)
    assert [g["lr"] for g in opt.param_groups[:3]] == pytest.approx([b * 0.5 for b in BASE_LRS])
    assert sched.get_last_lr() == pytest.approx([b * 0.5 for b in (*BASE_LRS, 0.1)])


def test_group_added_with_initial_lr_keeps_it() -> None:
    opt = make_optimizer()
    sched = ScheduleLR(opt, Linear(), total_steps=10)
    drive(sched, 4)
    opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5, "initial_lr": 0.2})
    opt.step()
    sched.step()
    assert opt.param_groups[3]["lr"] == pytest.approx(0.1)


def test_resume_is_exact() -> None:
    schedule, total = Cosine(warmup=3, min_lr=0.1), 12
    straight = ours(schedule, total)
    opt = make_optimizer()
    sched = ScheduleLR(opt, schedule, total)
    first = drive(sched, 5)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    assert sched_state["schedule"] == repr(sched.schedule)
    assert sched_state["total_steps"] == total

    opt2 = make_optimizer()
    sched2 = ScheduleLR(opt2, schedule, total)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert first + drive(sched2, total - 5) == straight


def test_resume_with_changed_schedule_recomputes_from_progress() -> None:
    opt = make_optimizer()
    sched = ScheduleLR(opt, Linear(), total_steps=10)
    drive(sched, 4)
    state = sched.state_dict()

    opt2 = make_optimizer()
    sched2 = ScheduleLR(opt2, Linear(), total_steps=20)  # the run was extended
    with pytest.warns(UserWarning, match=r"Resuming ScheduleLR with a different schedule: saved Linear\(.*\) over 10"):
        sched2.load_state_dict(state)
    assert sched2.last_epoch == 4
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([b * (1 - 4 / 20) for b in BASE_LRS])
    opt2.step()
    sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([b * (1 - 5 / 20) for b in BASE_LRS])


def test_state_dict_is_plain() -> None:
    state = ScheduleLR(make_optimizer(), Cosine(warmup="10%"), total_steps=10).state_dict()
    assert set(state) == {"last_epoch", "_step_count", "base_lrs", "_last_lr", "schedule", "total_steps",
                          "steps_per_epoch"}
    assert state["schedule"] == "Cosine(warmup=Warmup(duration=Duration('1steps'), shape='linear', " \
        "start_factor=0.0), min_lr=0.0)"


def test_lightning_scheduler_config_without_a_trainer_says_how_to_fix() -> None:
    # `configure_optimizers(module, scheduler=...)` passes `module._trainer`, which is None outside a fit
    opt = make_optimizer()
    with pytest.raises(ValueError, match=r"Cosine\(.*\) needs the run's length, known only once fitting starts: .*"
                       r"inside `LightningModule.configure_optimizers` .*or build `ScheduleLR\(optimizer, schedule, "
                       r"total_steps=\.\.\.\)`"):
        lightning_scheduler_config(opt, Cosine(warmup="5%"), None)
    assert [g["lr"] for g in opt.param_groups] == list(BASE_LRS)  # the optimizer was left alone


def test_lightning_scheduler_config(make_trainer: Callable[..., Any]) -> None:
    captured: dict[str, Any] = {}

    class Model(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            config = lightning_scheduler_config(opt, Cosine(warmup="1ep"), self.trainer, name="lr")
            captured.update(config)
            return {"optimizer": opt, "lr_scheduler": config}

    trainer = make_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(Model())
    sched = captured["scheduler"]
    assert {k: v for k, v in captured.items() if k != "scheduler"} == {"interval": "step", "frequency": 1, "name": "lr"}
    assert (sched.total_steps, sched.steps_per_epoch) == (12, 4)
    assert sched.schedule == Cosine(warmup=Warmup(duration=4))
    assert trainer.lr_scheduler_configs[0].scheduler is sched
    assert sched.last_epoch == 12  # Lightning stepped it once per optimizer step


# --------------------------------------------- through Lightning's checkpoint (Lightning's own step interval)


class _Recorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])


class _Scheduled(TinyModule):
    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            [{"params": self.net[0].parameters(), "lr": 0.1}, {"params": self.net[2].parameters(), "lr": 0.02}]
        )
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, self.schedule, self.trainer)}


class _SaveEveryStep(Callback):
    """Saves ``step=N.ckpt`` after each optimizer step (stateless, unlike ModelCheckpoint, so resuming needs
    no matching callback)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        trainer.save_checkpoint(self.folder / f"step={trainer.global_step}.ckpt")


# Lightning notes that a mid-epoch resume with a plain DataLoader replays the epoch's batches from its start;
# the lr trajectory (what these tests check) is a function of the optimizer step and is unaffected.
MID_EPOCH = pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended.*")

RUN: dict[str, Any] = {"max_epochs": 3, "limit_train_batches": 4, "limit_val_batches": 0}


@pytest.fixture
def straight_run(make_trainer: Callable[..., Trainer], tmp_path: Path) -> tuple[list[list[float]], Path]:
    """An uninterrupted run of 12 steps saving a checkpoint after every optimizer step."""
    recorder = _Recorder()
    make_trainer(callbacks=[recorder, _SaveEveryStep(tmp_path / "ckpt")], **RUN).fit(_Scheduled(SCHEDULE))
    assert len(recorder.lrs) == 12
    return recorder.lrs, tmp_path / "ckpt"


SCHEDULE = Cosine(warmup=3, min_lr=0.1)


@MID_EPOCH
@pytest.mark.parametrize("stop", [2, 4, 7, 11])  # mid-warmup, at an epoch boundary, mid-epoch, last step
def test_resume_from_lightning_checkpoint(
    make_trainer: Callable[..., Trainer], straight_run: tuple[list[list[float]], Path], stop: int
) -> None:
    lrs, folder = straight_run
    ckpt = folder / f"step={stop}.ckpt"
    # the scheduler's state is plain values, so the checkpoint loads with weights_only=True
    state = torch.load(ckpt, weights_only=True)["lr_schedulers"][0]
    assert (state["last_epoch"], state["total_steps"], state["schedule"]) == (stop, 12, repr(SCHEDULE.resolve(
        TrainingLength(12, 4))))
    resumed = _Recorder()
    make_trainer(callbacks=[resumed], **RUN).fit(_Scheduled(SCHEDULE), ckpt_path=ckpt)  # no warning: same schedule
    assert resumed.lrs == lrs[stop:]


@MID_EPOCH
def test_resume_with_longer_run_continues_new_schedule(
    make_trainer: Callable[..., Trainer], straight_run: tuple[list[list[float]], Path]
) -> None:
    _, folder = straight_run
    resumed = _Recorder()
    trainer = make_trainer(callbacks=[resumed], **{**RUN, "max_epochs": 5})
    with pytest.warns(UserWarning, match=r"saved Cosine\(.*\) over 12 steps, now Cosine\(.*\) over 20 steps\. The new "
                      r"schedule continues from the saved progress \(step 6\)"):
        trainer.fit(_Scheduled(SCHEDULE), ckpt_path=folder / "step=6.ckpt")
    expected = [[0.1 * SCHEDULE.factor(s, 20), 0.02 * SCHEDULE.factor(s, 20)] for s in range(6, 20)]
    assert resumed.lrs == expected


def test_tensor_lrs_are_filled_in_place() -> None:
    lr = torch.tensor(0.1)
    opt = torch.optim.AdamW([{"params": [torch.zeros(2, requires_grad=True)], "lr": lr}])
    sched = ScheduleLR(opt, Linear(warmup=2), total_steps=6)
    got = [float(v[0]) for v in drive(sched, 6)]
    assert got == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.05, 0.025], rel=1e-6)
    assert opt.param_groups[0]["lr"] is lr  # same tensor, updated in place (capturable optimizers rely on it)
    fresh = torch.optim.AdamW([{"params": [torch.zeros(2)], "lr": torch.tensor(0.1)}])
    restored = ScheduleLR(fresh, Linear(warmup=2), 6)
    restored.load_state_dict(sched.state_dict())
    assert float(restored.optimizer.param_groups[0]["lr"]) == 0.0  # step 6 of 6: the end of the decay


def test_learning_rate_monitor_logs_named_groups(make_trainer: Callable[..., Trainer], tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    class Named(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(
                [
                    {"params": self.net[0].parameters(), "lr": 0.1, "name": "body"},
                    {"params": self.net[2].parameters(), "lr": 0.5, "name": "head"},
                ]
            )
            config = lightning_scheduler_config(opt, Cosine(warmup=2), self.trainer, name="lr")
            return {"optimizer": opt, "lr_scheduler": config}

    logger = CSVLogger(tmp_path / "logs", name="", version="")
    trainer = make_trainer(max_steps=5, logger=logger, log_every_n_steps=1, limit_val_batches=0,
                           callbacks=[LearningRateMonitor(logging_interval="step")])
    trainer.fit(Named())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["lr/body"]]
    f_ = [Cosine(warmup=2).factor(s, 5) for s in range(5)]
    assert [(int(r["step"]), float(r["lr/body"]), float(r["lr/head"])) for r in rows] == [
        (s, 0.1 * f_[s], 0.5 * f_[s]) for s in range(5)
    ]


def test_learning_rate_monitor_tells_two_optimizers_of_one_class_apart(
    make_trainer: Callable[..., Trainer], tmp_path: Path
) -> None:
    # A name set in the config stops LearningRateMonitor from numbering repeated optimizer classes, so a default
    # "lr-SGD" for both made one optimizer's lr overwrite the other's.
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    class TwoSGD(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            for opt in self.optimizers():  # type: ignore[union-attr]
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
                self.manual_backward(loss)
                opt.step()  # the SchedulerStepper that lightning_scheduler_config attached steps the schedule

        def configure_optimizers(self) -> Any:
            body = torch.optim.SGD(self.net[0].parameters(), lr=0.1)
            head = torch.optim.SGD(self.net[2].parameters(), lr=0.5)
            return [
                {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, Linear(), self.trainer)}
                for opt in (body, head)
            ]

    logger = CSVLogger(tmp_path / "logs", name="", version="")
    trainer = make_trainer(limit_train_batches=4, limit_val_batches=0, logger=logger, log_every_n_steps=1,
                           callbacks=[LearningRateMonitor(logging_interval="step")])
    trainer.fit(TwoSGD())
    assert [c.name for c in trainer.lr_scheduler_configs] == [None, None]  # Lightning names them
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-SGD", "")]
    assert [(float(r["lr-SGD"]), float(r["lr-SGD-1"])) for r in rows] == [
        pytest.approx((0.1 * (1 - s / 4), 0.5 * (1 - s / 4))) for s in range(4)
    ]


def test_schedule_from_a_config_mapping() -> None:
    # what a YAML config / OptimizerMixin hparams hold: plain data, no `!!python/object`
    config = {"name": "cosine", "warmup": {"duration": 2, "shape": "cosine"}, "min_lr": 0.1}
    sched = ScheduleLR(make_optimizer(), config, total_steps=10)
    assert sched.schedule == Cosine(warmup=Warmup(duration=2, shape="cosine"), min_lr=0.1)
    assert config == {"name": "cosine", "warmup": {"duration": 2, "shape": "cosine"}, "min_lr": 0.1}  # not mutated
    assert ours(Cosine(warmup=Warmup(duration=2, shape="cosine"), min_lr=0.1), 10) == drive(sched, 10)
    with pytest.raises(ValueError, match=r"A schedule given as a mapping needs its catalogue `name`, e.g. "
                       r"\{'name': 'cosine', 'warmup': '5%'\}; got \{'warmup': 2\}"):
        ScheduleLR(make_optimizer(), {"warmup": 2}, total_steps=10)
    with pytest.raises(ValueError, match=r"Unknown parameter of Cosine 'min_lr_ratio'"):
        ScheduleLR(make_optimizer(), {"name": "cosine", "min_lr_ratio": 0.1}, total_steps=10)


def test_fast_dev_run_names_itself_when_the_schedule_does_not_fit(make_trainer: Callable[..., Trainer]) -> None:
    class Model(TinyModule):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            config = lightning_scheduler_config(opt, Cosine(warmup=5), self.trainer)
            return {"optimizer": opt, "lr_scheduler": config}

    with pytest.raises(ValueError, match=r"The warmup \(5steps\) resolves to 5 steps, not shorter than the run of 2 .*"
                       r"`Trainer\(fast_dev_run=2\)` cuts the run to 2 optimizer steps"):
        make_trainer(fast_dev_run=2).fit(Model())


@pytest.mark.parametrize(
    ("schedule", "needs"),
    [
        (Constant(warmup=3), False),
        (Linear(), True),
        (Cosine(warmup=3), True),
        (Constant(warmup="5%"), True),  # a warmup in % of the run
        (Constant(warmup="1ep"), False),
    ],
)
def test_needs_total_steps(schedule: Schedule, needs: bool) -> None:
    assert schedule.needs_total_steps() is needs


def test_needs_total_steps_for_the_rest_of_the_catalogue() -> None:
    free = [CosineRestarts(period=4), Exponential(gamma=0.9), InverseSqrt(warmup=2), MultiStep(milestones=(2, "1ep")),
            Step(every=3)]  # fmt: skip
    assert [s.needs_total_steps() for s in free] == [False] * 5
    bound = [OneCycle(), Polynomial(), WarmupStableDecay(decay=4), Step(every="10%"), MultiStep(milestones=(2, 0.5))]
    assert [s.needs_total_steps() for s in bound] == [True] * 5


class _Endless(TinyModule):
    """An iterable dataset (8 batches per pass) and no `max_steps`: the run's total is unknown."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.lrs: list[float] = []

    def train_dataloader(self) -> Any:
        class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
            def __iter__(self) -> Any:
                g = torch.Generator().manual_seed(0)
                for _ in range(8):
                    yield torch.randn(8, generator=g), torch.randn(1, generator=g)

        return torch.utils.data.DataLoader(Stream(), batch_size=1)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, self.schedule, self.trainer)}

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_schedule_without_total_drives_a_run_of_unknown_length(make_trainer: Callable[..., Trainer]) -> None:
    model = _Endless(InverseSqrt(warmup=2))
    make_trainer(max_epochs=1, limit_val_batches=0).fit(model)
    expected = [0.0, 0.05] + [0.1 * math.sqrt(2 / s) for s in range(2, 8)]
    assert model.lrs == pytest.approx(expected, rel=1e-15, abs=0)
    with pytest.raises(ValueError, match=r"total number of optimizer steps is unknown .*Set `max_steps` .* "
                       r"Cosine\(.*\) needs it \(by its formula or a duration in % of the run\); InverseSqrt"):
        make_trainer(max_epochs=1, limit_val_batches=0).fit(_Endless(Cosine(warmup=2)))
