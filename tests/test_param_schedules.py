"""Schedules for weight decay, momentum, betas and other param-group hyper-parameters (ParamSchedule)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_optim import (
    Cosine,
    LearningRateLogger,
    OneCycle,
    OptimizerMixin,
    ParamSchedule,
    Plateau,
    ScheduleLR,
    TrainingLength,
    configure_optimizers,
    preview_schedule,
)
from lit_optim.schedules.params import parse_field
from tests.loggers import MemoryLogger
from tests.models import TinyModule

# 64 samples / batch 4 = 16 batches; accumulation 2 -> 8 optimizer steps per epoch, 2 epochs -> 16 steps.
STEPS = 16
ACCUMULATE = 2


def dino_cosine(step: int, total: int, base: float, final: float) -> float:
    """DINO's ``cosine_scheduler(base_value, final_value, ...)`` without warmup, written out from the paper's code."""
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / total))


def linear_ramp(step: int, total: int, start: float, end: float) -> float:
    return start + (end - start) * min(step / total, 1.0)


WD = ParamSchedule(start=0.04, end=0.4, shape="cosine")
MOMENTUM = ParamSchedule(start=0.9, end=0.99, shape="linear")


class Recorded(TinyModule):
    """SGD with momentum, decay and no-decay groups; records each group's hyper-parameters at every optimizer step."""

    def __init__(self, params: dict[str, Any] | None = None, scheduler: Any = None) -> None:
        super().__init__()
        self.params = {"weight_decay": WD, "momentum": MOMENTUM} if params is None else params
        self.scheduler = scheduler
        self.seen: list[list[dict[str, float]]] = []

    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self, "sgd", lr=0.05, weight_decay=0.1, momentum=0.5, scheduler=self.scheduler,
            param_schedules=self.params,
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        keys = ("lr", "weight_decay", "momentum")
        self.seen.append([{k: float(g[k]) for k in keys} | {"name": g["name"]} for g in optimizer.param_groups])


def _fit(make_trainer: Callable[..., L.Trainer], model: Recorded, ckpt_path: Any = None, **kw: Any) -> L.Trainer:
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=ACCUMULATE, limit_val_batches=0, **kw)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def test_dino_weight_decay_cosine_and_momentum_ramp_at_every_optimizer_step(
    make_trainer: Callable[..., L.Trainer],
) -> None:
    model = Recorded()
    _fit(make_trainer, model)
    assert len(model.seen) == STEPS
    for step, groups in enumerate(model.seen):
        decay, no_decay = groups
        assert (decay["name"], no_decay["name"]) == ("decay", "no_decay")
        assert decay["weight_decay"] == pytest.approx(dino_cosine(step, STEPS, 0.04, 0.4), rel=1e-12, abs=1e-15)
        assert no_decay["weight_decay"] == 0.0  # the no-decay group stays at 0
        for group in groups:
            assert group["momentum"] == pytest.approx(linear_ramp(step, STEPS, 0.9, 0.99), rel=1e-12)
            assert group["lr"] == 0.05  # no lr schedule given: a constant lr


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # mid-epoch: values checked, not weights
@pytest.mark.parametrize(("ckpt_name", "same_weights"), [("epoch=0-step=5.ckpt", False), ("epoch=0-step=8.ckpt", True)])
def test_resume_mid_run_equals_the_uninterrupted_run(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path, ckpt_name: str, same_weights: bool
) -> None:
    torch.manual_seed(0)
    straight = Recorded()
    every_step = ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=1, save_top_k=-1)
    _fit(make_trainer, straight, callbacks=[every_step])

    torch.manual_seed(1)  # different initial weights: everything must come from the checkpoint
    resumed = Recorded()
    again = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=1, save_top_k=-1)
    _fit(make_trainer, resumed, callbacks=[again], ckpt_path=tmp_path / "a" / ckpt_name)
    step = int(ckpt_name.split("step=")[1].split(".")[0])
    assert resumed.seen == straight.seen[step:]  # every value at every resumed step, exactly
    if same_weights:  # from an epoch boundary the data order is the same too
        for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_preview_equals_what_the_trainer_used(make_trainer: Callable[..., L.Trainer], tmp_path: Path) -> None:
    model = Recorded(scheduler=Cosine(warmup=2))
    trainer = _fit(make_trainer, model)
    optimizer = trainer.optimizers[0]
    # the optimizer's groups now hold the last values; preview from the groups' own values as they were built
    curve = preview_schedule(
        Cosine(warmup=2),
        TrainingLength(total_steps=STEPS),
        base_lrs={"decay": 0.05, "no_decay": 0.05},
        params={"weight_decay": WD, "momentum": MOMENTUM},
        values={"weight_decay": [0.1, 0.0], "momentum": 0.5},
    )
    assert [g["name"] for g in optimizer.param_groups] == list(curve.names)
    for step, groups in enumerate(model.seen):
        assert curve.lrs[step] == tuple(g["lr"] for g in groups)
        assert curve.value("momentum", "decay")[step] == groups[0]["momentum"]
        assert curve.value("weight_decay", "decay")[step] == groups[0]["weight_decay"]
    assert all(math.isnan(v) for v in curve.value("weight_decay", "no_decay"))  # left alone, shown as nan
    with pytest.raises(ValueError, match=r"Unknown scheduled hyper-parameter 'weight_decy'.*'weight_decay'"):
        curve.value("weight_decy", "decay")

    with curve.to_csv(tmp_path / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["weight_decay/decay"]) for r in rows] == curve.value("weight_decay", "decay")
    assert [float(r["momentum/no_decay"]) for r in rows] == curve.value("momentum", "no_decay")
    table = curve.table(max_rows=None).splitlines()
    assert table[0].split() == ["step", "decay", "no_decay", *(f"{p}/{g}" for p in curve.params for g in curve.names)]
    assert len(table) == STEPS + 1
    pytest.importorskip("matplotlib")
    png = curve.plot(tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_rate_logger_logs_the_scheduled_values(make_trainer: Callable[..., L.Trainer]) -> None:
    logger = MemoryLogger()
    model = Recorded()
    _fit(make_trainer, model, logger=logger, callbacks=[LearningRateLogger()], log_every_n_steps=1)
    steps = [step for step, metrics in logger.logged if "weight_decay/decay" in metrics]
    assert steps == list(range(STEPS))
    wd = [m["weight_decay/decay"] for _, m in logger.logged if "weight_decay/decay" in m]
    momentum = [m["momentum/no_decay"] for _, m in logger.logged if "momentum/no_decay" in m]
    assert wd == pytest.approx([dino_cosine(s, STEPS, 0.04, 0.4) for s in range(STEPS)], rel=1e-6)
    assert momentum == pytest.approx([linear_ramp(s, STEPS, 0.9, 0.99) for s in range(STEPS)], rel=1e-6)


def _sgd(names: tuple[str, ...] = ("decay", "no_decay"), **group: Any) -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "name": n, "weight_decay": 0.1 if i == 0 else 0.0}
        for i, n in enumerate(names)
    ]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, **group)


def _values(optimizer: torch.optim.Optimizer, scheduler: ScheduleLR, key: str, steps: int) -> list[list[Any]]:
    seen = []
    for _ in range(steps):
        seen.append([g[key] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_relative_values_scale_and_exclusions() -> None:
    opt = _sgd(("body", "head", "norm"))
    relative = ParamSchedule(end=0.5, shape="linear", relative=True, scale={"head": 2.0}, exclude=["norm"])
    sched = ScheduleLR(opt, "constant", total_steps=4, params={"momentum": relative})
    seen = _values(opt, sched, "momentum", 4)
    for step, (body, head, norm) in enumerate(seen):
        expected = 0.9 * (0.5 + 0.5 * (1 - step / 4))
        assert body == pytest.approx(expected, rel=1e-12)
        assert head == pytest.approx(2.0 * expected, rel=1e-12)
        assert norm == 0.9


def test_absolute_weight_decay_leaves_no_decay_groups_unless_named() -> None:
    opt = _sgd()
    sched = ScheduleLR(opt, "constant", total_steps=4, params={"weight_decay": {"end": 0.2, "shape": "linear"}})
    assert [row[1] for row in _values(opt, sched, "weight_decay", 4)] == [0.0] * 4
    opt = _sgd()
    named = ParamSchedule(start=0.0, end=0.2, shape="linear", groups=["no_decay"])
    sched = ScheduleLR(opt, "constant", total_steps=4, params={"weight_decay": named})
    assert _values(opt, sched, "weight_decay", 4) == [
        [0.1, pytest.approx(0.2 * s / 4)] for s in range(4)
    ]


def test_betas_items_schedule_on_adam() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1, betas=(0.9, 0.95))
    sched = ScheduleLR(opt, "constant", total_steps=4, params={"betas[1]": ParamSchedule(end=0.999, shape="linear")})
    seen = _values(opt, sched, "betas", 4)
    assert [b[0][0] for b in seen] == [0.9] * 4
    assert [b[0][1] for b in seen] == pytest.approx([0.999 + (0.95 - 0.999) * (1 - s / 4) for s in range(4)])
    assert all(isinstance(b[0], tuple) for b in seen)  # torch's type kept


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("weight_decay", ("weight_decay", None)), ("betas[0]", ("betas", 0)), (" betas[ 1 ] ", ("betas", 1)),
     ("eps", ("eps", None)), ("my_key", ("my_key", None))],
)
def test_parse_field(text: str, parsed: tuple[str, int | None]) -> None:
    assert parse_field(text) == parsed


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"momentum": MOMENTUM}, ValueError, r"group 'group0' of AdamW has no 'momentum'.*write 'betas\[0\]'"),
        ({"wieght_decay": WD}, ValueError, r"no 'wieght_decay'.*Did you mean 'weight_decay'"),
        ({"lr": WD}, ValueError, r"'lr' cannot be scheduled.*`scheduler=`"),
        ({"betas": MOMENTUM}, ValueError, r"'betas' of group 'group0' is a tuple.*'betas\[0\]'"),
        ({"betas[2]": MOMENTUM}, ValueError, r"has no item 2"),
        ({"betas[0]": ParamSchedule(end=1.0)}, ValueError, r"'betas\[0\]' values must be < 1"),
        ({"betas[0]": MOMENTUM, "betas[ 0 ]": MOMENTUM}, ValueError, r"Two schedules for 'betas\[0\]'"),
        ({"weight_decay": ParamSchedule(end=0.1, groups=["decy"])}, ValueError, r"glob 'decy' matches no"),
        ({"eps": "cosine"}, TypeError, r"must be a ParamSchedule"),
        ({"bad key!": WD}, ValueError, r"param-group key, optionally indexed"),
    ],
)
def test_bad_fields_raise_clearly(params: dict[str, Any], error: type[Exception], match: str) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(error, match=match):
        ScheduleLR(opt, "constant", total_steps=4, params=params)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"end": -0.1}, r"`end` must be a finite number >= 0, got -0.1"),
        ({"end": 0.1, "start": -1.0}, r"`start` must be a finite number >= 0, got -1.0"),
        ({"end": float("nan")}, r"`end` must be a finite number >= 0"),
        ({"end": 0.1, "scale": {"head": -2}}, r"`scale\['head'\]` must be a number >= 0"),
        ({"end": 0.1, "shape": "cosin"}, r"Unknown schedule 'cosin'.*'cosine'"),
    ],
)
def test_bad_values_raise_clearly(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ParamSchedule(**kwargs)


def test_bad_selection_types_raise_clearly() -> None:
    with pytest.raises(TypeError, match=r"got the string 'head'; write \['head'\]"):
        ParamSchedule(end=0.1, exclude="head")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`relative` must be True or False, got 'yes'"):
        ParamSchedule(end=0.1, relative="yes")  # type: ignore[arg-type]


def test_one_cycle_momentum_and_a_momentum_schedule_are_refused() -> None:
    opt = _sgd()
    with pytest.raises(ValueError, match=r"cycles momentum and `params` also schedules 'momentum'"):
        ScheduleLR(opt, OneCycle(cycle_momentum=True), total_steps=10, params={"momentum": MOMENTUM})


def test_a_group_without_the_field_is_named(make_trainer: Callable[..., L.Trainer]) -> None:
    # as a hybrid optimizer's Muon groups (momentum, no betas) next to AdamW groups (betas)
    muon_like = {"params": [torch.nn.Parameter(torch.zeros(2, 2))], "name": "muon/decay", "momentum": 0.95}
    adam_like = {"params": [torch.nn.Parameter(torch.zeros(2))], "name": "adamw/no_decay", "betas": (0.9, 0.95)}
    opt = torch.optim.SGD([muon_like, adam_like], lr=0.1)
    with pytest.raises(ValueError, match=r"group 'muon/decay' of SGD has no 'betas'.*exclude=\['muon/decay'\]"):
        ScheduleLR(opt, "constant", total_steps=4, params={"betas[0]": MOMENTUM})
    sched = ScheduleLR(opt, "constant", total_steps=4, params={"betas[0]": ParamSchedule(end=0.8, groups=["adamw/*"])})
    assert opt.param_groups[1]["betas"][0] == 0.9
    assert "betas" not in opt.param_groups[0]
    assert sched.params is not None


def test_plateau_with_param_schedules_is_refused(make_trainer: Callable[..., L.Trainer]) -> None:
    class WithPlateau(Recorded):
        def configure_optimizers(self) -> Any:
            return configure_optimizers(self, "sgd", scheduler=Plateau("val_loss"), param_schedules=self.params)

    with pytest.raises(ValueError, match=r"cannot ride on a Plateau lr schedule"):
        make_trainer(max_steps=2).fit(WithPlateau())


class FromHparams(OptimizerMixin, TinyModule):
    def __init__(self, param_schedules: dict[str, Any] | None = None, optimizer: str = "sgd", lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_optimizer_mixin_checkpoint_loads_with_weights_only_and_resumes(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    schedule = ParamSchedule(start=0.04, end=0.4, shape=Cosine(warmup=2))
    every_step = ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=1, save_top_k=-1)
    torch.manual_seed(0)
    straight = FromHparams(param_schedules={"weight_decay": schedule})
    first = make_trainer(max_steps=6, limit_train_batches=3, max_epochs=-1, callbacks=[every_step])
    first.fit(straight)
    path = tmp_path / "a" / "epoch=0-step=3.ckpt"
    stored = torch.load(path, weights_only=True)["hyper_parameters"]["param_schedules"]["weight_decay"]
    assert stored["class_path"] == "lit_optim.schedules.params.ParamSchedule"
    assert stored["init_args"]["shape"]["class_path"] == "lit_optim.schedules.specs.Cosine"

    loaded = FromHparams.load_from_checkpoint(path)  # weights_only loading (Lightning's default)
    again = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=1, save_top_k=-1)
    second = make_trainer(max_steps=6, limit_train_batches=3, max_epochs=-1, callbacks=[again])
    second.fit(loaded, ckpt_path=path)
    groups = [g["weight_decay"] for g in second.optimizers[0].param_groups]
    assert groups == [g["weight_decay"] for g in first.optimizers[0].param_groups]
    assert groups == [pytest.approx(0.4), 0.0]  # the cosine's end; no_decay stays at 0
    for a, b in zip(straight.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_hybrid_optimizer_betas_schedule_names_the_muon_group_and_runs_on_the_adamw_half() -> None:
    from lit_optim import build_hybrid
    from tests.models import GPT

    model = GPT()
    hybrid = build_hybrid(model, "muon", lr=0.02, weight_decay=0.1)
    names = [g["name"] for g in hybrid.param_groups]
    muon = next(n for n in names if n.startswith("muon/"))
    # the hint excludes the whole Muon half (each of its groups lacks betas), not one group
    with pytest.raises(ValueError, match=rf"group '{muon}' of HybridOptimizer has no 'betas'.*exclude=\['muon/\*'\]"):
        ScheduleLR(hybrid, "constant", total_steps=4, params={"betas[1]": ParamSchedule(end=0.999)})
    only_adamw = ParamSchedule(start=0.95, end=0.999, shape="linear", groups=["adamw/*"])
    sched = ScheduleLR(hybrid, "constant", total_steps=4, params={"betas[1]": only_adamw})
    for step in range(4):
        for group in hybrid.param_groups:
            if group["name"].startswith("adamw/"):
                assert group["betas"][1] == pytest.approx(0.999 + (0.95 - 0.999) * (1 - step / 4), rel=1e-12)
            else:
                assert "betas" not in group
        hybrid.step()
        sched.step()
