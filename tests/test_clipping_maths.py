"""Clipping maths without a Trainer: norms and clipping vs torch, AGC, GradScaler, threshold rules, arguments."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lit_optim import GradientClipping, clip_gradients
from lit_optim.clipping.norms import agc_, grouped_norms
from lit_optim.clipping.thresholds import PercentileThreshold, ZScoreThreshold

# -- norms and clipping against torch -------------------------------------------------------------------------


NORM_TYPES = [0.5, 1.0, 2.0, 3.5, math.inf]  # torch allows any p; 0 < p < 1 is a quasi-norm, still composable


def _grouped_grads(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3), nn.Linear(3, 2))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 3
    groups = [
        {"params": [model[0].weight, model[1].weight], "name": "body"},
        {"params": [model[0].bias, model[1].bias]},
        {"params": [model[2].weight, model[2].bias], "name": "head"},
    ]
    return model, torch.optim.SGD(groups, lr=0.1)


def _in_group_order(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_norm_and_clipped_grads_equal_torch(norm_type: float) -> None:
    _, opt = _grouped_grads()
    params = _in_group_order(opt)
    reference = [p.grad.clone() for p in params]
    ref_params = [nn.Parameter(p.detach().clone()) for p in params]
    for rp, g in zip(ref_params, reference, strict=True):
        rp.grad = g.clone()
    torch_norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm=0.5, norm_type=norm_type)

    result = clip_gradients(opt, max_norm=0.5, norm_type=norm_type)

    assert torch.equal(result.total_norm, torch_norm)
    for p, rp in zip(params, ref_params, strict=True):
        assert torch.equal(p.grad, rp.grad)
    assert result.clip_coef is not None
    assert result.clip_coef.item() < 1.0
    # per-group norms: torch's norm of each group's (pre-clip) gradients
    groups = {"body": reference[0:2], "group1": reference[2:4], "head": reference[4:6]}
    assert set(result.group_norms) == set(groups)
    for name, grads in groups.items():
        expected = torch.nn.utils.get_total_norm(grads, norm_type)
        torch.testing.assert_close(result.group_norms[name], expected, rtol=0, atol=0)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_group_norms_compose_to_total(norm_type: float) -> None:
    _, opt = _grouped_grads(seed=3)
    total, per_group = grouped_norms([[p.grad for p in g["params"]] for g in opt.param_groups], norm_type)
    torch.testing.assert_close(torch.linalg.vector_norm(per_group, norm_type), total)


def test_no_clipping_below_threshold_keeps_grads() -> None:
    _, opt = _grouped_grads()
    before = [p.grad.clone() for p in _in_group_order(opt)]
    result = clip_gradients(opt, max_norm=1e6)
    assert result.clip_coef is not None
    assert result.clip_coef.item() == 1.0
    for p, g in zip(_in_group_order(opt), before, strict=True):
        assert torch.equal(p.grad, g)


def test_value_clipping_equals_torch() -> None:
    _, opt = _grouped_grads()
    params = _in_group_order(opt)
    expected = [p.grad.clone() for p in params]
    ref = [nn.Parameter(torch.zeros_like(g)) for g in expected]
    for r, g in zip(ref, expected, strict=True):
        r.grad = g.clone()
    torch.nn.utils.clip_grad_value_(ref, clip_value=0.7)
    clip_gradients(opt, mode="value", clip_value=0.7)
    for p, r in zip(params, ref, strict=True):
        assert torch.equal(p.grad, r.grad)
    assert max(p.grad.abs().max().item() for p in params) == pytest.approx(0.7)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_foreach_on_and_off_agree(norm_type: float) -> None:
    _, on = _grouped_grads(seed=5)
    _, off = _grouped_grads(seed=5)
    grads = [[p.grad for p in g["params"]] for g in on.param_groups]
    total_on, groups_on = grouped_norms(grads, norm_type, foreach=True)
    total_off, groups_off = grouped_norms(grads, norm_type, foreach=False)
    torch.testing.assert_close(total_on, total_off)
    torch.testing.assert_close(groups_on, groups_off)
    clip_gradients(on, max_norm=0.5, norm_type=norm_type, foreach=True)
    clip_gradients(off, max_norm=0.5, norm_type=norm_type, foreach=False)
    for p, q in zip(_in_group_order(on), _in_group_order(off), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_mixed_dtypes_and_empty_tensors(norm_type: float) -> None:
    torch.manual_seed(0)
    a, b, c = torch.randn(4, 3), torch.randn(5, dtype=torch.float64), torch.randn(2, 2)
    empty = torch.zeros(0)
    total, per_group = grouped_norms([[a, b], [empty, c], []], norm_type)
    assert torch.equal(total, torch.nn.utils.get_total_norm([a, b, c], norm_type))  # same buckets, same order
    expected = [
        torch.nn.utils.get_total_norm([a, b], norm_type),
        torch.nn.utils.get_total_norm([c], norm_type).double(),
        torch.tensor(0.0, dtype=torch.float64),
    ]
    torch.testing.assert_close(per_group.double(), torch.stack(expected))


def test_bf16_and_fp32_gradients_together_equal_torch() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(16, 8, dtype=torch.bfloat16)), nn.Parameter(torch.randn(8))]
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    for p, r in zip(params, ref, strict=True):
        p.grad = torch.randn_like(p) * 4
        r.grad = p.grad.clone()
    opt = torch.optim.SGD([{"params": params[:1], "name": "bf16"}, {"params": params[1:], "name": "fp32"}], lr=0.1)
    group_refs = [torch.nn.utils.get_total_norm([r.grad]).float() for r in ref]  # stacked: promoted to fp32
    torch_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm=0.5)
    result = clip_gradients(opt, max_norm=0.5)
    assert torch.equal(result.total_norm, torch_norm)
    assert torch.equal(result.group_norms["bf16"], group_refs[0])
    assert torch.equal(result.group_norms["fp32"], group_refs[1])
    for p, r in zip(params, ref, strict=True):
        assert p.grad.dtype == r.grad.dtype
        assert torch.equal(p.grad, r.grad)


# -- AGC ------------------------------------------------------------------------------------------------------


def test_agc_matches_published_formula_by_hand() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    b = nn.Parameter(torch.tensor([1.0, 0.0]))
    w.grad = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    b.grad = torch.tensor([0.05, 0.0])
    clipped = agc_([w, b], clipping=0.1, eps=1e-3)
    # row 0: ||G||/||W|| = 1/5 > 0.1 -> rescaled to norm 0.1 * 5 = 0.5
    # row 1: ||W|| = 0 -> eps = 1e-3; ||G|| = 1 > 0.1 * 1e-3 -> rescaled to norm 1e-4
    # bias (one unit, whole vector): 0.05 / 1 <= 0.1 -> untouched
    torch.testing.assert_close(w.grad, torch.tensor([[0.3, 0.4], [1e-4, 0.0]]))
    assert torch.equal(b.grad, torch.tensor([0.05, 0.0]))
    assert clipped.item() == 2


def test_agc_conv_weight_units_are_output_channels() -> None:
    # timm's unitwise norm: over every dim but the first for ndim > 1 (a conv's output channel), whole tensor
    # for biases; the NFNet rule G_i <- G_i * lambda * max(||W_i||, eps) / ||G_i|| when the ratio exceeds lambda
    w = nn.Parameter(torch.stack([torch.ones(2, 2, 2), torch.zeros(2, 2, 2), 2 * torch.ones(2, 2, 2)]))
    b = nn.Parameter(torch.ones(3))
    w.grad = torch.stack([torch.ones(2, 2, 2), torch.zeros(2, 2, 2), 0.1 * torch.ones(2, 2, 2)])
    b.grad = 2 * torch.ones(3)
    clipped = agc_([w, b], clipping=0.5, eps=1e-3)
    # channel 0: ||G|| / ||W|| = 1 > 0.5 -> norm 0.5 * sqrt(8), every element 0.5; channel 1: zero gradient,
    # untouched; channel 2: 0.05 < 0.5, untouched; bias: 2 > 0.5 -> norm 0.5 * sqrt(3), every element 0.5
    expected = torch.stack([0.5 * torch.ones(2, 2, 2), torch.zeros(2, 2, 2), 0.1 * torch.ones(2, 2, 2)])
    torch.testing.assert_close(w.grad, expected)
    torch.testing.assert_close(b.grad, 0.5 * torch.ones(3))
    assert clipped.item() == 2


# -- clip_gradients: non-finite steps, GradScaler -------------------------------------------------------------


def test_clip_gradients_skips_nonfinite() -> None:
    _, opt = _grouped_grads()
    opt.param_groups[0]["params"][0].grad[0, 0] = math.nan
    result = clip_gradients(opt, skip_nonfinite=True)
    assert result.skipped
    assert all(p.grad is None for p in _in_group_order(opt))


def test_clip_gradients_with_scaled_fp16_grads_uses_unscaled_norm() -> None:
    _, opt = _grouped_grads()
    params = _in_group_order(opt)
    true_grads = [p.grad.clone() for p in params]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # as `scaler.scale(loss)` would: initialises the scale
    for p in params:
        p.grad.mul_(1024.0)
    result = clip_gradients(opt, max_norm=0.5, scaler=scaler)
    expected_norm = torch.nn.utils.get_total_norm(true_grads)
    torch.testing.assert_close(result.total_norm, expected_norm)
    scaler.unscale_(opt)
    ref = [nn.Parameter(torch.zeros_like(g)) for g in true_grads]
    for r, g in zip(ref, true_grads, strict=True):
        r.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, 0.5)
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.grad, r.grad)


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clip_gradients_after_the_user_unscaled_does_not_unscale_again(mode: str) -> None:
    _, opt = _grouped_grads()
    params = _in_group_order(opt)
    true_grads = [p.grad.clone() for p in params]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))
    for p in params:
        p.grad.mul_(1024.0)
    scaler.unscale_(opt)  # the user unscaled already (torch's recipe before clipping)
    bound = {"max_norm": 0.5} if mode == "norm" else {"clip_value": 0.7}
    result = clip_gradients(opt, mode=mode, scaler=scaler, **bound)  # type: ignore[arg-type]
    torch.testing.assert_close(result.total_norm, torch.nn.utils.get_total_norm(true_grads))
    ref = [nn.Parameter(torch.zeros_like(g)) for g in true_grads]
    for r, g in zip(ref, true_grads, strict=True):
        r.grad = g.clone()
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
    else:
        torch.nn.utils.clip_grad_value_(ref, 0.7)
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.grad, r.grad)


# -- adaptive rules -------------------------------------------------------------------------------------------


def test_percentile_threshold_equals_numpy_percentile() -> None:
    rule = PercentileThreshold(percentile=30.0, window=4)
    norms = [2.0, 7.0, math.inf, 1.0, 5.0, 3.0, 9.0]
    for i, n in enumerate(norms):
        threshold = rule.update(torch.tensor(n)).item()
        window = [v for v in norms[max(0, i - 3) : i + 1] if math.isfinite(v)]
        assert rule.history == window
        assert threshold == pytest.approx(np.percentile(window, 30.0), rel=1e-6)


def test_zscore_threshold_follows_its_formula() -> None:
    z, a, warm = 2.0, 0.9, 3
    rule = ZScoreThreshold(z_threshold=z, ema_decay=a, warmup_steps=warm)
    norms = [1.0, 2.0, 3.0, math.nan, 2.5, 20.0, 2.0]
    mean = var = 0.0
    count = 0
    for g in norms:
        threshold = rule.update(torch.tensor(g)).item()
        if count < warm:
            assert threshold == math.inf
        else:
            assert threshold == pytest.approx(mean + z * math.sqrt(var), rel=1e-5)
        if not math.isfinite(g):
            continue
        if count < warm:
            new_mean = mean + (g - mean) / (count + 1)
            var = var + ((g - mean) * (g - new_mean) - var) / (count + 1)
            mean = new_mean
        else:
            gc = min(g, threshold)
            mean = a * mean + (1 - a) * gc
            var = a * var + (1 - a) * (gc - mean) ** 2
        count += 1
    assert rule.stats == pytest.approx((count, mean, var), rel=1e-5)
    assert np.var([1.0, 2.0, 3.0]) == pytest.approx(2 / 3)  # the warm-up variance is the population one


# -- arguments, state -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_norm": 0.0}, ValueError, r"`max_norm` must be > 0 and finite, got 0\.0"),
        ({"max_norm": -1}, ValueError, r"`max_norm` must be > 0 and finite, got -1"),
        (
            {"mode": "percentil"},
            ValueError,
            r"one of \['agc', 'norm', 'percentile', 'value', 'zscore'\], got 'percentil'\. Did you mean 'percentile'\?",
        ),
        ({"mode": "percentile", "percentile": 0.0}, ValueError, r"`percentile` must be a percent in \[1, 100\], got 0"),
        ({"mode": "percentile", "percentile": 100.5}, ValueError, r"percent in \[1, 100\], got 100\.5"),
        ({"mode": "percentile", "window": 0}, ValueError, r"`window` must be an int >= 1, got 0"),
        ({"norm_type": 0}, ValueError, r"`norm_type` must be a number > 0 or float\('inf'\), got 0"),
        ({"mode": "value", "clip_value": -0.5}, ValueError, r"`clip_value` must be > 0"),
        ({"mode": "zscore", "ema_decay": 1.0}, ValueError, r"`ema_decay` must be in \(0, 1\), got 1\.0"),
        ({"mode": "zscore", "ema_decay": 0.0}, ValueError, r"`ema_decay` must be in \(0, 1\), got 0\.0"),
        (
            {"mode": "agc", "agc_exclude": "head.*"},
            TypeError,
            r"list of name patterns, .* `agc_exclude=\['head\.\*'\]`",
        ),
        ({"log_every_n_steps": 0}, ValueError, r"`log_every_n_steps` must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        GradientClipping(**kwargs)


def test_clip_gradients_bad_arguments() -> None:
    _, opt = _grouped_grads()
    with pytest.raises(ValueError, match=r"`mode` must be one of \['norm', 'value'\], got 'agc'"):
        clip_gradients(opt, mode="agc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`max_norm` must be > 0 and finite, got -2"):
        clip_gradients(opt, max_norm=-2)


def test_state_key_names_settings_and_instances_coexist() -> None:
    a, b = GradientClipping(max_norm=1.0), GradientClipping(mode="percentile", percentile=5.0, window=10)
    assert a.state_key == "GradientClipping{'mode': 'norm', 'max_norm': 1.0, 'norm_type': 2.0}"
    assert b.state_key == "GradientClipping{'mode': 'percentile', 'percentile': 5.0, 'window': 10, 'norm_type': 2.0}"
    restored = pickle.loads(pickle.dumps(b))
    assert restored.state_key == b.state_key
    assert restored.state_dict() == {"skipped_steps": 0, "consecutive_skips": {}, "rules": {}}


def test_sparse_gradients_are_refused_clearly() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2, 2])).sum().backward()
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"need dense gradients, got a torch\.sparse_coo gradient of shape \(10, 3\)"):
        clip_gradients(opt)


def test_percentile_state_round_trip_and_window_mismatch() -> None:
    rule = PercentileThreshold(percentile=50.0, window=3)
    for v in (1.0, 4.0, 2.0, 8.0):
        rule.update(torch.tensor(v))
    restored = PercentileThreshold(percentile=50.0, window=3)
    restored.load_state_dict(rule.state_dict())
    assert restored.history == rule.history == [4.0, 2.0, 8.0]
    assert restored.update(torch.tensor(3.0)).item() == rule.update(torch.tensor(3.0)).item() == 3.0
    with pytest.raises(ValueError, match=r"window has 3 slots but `window=5`\. Resume with the same `window`"):
        PercentileThreshold(percentile=50.0, window=5).load_state_dict(rule.state_dict())


def test_params_without_gradients_and_groups_without_any() -> None:
    _, opt = _grouped_grads(seed=2)
    body, head = opt.param_groups[0]["params"], opt.param_groups[2]["params"]
    body[1].grad = None  # a parameter that got no gradient
    for p in head:
        p.grad = None  # a whole group without gradients
    present = [p.grad.clone() for p in _in_group_order(opt) if p.grad is not None]
    result = clip_gradients(opt, max_norm=0.5)
    assert torch.equal(result.total_norm, torch.nn.utils.get_total_norm(present))
    assert set(result.group_norms) == {"body", "group1", "head"}
    assert torch.equal(result.group_norms["body"], torch.nn.utils.get_total_norm([present[0]]))
    assert result.group_norms["head"].item() == 0.0
    assert body[1].grad is None
    assert all(p.grad is None for p in head)
