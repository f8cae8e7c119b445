"""``clip_gradients``: the clipping of ``GradientClipping`` as a function, for manual optimization."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.amp.grad_scaler import OptState
from torch.optim import Optimizer

from lit_optim._logging import group_names
from lit_optim._validation import check_choice, check_positive
from lit_optim.clipping.norms import clip_by_coef_, clip_coef, clip_value_, grouped_norms

__all__ = [
    "CLIPPED_BY_FUNCTION",
    "ClipResult",
    "check_flag",
    "check_norm_type",
    "clip_gradients",
    "optimizer_grads",
    "still_scaled",
]

#: optimizers ``clip_gradients`` has clipped: ``GradientClipping`` refuses to clip them a second time
CLIPPED_BY_FUNCTION: weakref.WeakSet[Optimizer] = weakref.WeakSet()


def check_flag(name: str, value: object, *, optional: bool = False) -> Any:
    """Return ``value`` if it is a ``bool`` (or ``None`` when ``optional``), else raise ``TypeError``."""
    if isinstance(value, bool) or (optional and value is None):
        return value
    allowed = "a bool or None" if optional else "a bool"
    raise TypeError(f"`{name}` must be {allowed}, got {value!r} ({type(value).__name__}).")


def check_norm_type(value: object) -> float:
    """Return ``value`` as float if it is a number > 0 (``inf`` allowed), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`norm_type` must be a number > 0 or float('inf'), got {value!r}.")
    return float(value)


def optimizer_grads(optimizer: Optimizer) -> list[list[Tensor]]:
    """The existing gradients of each param group."""
    return [[p.grad for p in g["params"] if p.grad is not None] for g in optimizer.param_groups]


def still_scaled(scaler: torch.amp.GradScaler | None, optimizer: Optimizer) -> bool:
    """Whether ``optimizer``'s gradients still carry ``scaler``'s scale (no ``scaler.unscale_`` since its update)."""
    if scaler is None or not scaler.is_enabled():
        return False
    state = scaler._per_optimizer_states.get(id(optimizer))  # torch's own per-optimizer record (READY/UNSCALED)
    return state is None or state["stage"] is not OptState.UNSCALED


@dataclass(frozen=True)
class ClipResult:
    """What one clipping call measured and did. Tensors stay on the device (no host sync).

    Attributes:
        total_norm: pre-clip global norm of all gradients of the optimizer (``norm_type``).
        group_norms: pre-clip norm of each param group, by group name (empty under FSDP1).
        threshold: the norm threshold applied (``None`` in value/AGC modes).
        clip_coef: the factor the gradients were multiplied by (1 = untouched; ``None`` in value/AGC modes).
        skipped: whether the step was skipped because the norm was non-finite (gradients set to ``None``).
    """

    total_norm: Tensor
    group_norms: dict[str, Tensor]
    threshold: Tensor | None = None
    clip_coef: Tensor | None = None
    skipped: bool = False


def clip_gradients(
    optimizer: Optimizer | LightningOptimizer,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    *,
    mode: Literal["norm", "value"] = "norm",
    clip_value: float | None = None,
    skip_nonfinite: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    foreach: bool | None = None,
) -> ClipResult:
    """Clip the gradients of ``optimizer`` in place and return the pre-clip norms (for manual optimization).

    Call it in ``training_step`` after ``self.manual_backward(loss)`` and before ``opt.step()``. Under fp16 AMP
    the gradients are still scaled there: pass ``scaler=self.trainer.precision_plugin.scaler`` and the norms
    and thresholds are computed on the unscaled values (the gradients stay scaled, so ``GradScaler`` still
    unscales them once and skips non-finite steps itself). If ``scaler.unscale_(optimizer)`` was already
    called (torch's plain-loop recipe), the scaler's record says so and the gradients are taken as they are:
    never unscaled twice. Norms are global under DDP and FSDP2/DTensor.

    Args:
        optimizer: the optimizer (or Lightning's wrapper from ``self.optimizers()``).
        max_norm: largest allowed global norm (``mode="norm"``, default 1.0), as in
            ``torch.nn.utils.clip_grad_norm_``; passing it with ``mode="value"`` raises (it would be ignored).
        norm_type: the p of the p-norm; ``float("inf")`` for the max norm.
        mode: ``"norm"`` scales all gradients by ``min(max_norm / (norm + 1e-6), 1)``; ``"value"`` clamps each
            element to ``[-clip_value, clip_value]``.
        clip_value: the clamp bound of ``mode="value"`` (default 1.0); passing it with ``mode="norm"`` raises.
        skip_nonfinite: set every gradient to ``None`` when the global norm is inf/nan, so ``opt.step()``
            changes nothing (one host sync). Ignored while the gradients still carry ``scaler``'s scale: the
            ``GradScaler`` skips such steps itself.
        scaler: the ``GradScaler`` in use, if any; its scale is divided out only while the gradients carry it.
        foreach: force (``True``) or forbid (``False``) the batched ``torch._foreach_*`` kernels.

    Returns:
        A ``ClipResult`` with the pre-clip global and per-group norms.

    Raises:
        ValueError: on an unknown ``mode`` or a non-positive ``max_norm``, ``norm_type`` or ``clip_value``.
        TypeError: when ``optimizer`` is not an optimizer (e.g. ``model.parameters()``, torch's
            ``clip_grad_norm_`` convention) or a flag is not a ``bool``.

    Examples:
        >>> layer = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD([{"params": [layer.weight], "name": "w"}, {"params": [layer.bias]}], lr=0.1)
        >>> layer.weight.grad, layer.bias.grad = torch.tensor([[3.0, 0.0]]), torch.tensor([4.0])
        >>> result = clip_gradients(opt, max_norm=1.0)
        >>> round(result.total_norm.item(), 4), sorted(result.group_norms)
        (5.0, ['group1', 'w'])
        >>> [round(v, 4) for v in layer.weight.grad.flatten().tolist() + layer.bias.grad.tolist()]
        [0.6, 0.0, 0.8]
    """
    if not isinstance(optimizer, (Optimizer, LightningOptimizer)):
        raise TypeError(
            f"`clip_gradients` takes the optimizer (it clips every param group and names them in `group_norms`), "
            f"got {type(optimizer).__name__}: {optimizer!r}. Pass the optimizer, e.g. `clip_gradients(opt, 1.0)` "
            "with `opt = self.optimizers()`; for a plain list of parameters use `torch.nn.utils.clip_grad_norm_`."
        )
    check_flag("skip_nonfinite", skip_nonfinite)
    check_flag("foreach", foreach, optional=True)
    check_choice("mode", mode, ("norm", "value"))
    unused = ("clip_value", clip_value) if mode == "norm" else ("max_norm", max_norm)
    if unused[1] is not None:
        bound = "max_norm" if mode == "norm" else "clip_value"
        raise ValueError(
            f"`clip_gradients(mode={mode!r})` does not use `{unused[0]}`, got `{unused[0]}={unused[1]!r}`; it would "
            f"be ignored. Pass the bound of mode {mode!r} as `{bound}={unused[1]!r}`."
        )
    max_norm = check_positive("max_norm", 1.0 if max_norm is None else max_norm)
    norm_type = check_norm_type(norm_type)
    clip_value = check_positive("clip_value", 1.0 if clip_value is None else clip_value)
    opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
    CLIPPED_BY_FUNCTION.add(opt)
    grads = optimizer_grads(opt)
    total, per_group = grouped_norms(grads, norm_type, foreach)
    scale = scaler.get_scale() if scaler is not None and still_scaled(scaler, opt) else 1.0
    if scale != 1.0:
        total, per_group = total / scale, per_group / scale
    names = group_names(opt.param_groups)
    group_norms = dict(zip(names, per_group.unbind(), strict=True))
    if skip_nonfinite and scale == 1.0 and not bool(torch.isfinite(total)):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = None
        return ClipResult(total, group_norms, skipped=True)
    flat = [g for gs in grads for g in gs]
    if mode == "value":
        clip_value_(flat, clip_value * scale, foreach)
        return ClipResult(total, group_norms)
    threshold = torch.full((), max_norm, device=total.device)  # a fill kernel, no host-to-device copy
    coef = clip_coef(threshold, total)
    clip_by_coef_(flat, coef, foreach)
    return ClipResult(total, group_norms, threshold, coef)
