from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_optim.scheduler_config import lightning_scheduler_config
from lit_optim.schedules import Cosine, OneCycle, Schedule, Step, Warmup, WarmupStableDecay
from lit_optim.schedules.durations import TrainingLength
from lit_optim.schedules.preview import LRCurve, preview_schedule
from tests.models import TinyModule


def test_curve_is_the_closed_form_per_group() -> None:
    curve = preview_schedule(Cosine(warmup=3, min_lr=0.1), 12, base_lrs={"decay": 0.2, "no_decay": 0.02})
    assert isinstance(curve, LRCurve)
    assert curve.names == ("decay", "no_decay")
    assert len(curve) == 12
    for s, row in enumerate(curve.lrs):
        f = s / 3 if s < 3 else 0.1 + 0.9 * (1 + math.cos(math.pi * (s - 3) / 9)) / 2
        assert row == pytest.approx((0.2 * f, 0.02 * f), rel=1e-14, abs=0)
    assert curve.lr("no_decay") == [row[1] for row in curve.lrs]
    assert curve.momenta is None


def test_base_lrs_forms() -> None:
    schedule = Step(every=2, gamma=0.5)
    assert preview_schedule(schedule, 4).lrs == ((1.0,), (1.0,), (0.5,), (0.5,))
    assert preview_schedule(schedule, 2, base_lrs=[0.4, 0.2]).lrs == ((0.4, 0.2), (0.4, 0.2))
    opt = torch.optim.AdamW(
        [
            {"params": [torch.zeros(1)], "lr": 0.3, "name": "head"},
            {"params": [torch.zeros(1)], "lr": 0.1},
        ]
    )
    curve = preview_schedule(schedule, 3, base_lrs=opt)
    assert curve.names == ("head", "group_1")
    assert curve.lrs[2] == (0.15, 0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.1]  # untouched
    assert "initial_lr" not in opt.param_groups[0]
    groups = [{"params": [], "lr": 0.5, "initial_lr": 1.0, "name": "a"}]  # a group already under a scheduler
    assert preview_schedule(schedule, 1, base_lrs=groups).lrs == ((1.0,),)


def test_one_cycle_preview_has_momentum() -> None:
    curve = preview_schedule(OneCycle(cycle_momentum=True), 20, base_lrs=0.01)
    assert curve.momenta is not None
    assert curve.momenta[0] == pytest.approx(0.95)
    assert min(curve.momenta) == pytest.approx(0.85, abs=1e-3)
    assert curve.lrs[0][0] == pytest.approx(0.01 / 25)


def test_length_forms() -> None:
    length = TrainingLength.from_loop(max_epochs=3, batches_per_epoch=10, accumulate_grad_batches=4)
    assert length == TrainingLength(total_steps=9, steps_per_epoch=3)
    curve = preview_schedule(Step(every="1ep", gamma=0.5), length)
    assert [row[0] for row in curve.lrs] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert curve.steps_per_epoch == 3
    assert TrainingLength.from_loop(max_epochs=5, batches_per_epoch=10, max_steps=7).total_steps == 7


def test_table() -> None:
    curve = preview_schedule(Cosine(), 100, base_lrs={"a": 1.0, "b": 0.5})
    lines = curve.table(max_rows=5).splitlines()
    assert lines[0].split() == ["step", "a", "b"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "25", "50", "74", "99"]
    assert lines[3].split()[1:] == [f"{curve.lrs[50][0]:.6g}", f"{curve.lrs[50][1]:.6g}"]
    assert len(curve.table(max_rows=None).splitlines()) == 101
    assert str(curve) == curve.table(max_rows=20)


def test_csv_round_trips_exactly(tmp_path: Path) -> None:
    curve = preview_schedule(OneCycle(cycle_momentum=True), 30, base_lrs={"x": 3e-4, "y": 1e-3})
    path = curve.to_csv(tmp_path / "lr.csv")
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "x", "y", "momentum"]
    assert len(rows) == 31
    assert curve.momenta is not None
    for s, row in enumerate(rows[1:]):
        assert (int(row[0]), float(row[1]), float(row[2]), float(row[3])) == (s, *curve.lrs[s], curve.momenta[s])


def test_plot_writes_png(tmp_path: Path) -> None:
    curve = preview_schedule(Cosine(warmup="10%"), TrainingLength(50, 10), base_lrs={"a": 1.0, "b": 0.1})
    path = curve.plot(tmp_path / "lr.png", title="warmup + cosine", log_scale=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"LRCurve.plot needs matplotlib: `pip install 'lit_optim\[plot\]'`"):
        preview_schedule(Cosine(), 5).plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("base_lrs", "error", "match"),
    [
        ("0.1", TypeError, r"`base_lrs` must be a number, a list of numbers, \{name: lr\}, an optimizer .* got '0\.1'"),
        ([], ValueError, r"`base_lrs` holds no param group"),
        ({"head": -0.1}, ValueError, r"The lr of group 'head' must be >= 0, got -0\.1"),
        ([0.1, float("nan")], ValueError, r"The lr of group 'group_1' must be >= 0, got nan"),
    ],
)
def test_bad_base_lrs(base_lrs: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        preview_schedule(Cosine(), 5, base_lrs=base_lrs)


def test_bad_length() -> None:
    with pytest.raises(ValueError, match=r"`total_steps` must be an int >= 1, got 0"):
        preview_schedule(Cosine(), 0)
    with pytest.raises(ValueError, match=r"The warmup \(5steps\) resolves to 5 steps, not shorter than the run"):
        preview_schedule(Cosine(warmup=5), 5)


# ------------------------------------------- the preview is what a real Trainer applies (Lightning's own stepping)


class _Recorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[tuple[float, ...]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append(tuple(float(g["lr"]) for g in optimizer.param_groups))


class _Scheduled(TinyModule):
    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            [
                {"params": self.net[0].parameters(), "lr": 0.1, "name": "body"},
                {"params": self.net[2].parameters(), "lr": 0.5, "name": "head"},
            ]
        )
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, self.schedule, self.trainer)}


@pytest.mark.parametrize(
    ("schedule", "overrides"),
    [
        (Cosine(warmup="1ep", min_lr=0.1), {"max_epochs": 3, "accumulate_grad_batches": 3}),
        (WarmupStableDecay(warmup=Warmup(duration=2, shape="cosine"), decay="40%"),
         {"max_epochs": 2, "limit_train_batches": 5}),
        (Step(every="1ep", gamma=0.5), {"max_epochs": 4, "limit_train_batches": 0.25, "accumulate_grad_batches": 3}),
        (Cosine(warmup="20%"), {"max_epochs": -1, "max_steps": 9}),
        (OneCycle(), {"max_epochs": 10, "max_steps": 12}),
        (Cosine(warmup="10%"), {"max_epochs": 2, "val_check_interval": 0.25, "limit_val_batches": 2}),
    ],
)
def test_trainer_applies_the_preview(
    make_trainer: Callable[..., Trainer], schedule: Schedule, overrides: dict[str, Any]
) -> None:
    recorder = _Recorder()
    trainer = make_trainer(**{"limit_val_batches": 0, "callbacks": [recorder], **overrides})
    trainer.fit(_Scheduled(schedule))
    curve = preview_schedule(schedule, trainer, base_lrs={"body": 0.1, "head": 0.5})
    assert len(recorder.lrs) == len(curve) == trainer.global_step
    assert recorder.lrs == list(curve.lrs)  # exactly, float for float


def test_table_and_lr_reject_bad_arguments_clearly() -> None:
    curve = preview_schedule("linear", 10, base_lrs={"body": 0.1, "head": 1.0})
    assert curve.table(max_rows=2).splitlines()[1:] == ["   0  0.1   1", "   9  0.01  0.1"]  # first and last
    for bad in (1, 0):
        with pytest.raises(ValueError, match=rf"`max_rows` must be None or an int >= 2 \(the first and last step\), "
                           rf"got {bad}"):
            curve.table(max_rows=bad)
    with pytest.raises(ValueError, match=r"Unknown param group 'haed'\. Valid: \['body', 'head'\]\. Did you mean"):
        curve.lr("haed")
