"""Gradient norm maths shared by ``GradientClipping`` and ``clip_gradients`` (private).

Everything here works on tensors and stays on the device: no ``.item()``, no host sync. Norms are batched
with ``torch._foreach_norm`` per (device, dtype) bucket, as ``torch.nn.utils.get_total_norm`` does, so the
per-group norms come from the same per-tensor norms as the global one.

DTensor gradients (FSDP2, tensor parallel) are handled on their local shards: for each group the local
``sum |g|^p`` (or ``max |g|`` for ``p = inf``) is all-reduced over the mesh dimensions the tensor is sharded
on, then combined with the replicated/plain tensors, so the result is the norm of the full gradients and is
identical on every rank. That costs one all-reduce per (mesh, sharding) kind, not one per group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

__all__ = [
    "agc_",
    "clip_by_coef_",
    "clip_coef",
    "clip_value_",
    "grouped_norms",
    "has_dtensor",
    "local_tensor",
]

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)


def local_tensor(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def has_dtensor(tensors: Sequence[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor."""
    return any(isinstance(t, DTensor) for t in tensors)


def _buckets(tensors: Sequence[Tensor | None]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        if t is not None:
            buckets.setdefault((t.device, t.dtype), []).append(i)
    return buckets


def _per_tensor_norms(tensors: Sequence[Tensor], norm_type: float, foreach: bool | None) -> list[Tensor]:
    """Norm of each tensor, in input order, batched per (device, dtype)."""
    norms: list[Tensor | None] = [None] * len(tensors)
    for i, t in enumerate(tensors):
        if t.numel() == 0:  # an empty shard (uneven FSDP2 sharding): inf-norm has no identity, use 0
            norms[i] = torch.zeros((), dtype=t.dtype, device=t.device)
    nonempty = [t if norms[i] is None else None for i, t in enumerate(tensors)]
    for (device, _), idx in _buckets(nonempty).items():
        bucket = [tensors[i] for i in idx]
        use_foreach = foreach if foreach is not None else device.type in ("cpu", "cuda")
        results: Sequence[Tensor] = (
            torch._foreach_norm(bucket, norm_type)
            if use_foreach
            else [torch.linalg.vector_norm(t, norm_type) for t in bucket]
        )
        for i, n in zip(idx, results, strict=True):
            norms[i] = n
    return [n for n in norms if n is not None]


def _order_like_torch(tensors: Sequence[Tensor]) -> list[int]:
    """The order in which ``torch.nn.utils.get_total_norm`` stacks the per-tensor norms."""
    return [i for idx in _buckets(tensors).values() for i in idx]


@torch.no_grad()
def grouped_norms(
    groups: Sequence[Sequence[Tensor]], norm_type: float = 2.0, foreach: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Return ``(total_norm, group_norms)`` of gradients split into groups.

    ``total_norm`` is a 0-d tensor equal to ``torch.nn.utils.get_total_norm`` of all tensors (bit-identical for
    plain tensors); ``group_norms`` has one entry per group (0 for an empty group). DTensors are reduced
    across their mesh so both are global.

    Example:
        >>> total, per_group = grouped_norms([[torch.tensor([3.0])], [torch.tensor([4.0])]])
        >>> total.item(), per_group.tolist()
        (5.0, [3.0, 4.0])
    """
    flat = [t for g in groups for t in g]
    sizes = [len(g) for g in groups]
    if not flat:
        zero = torch.tensor(0.0)
        return zero, torch.zeros(len(groups))
    if has_dtensor(flat):
        return _grouped_norms_distributed(groups, norm_type, foreach)
    first_device = flat[0].device
    norms = [n.to(first_device) for n in _per_tensor_norms(flat, norm_type, foreach)]
    order = _order_like_torch(flat)
    total = torch.linalg.vector_norm(torch.stack([norms[i] for i in order]), norm_type)
    stacked = torch.stack(norms)
    group_norms: list[Tensor] = []
    start = 0
    for size in sizes:
        if size == 0:
            group_norms.append(torch.zeros((), dtype=stacked.dtype, device=first_device))
        else:
            group_norms.append(torch.linalg.vector_norm(stacked[start : start + size], norm_type))
        start += size
    return total, torch.stack(group_norms)


def _reduce_groups(tensor: Tensor) -> tuple[dist.ProcessGroup, ...]:
    """The process groups over which a tensor's shards must be summed (empty for a replicated tensor)."""
    if not isinstance(tensor, DTensor):
        return ()
    mesh = tensor.device_mesh
    return tuple(mesh.get_group(dim) for dim, placement in enumerate(tensor.placements) if placement.is_shard())


def _grouped_norms_distributed(
    groups: Sequence[Sequence[Tensor]], norm_type: float, foreach: bool | None
) -> tuple[Tensor, Tensor]:
    is_inf = math.isinf(norm_type)
    flat = [t for g in groups for t in g]
    owner = [gi for gi, g in enumerate(groups) for _ in g]
    locals_ = [local_tensor(t) for t in flat]
    device = locals_[0].device
    norms = [n.to(device=device, dtype=torch.float32) for n in _per_tensor_norms(locals_, norm_type, foreach)]
    # one partial vector per kind of sharding, reduced once
    kinds: dict[tuple[dist.ProcessGroup, ...], list[int]] = {}
    for i, t in enumerate(flat):
        kinds.setdefault(_reduce_groups(t), []).append(i)
    combined = torch.zeros(len(groups), dtype=torch.float32, device=device)
    for pgs, idx in kinds.items():
        values = torch.stack([norms[i] for i in idx])
        index = torch.tensor([owner[i] for i in idx], device=device)
        partial = torch.zeros(len(groups), dtype=torch.float32, device=device)
        if is_inf:
            partial = partial.scatter_reduce(0, index, values, reduce="amax")
        else:
            partial = partial.index_add(0, index, values.pow(norm_type))
        for pg in pgs:
            dist.all_reduce(partial, op=dist.ReduceOp.MAX if is_inf else dist.ReduceOp.SUM, group=pg)
        combined = torch.maximum(combined, partial) if is_inf else combined + partial
    if is_inf:
        return combined.max(), combined
    return combined.sum().pow(1.0 / norm_type), combined.pow(1.0 / norm_type)


def clip_coef(threshold: Tensor | float, total_norm: Tensor) -> Tensor:
    """``min(threshold / (total_norm + 1e-6), 1)``, the factor ``torch.nn.utils.clip_grad_norm_`` applies.

    Example:
        >>> clip_coef(1.0, torch.tensor(4.0)).item() == torch.tensor(1.0 / (4.0 + 1e-6)).item()
        True
    """
    return torch.clamp(threshold / (total_norm + _EPS), max=1.0)


@torch.no_grad()
def clip_by_coef_(tensors: Sequence[Tensor], coef: Tensor, foreach: bool | None = None) -> None:
    """Multiply every tensor (local shards of DTensors) in place by ``coef``."""
    locals_ = [local_tensor(t) for t in tensors]
    for (device, _), idx in _buckets(locals_).items():
        bucket = [locals_[i] for i in idx]
        use_foreach = foreach if foreach is not None else device.type in ("cpu", "cuda")
        scale = coef.to(device)
        if use_foreach:
            torch._foreach_mul_(bucket, scale)
        else:
            for t in bucket:
                t.mul_(scale)


@torch.no_grad()
def clip_value_(tensors: Sequence[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every element to ``[-clip_value, clip_value]`` in place (``torch.nn.utils.clip_grad_value_``)."""
    locals_ = [local_tensor(t) for t in tensors]
    for (device, _), idx in _buckets(locals_).items():
        bucket = [locals_[i] for i in idx]
        use_foreach = foreach if foreach is not None else device.type in ("cpu", "cuda")
        if use_foreach:
            torch._foreach_clamp_min_(bucket, -clip_value)
            torch._foreach_clamp_max_(bucket, clip_value)
        else:
            for t in bucket:
                t.clamp_(-clip_value, clip_value)


def _unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit (dim 0) for matrices/convolutions; of the whole tensor for vectors and scalars."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def agc_(params: Sequence[Tensor], clipping: float, eps: float = 1e-3) -> Tensor:
    """Adaptive gradient clipping (Brock et al. 2021), unit-wise, in place on ``p.grad``.

    For each unit *i* (a row of a weight, the whole of a bias):
    ``G_i <- G_i * clipping * max(||W_i||, eps) / ||G_i||`` when ``||G_i|| / max(||W_i||, eps) > clipping``.
    Returns the number of clipped units as a 0-d tensor (no host sync).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
        >>> w.grad = torch.tensor([[0.6, 0.8]])  # ||G|| / ||W|| = 1 / 5 > 0.1
        >>> agc_([w], clipping=0.1).item(), w.grad.tolist()
        (1.0, [[0.30000001192092896, 0.4000000059604645]])
    """
    clipped = torch.zeros(())
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            raise ValueError(
                "`mode='agc'` needs whole output units on each rank; DTensor (FSDP2 / tensor parallel) gradients "
                "are not supported. Use `mode='norm'` or a percentile/zscore mode with sharded parameters."
            )
        max_norm = _unitwise_norm(p.detach()).clamp(min=eps) * clipping
        grad_norm = _unitwise_norm(g)
        trigger = grad_norm > max_norm
        g.copy_(torch.where(trigger, g * (max_norm / grad_norm.clamp(min=_EPS)), g))
        clipped = clipped.to(g.device) + trigger.sum()
    return clipped
