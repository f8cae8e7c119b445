"""The LR range test's maths without a Trainer: sweep points, smoothing and stop rule, suggestion rules, result."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.tuner.lr_finder import _ExponentialLR, _LinearLR

from lit_optim.schedules.lr_range import LossTracker, LRRangeResult, default_skips, suggest_lr, sweep_lr


@pytest.mark.parametrize(("mode", "expected"), [
    ("exponential", [1e-6 * (1.0 / 1e-6) ** (k / 9) for k in range(10)]),
    ("linear", [1e-6 + k / 9 * (1.0 - 1e-6) for k in range(10)]),
])
def test_sweep_runs_from_min_to_max_evenly(mode: str, expected: list[float]) -> None:
    lrs = [sweep_lr(k, 10, 1e-6, 1.0, mode) for k in range(10)]  # type: ignore[arg-type]
    assert lrs == expected
    assert lrs[0] == 1e-6
    assert lrs[-1] == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize(("mode", "cls"), [("exponential", _ExponentialLR), ("linear", _LinearLR)])
def test_lightning_placement_equals_lightnings_own_scheduler(mode: str, cls: type) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-7)
    scheduler = cls(opt, 10.0, 25)
    reference = []
    for _ in range(25):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert [sweep_lr(k, 25, 1e-7, 10.0, mode, lightning=True) for k in range(25)] == reference  # type: ignore[arg-type]


def test_smoothing_is_the_bias_corrected_average() -> None:
    losses = [3.0, 2.0, 2.5, 1.0, 1.5]
    tracker = LossTracker(beta=0.9, threshold=None)
    for loss in losses:
        assert not tracker.add(loss)
    expected, average = [], 0.0
    for k, loss in enumerate(losses):
        average = 0.9 * average + (1 - 0.9) * loss
        expected.append(average / (1 - 0.9 ** (k + 1)))
    assert tracker.smoothed == expected
    assert tracker.smoothed[0] == pytest.approx(3.0, rel=1e-15)  # an unbiased start
    lightning = LossTracker(beta=0.9, threshold=None, lightning=True)
    for loss in losses:
        lightning.add(loss)
    assert lightning.smoothed == [e * (1 - 0.9 ** (k + 1)) / (1 - 0.9 ** (k + 2)) for k, e in enumerate(expected)]


def test_stops_when_the_smoothed_loss_passes_threshold_times_its_best() -> None:
    tracker = LossTracker(beta=0.0, threshold=4.0)  # beta 0: smoothed == raw
    assert [tracker.add(x) for x in (2.0, 1.0, 3.9, 4.0)] == [False, False, False, False]
    assert tracker.add(4.01)  # > 4 * best (1.0)
    assert LossTracker(beta=0.0, threshold=4.0).add(1000.0) is False  # never on the first point
    assert LossTracker(threshold=None).add(float("nan"))  # a non-finite loss always stops
    negative = LossTracker(beta=0.0, threshold=4.0)  # a negative log-likelihood: grew by 3 x |best| to stop
    assert [negative.add(x) for x in (-10.0, -12.0, -5.0, 23.0, 24.01)] == [False, False, False, False, True]
    never = LossTracker(beta=0.0, threshold=None)
    assert not any(never.add(x) for x in (1.0, 100.0, 1e9))


def _fastai_valley(losses: list[float]) -> int:
    """fastai's ``valley`` as published (longest valley, then 1/3 + 1/6 of its length in)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


@pytest.mark.parametrize("seed", range(6))
def test_valley_equals_fastai_on_random_curves(seed: int) -> None:
    g = np.random.default_rng(seed)
    n = 60
    lrs = [1e-6 * 10 ** (6 * k / (n - 1)) for k in range(n)]
    # a noisy valley: down, flat, up
    losses = list(np.concatenate([np.linspace(3, 1, 30), np.linspace(1, 5, 30) ** 2]) + g.normal(0, 0.05, n))
    got = suggest_lr(lrs, losses, "valley", skip_begin=6, skip_end=5)
    index = 6 + _fastai_valley(losses[6 : n - 5])
    assert got == (index, lrs[index])


def test_steepest_is_the_most_negative_gradient_over_lr() -> None:
    lrs = [1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
    losses = [2.3, 2.29, 2.2, 2.0, 1.4, 1.0, 0.9, 1.2, 3.0, 9.0]
    slope = np.gradient(np.array(losses[1:9]), np.array(lrs[1:9]))  # numpy's second-order non-uniform formula
    expected = 1 + int(np.argmin(slope))
    assert suggest_lr(lrs, losses, "steepest", skip_begin=1, skip_end=1) == (expected, lrs[expected])


def test_minimum_is_a_tenth_of_the_lowest_point_and_skips_are_honoured() -> None:
    lrs = [0.001, 0.01, 0.1, 1.0]
    assert suggest_lr(lrs, [1.0, 0.5, 0.2, 9.0], "minimum", 0, 0) == (2, 0.1 / 10)
    assert suggest_lr(lrs, [0.1, 0.5, 0.2, 0.05], "minimum", 1, 1) == (2, 0.1 / 10)  # the ends are skipped
    assert suggest_lr(lrs, [1.0, float("nan"), 0.2, 9.0], "steepest", 0, 0) is not None  # nan points ignored


def test_no_suggestion_when_too_few_points_remain() -> None:
    assert suggest_lr([0.1, 0.2, 0.3], [1.0, 0.5, 0.2], "steepest", skip_begin=2, skip_end=0) is None
    assert suggest_lr([0.1, 0.2], [1.0, float("inf")], "steepest", 0, 0) is None
    assert suggest_lr([], [], "valley", 0, 0) is None
    assert default_skips("valley", 40) == (4, 5)


def test_suggest_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"one of \['minimum', 'steepest', 'valley'\], got 'valey'. Did you mean"):
        suggest_lr([0.1], [1.0], "valey")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        suggest_lr([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match=r"`skip_end` must be an int >= 0, got -1"):
        suggest_lr([0.1], [1.0], skip_end=-1)


def _result(**overrides: object) -> LRRangeResult:
    values: dict[str, object] = {
        "lrs": (1e-4, 1e-3, 1e-2, 1e-1), "losses": (2.0, 1.5, 1.0, 4.0), "raw_losses": (2.0, 1.2, 0.8, 9.0),
        "ratios": {"body": 0.1, "head": 1.0}, "base_lr": 3e-3, "rule": "steepest", "suggestion": 1e-3,
        "suggestion_index": 1, "stopped_early": True,
    }
    values.update(overrides)
    return LRRangeResult(**values)  # type: ignore[arg-type]


def test_result_table_csv_and_group_lrs(tmp_path: Path) -> None:
    result = _result()
    assert result.group_lrs() == {"body": 1e-3 * 0.1, "head": 1e-3}
    assert result.group_lrs(0.5) == {"body": 0.05, "head": 0.5}
    lines = result.table().splitlines()
    assert lines[0].split() == ["step", "base", "lr", "loss", "smoothed"]
    assert lines[2].endswith("<- suggestion")
    assert lines[2].split()[:2] == ["1", "0.001"]
    assert "base lr 0.001 (was 0.003); groups: body=0.0001, head=0.001" in lines[-1]
    rows = (tmp_path / "c.csv").read_text() if result.to_csv(tmp_path / "c.csv") else ""
    assert rows.splitlines()[0] == "step,lr,loss,smoothed_loss"
    assert [float(x) for x in rows.splitlines()[4].split(",")] == [3, 0.1, 9.0, 4.0]
    none = _result(suggestion=None, suggestion_index=None)
    assert "no suggestion" in none.table()
    with pytest.raises(ValueError, match="made no suggestion"):
        none.group_lrs()
    with pytest.raises(ValueError, match="`max_rows` must be None or an int >= 2"):
        result.table(max_rows=1)


def test_result_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = _result().plot(tmp_path / "sub" / "range.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isfinite(path.stat().st_size)
