"""The Trainer-free maths of lit_optim.monitoring: the spike rule, its device buffer, the update statistics."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from lit_optim.monitoring import SpikeDetector, SpikeTracker, second_moment_means, snapshot, update_stats


def _reference(values: list[float], z: float, a: float, warmup: int) -> tuple[list[bool], tuple[int, float, float]]:
    """Welford during warm-up, then the exponentially weighted mean/variance (Finch 2009), spikes left out."""
    n, mean, var, flags = 0, 0.0, 0.0, []
    for x in values:
        spike = not math.isfinite(x) or (n >= warmup and x > mean + z * math.sqrt(var))
        flags.append(spike)
        if spike:
            continue
        n += 1
        if n <= warmup:
            new_mean = mean + (x - mean) / n
            var, mean = var + ((x - mean) * (x - new_mean) - var) / n, new_mean
        else:  # var <- a * (var + (1 - a) * delta^2)
            delta = x - mean
            mean, var = mean + (1 - a) * delta, a * (var + (1 - a) * delta**2)
    return flags, (n, mean, var)


@pytest.mark.parametrize(("z", "a", "warmup"), [(3.0, 0.9, 3), (1.0, 0.5, 1), (6.0, 0.99, 5)])
def test_detector_follows_the_written_out_formula(z: float, a: float, warmup: int) -> None:
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(60, generator=g) * 2 + 1).tolist()
    values[20], values[21], values[40] = 40.0, math.inf, math.nan
    detector = SpikeDetector(z, a, warmup)
    flags = [detector.update(v) for v in values]
    expected_flags, expected_stats = _reference(values, z, a, warmup)
    assert flags == expected_flags
    assert [flags[20], flags[21], flags[40]] == [True, True, True]
    assert detector.stats == pytest.approx(expected_stats, rel=1e-12)


def test_non_finite_values_are_spikes_even_during_warmup() -> None:
    detector = SpikeDetector(3.0, 0.9, warmup_steps=10)
    assert [detector.update(v) for v in (1.0, math.nan, -math.inf, 100.0)] == [False, True, True, False]
    assert detector.count == 2  # the warm-up value 100.0 was folded in; the non-finite ones were not


def test_tracker_gives_the_verdicts_of_feeding_the_detectors_step_by_step() -> None:
    g = torch.Generator().manual_seed(1)
    losses = (torch.rand(30, generator=g) + 1).tolist()
    norms = (torch.rand(30, generator=g) * 3 + 2).tolist()
    losses[12], norms[20] = 50.0, 90.0
    tracker = SpikeTracker(["grad_norm", "loss"], 4.0, 0.9, 3, capacity=7)
    loss_ref, norm_ref = SpikeDetector(4.0, 0.9, 3), SpikeDetector(4.0, 0.9, 3)
    verdicts: list[list[bool]] = []
    for i, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        loss_value = None if i == 5 else torch.tensor(loss)  # a step without a loss: the loss detector skips it
        if tracker.record([torch.tensor(norm), loss_value]):
            verdicts += tracker.flush()
    verdicts += tracker.flush()
    pairs = enumerate(zip(losses, norms, strict=True))
    expected = [[norm_ref.update(n), i != 5 and loss_ref.update(lo)] for i, (lo, n) in pairs]
    assert verdicts == expected
    assert tracker.pop_counts() == {"grad_norm": 1, "loss": 1}
    assert tracker.pop_counts() == {"grad_norm": 0, "loss": 0}
    assert tracker.detectors["loss"].stats == loss_ref.stats
    assert tracker.detectors["grad_norm"].stats == pytest.approx(norm_ref.stats, rel=1e-6)  # float32 buffer


def test_tracker_state_is_plain_and_restores() -> None:
    tracker = SpikeTracker(["loss"], 3.0, 0.9, 2)
    for v in (1.0, 2.0, 1.5):
        tracker.record([torch.tensor(v)])
    state = tracker.state_dict()  # flushes the waiting rows first
    assert state == {"loss": {"count": 3, "mean": pytest.approx(1.5), "var": pytest.approx(0.25 * 0.9)}}
    assert pickle.loads(pickle.dumps(state)) == state
    fresh = SpikeTracker(["loss"], 3.0, 0.9, 2)
    fresh.load_state_dict(state)
    assert fresh.detectors["loss"].stats == tracker.detectors["loss"].stats


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, r"`threshold` must be > 0 and finite, got 0.0"),
        ({"ema_decay": 1.5}, r"`ema_decay` must be in \(0, 1\), got 1.5"),
        ({"ema_decay": True}, r"`ema_decay` must be in \(0, 1\), got True"),
        ({"warmup_steps": -1}, r"`warmup_steps` must be an int >= 1, got -1"),
    ],
)
def test_detector_refuses_bad_settings(kwargs: dict[str, float], match: str) -> None:
    settings = {"threshold": 3.0, "ema_decay": 0.9, "warmup_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        SpikeDetector(**settings)  # type: ignore[arg-type]


def test_update_stats_per_group_and_global_by_hand() -> None:
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    groups = [[a], [b]]
    before = snapshot(groups)
    a.sub_(torch.tensor([0.3, 0.0]))
    b.add_(torch.tensor([[0.0, 0.1], [0.2, 0.2]]))
    stats = update_stats(groups, before)
    assert stats.update_norm.tolist() == pytest.approx([0.3, 0.3])
    assert stats.param_norm.tolist() == pytest.approx([5.0, 5.0])
    assert stats.update_ratio.tolist() == pytest.approx([0.06, 0.06])
    assert stats.update_rms.tolist() == pytest.approx([0.3 / math.sqrt(2), 0.3 / 2])
    assert stats.total_update_norm.item() == pytest.approx(math.sqrt(0.18))
    assert stats.total_update_ratio.item() == pytest.approx(math.sqrt(0.18) / math.sqrt(50))
    assert stats.total_update_rms.item() == pytest.approx(math.sqrt(0.18) / math.sqrt(6))


def test_second_moment_means_skip_parameters_without_state() -> None:
    p, q, r = torch.zeros(2), torch.zeros(3), torch.zeros(1)
    state = {p: {"exp_avg_sq": torch.tensor([1.0, 9.0])}, q: {"momentum_buffer": torch.zeros(3)}}
    result = second_moment_means([[p, q], [r]], state)
    assert result is not None
    total, per_group, present = result
    assert present == [True, False]
    assert per_group[0].item() == pytest.approx(2.0)
    assert total.item() == pytest.approx(2.0)
    assert second_moment_means([[q]], state) is None


def test_second_moment_is_the_one_amsgrad_divides_by() -> None:
    # AdamW(amsgrad=True) divides by sqrt(max_exp_avg_sq), not sqrt(exp_avg_sq): sqrt_v must explain the update
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p], lr=0.1, amsgrad=True)
    for scale in (10.0, 0.01, 0.01):  # a large gradient, then small ones: v falls below its running maximum
        p.grad = torch.full((4,), scale)
        opt.step()
    v, v_max = opt.state[p]["exp_avg_sq"], opt.state[p]["max_exp_avg_sq"]
    assert not torch.equal(v, v_max)
    total, per_group, present = second_moment_means([[p]], opt.state)  # type: ignore[misc]
    assert present == [True]
    assert total.item() == pytest.approx(v_max.sqrt().mean().item(), rel=1e-6)
    assert per_group.tolist() == pytest.approx([v_max.sqrt().mean().item()], rel=1e-6)
