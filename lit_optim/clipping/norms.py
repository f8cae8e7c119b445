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
from typing import cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = [
    "AGC_DTENSOR_ERROR",
    "agc_",
    "clip_by_coef_",
    "clip_coef",
    "clip_value_",
    "grouped_norms",
    "has_dtensor",
    "local_tensor",
    "plain_scale_",
    "plain_total_norm",
]

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)
AGC_DTENSOR_ERROR = (
    "`mode='agc'` needs whole output units on each rank; DTensor (FSDP2 / tensor parallel) gradients "
    "are not supported. Use `mode='norm'` or a percentile/zscore mode with sharded parameters."
)


def local_tensor(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def has_dtensor(tensors: Sequence[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor."""
    return any(isinstance(t, DTensor) for t in tensors)


def _buckets(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[int]]]:
    """Tensors grouped by (device, dtype) with their input positions, first-seen order (torch's C++ grouping)."""
    grouped = _group_tensors_by_device_and_dtype([list(tensors)], with_indices=True)
    return {key: (cast(list[Tensor], lists[0]), list(idx)) for key, (lists, idx) in grouped.items()}


def _use_foreach(foreach: bool | None, device: torch.device) -> bool:
    return foreach if foreach is not None else device.type in ("cpu", "cuda")


def _per_tensor_norms(
    tensors: Sequence[Tensor], norm_type: float, foreach: bool | None
) -> tuple[Tensor, list[int]]:
    """Norms of the tensors stacked on the first tensor's device, in torch's order, and that order.

    The order is the one ``torch.nn.utils.get_total_norm`` stacks its norms in (by device/dtype bucket), so
    the vector norm of the result is bit-identical to torch's.
    """
    first_device = tensors[0].device
    norms: list[Tensor] = []
    order: list[int] = []
    for (device, _), (bucket, idx) in _buckets(tensors).items():
        if math.isinf(norm_type) and any(t.numel() == 0 for t in bucket):
            # an empty shard (uneven FSDP2 sharding): the inf-norm has no identity on it, its norm is 0
            results = [torch.linalg.vector_norm(t, norm_type) if t.numel() else t.new_zeros(()) for t in bucket]
        elif _use_foreach(foreach, device):
            results = list(torch._foreach_norm(bucket, norm_type))
        else:
            results = [torch.linalg.vector_norm(t, norm_type) for t in bucket]
        norms.extend(results if device == first_device else [n.to(first_device) for n in results])
        order.extend(idx)
    return torch.stack(norms), order


@torch.no_grad()
def grouped_norms(
    groups: Sequence[Sequence[Tensor]], norm_type: float = 2.0, foreach: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Return ``(total_norm, group_norms)`` of gradients split into groups.

    ``total_norm`` is a 0-d tensor equal to ``torch.nn.utils.get_total_norm`` of all tensors (bit-identical for
    plain tensors); ``group_norms`` has one entry per group (0 for an empty group). DTensors are reduced
    across their mesh so both are global.

    Examples:
        >>> total, per_group = grouped_norms([[torch.tensor([3.0])], [torch.tensor([4.0])]])
        >>> total.item(), per_group.tolist()
        (5.0, [3.0, 4.0])
    """
    flat = [t for g in groups for t in g]
    if not flat:
        return torch.tensor(0.0), torch.zeros(len(groups))
    sparse = next((t for t in flat if t.layout != torch.strided), None)  # a host-side attribute: no sync
    if sparse is not None:
        raise TypeError(
            f"Gradient norms need dense gradients, got a {sparse.layout} gradient of shape {tuple(sparse.shape)} "
            "(e.g. from `nn.Embedding(sparse=True)`); `torch.nn.utils.clip_grad_norm_` rejects it too. "
            "Use a dense layer (`sparse=False`) with gradient clipping."
        )
    if has_dtensor(flat):
        return _grouped_norms_distributed(groups, norm_type, foreach)
    stacked, order = _per_tensor_norms(flat, norm_type, foreach)
    total = torch.linalg.vector_norm(stacked, norm_type)
    if order != sorted(order):  # several devices/dtypes: back to input order for the group slices
        stacked = torch.stack(_input_order(stacked, order))
    group_norms: list[Tensor] = []
    start = 0
    for group in groups:
        size = len(group)
        if size == 0:
            group_norms.append(stacked.new_zeros(()))
        else:
            group_norms.append(torch.linalg.vector_norm(stacked[start : start + size], norm_type))
        start += size
    return total, torch.stack(group_norms)


def _input_order(stacked: Tensor, order: list[int]) -> list[Tensor]:
    """Undo the bucket order: ``result[i]`` is the norm of input tensor ``i``."""
    unbound = stacked.unbind()
    result: list[Tensor] = list(unbound)
    for pos, i in enumerate(order):
        result[i] = unbound[pos]
    return result


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
    stacked, order = _per_tensor_norms(locals_, norm_type, foreach)
    norms = _input_order(stacked.to(device=device, dtype=torch.float32), order)
    # one partial vector per kind of sharding (the process groups to reduce over), reduced once
    kinds: dict[tuple[dist.ProcessGroup, ...], list[list[Tensor]]] = {}
    for i, t in enumerate(flat):
        kinds.setdefault(_reduce_groups(t), [[] for _ in groups])[owner[i]].append(norms[i])
    zero = torch.zeros((), dtype=torch.float32, device=device)
    combined = torch.zeros(len(groups), dtype=torch.float32, device=device)  # norms are >= 0: 0 is neutral
    for pgs, members in kinds.items():
        parts = [
            zero if not m else (torch.stack(m).max() if is_inf else torch.stack(m).pow(norm_type).sum())
            for m in members
        ]
        partial = torch.stack(parts)
        for pg in pgs:
            dist.all_reduce(partial, op=dist.ReduceOp.MAX if is_inf else dist.ReduceOp.SUM, group=pg)
        combined = torch.maximum(combined, partial) if is_inf else combined + partial
    if is_inf:
        return combined.max(), combined
    return combined.sum().pow(1.0 / norm_type), combined.pow(1.0 / norm_type)


def clip_coef(threshold: Tensor | float, total_norm: Tensor) -> Tensor:
    """``min(threshold / (total_norm + 1e-6), 1)``, the factor ``torch.nn.utils.clip_grad_norm_`` applies.

    Examples:
        >>> clip_coef(1.0, torch.tensor(4.0)).item() == torch.tensor(1.0 / (4.0 + 1e-6)).item()
        True
    """
    if isinstance(threshold, Tensor):
        return torch.clamp(threshold / (total_norm + _EPS), max=1.0)
    # torch computes `max_norm / (total_norm + 1e-6)` as `reciprocal() * max_norm`: the same kernels, in place
    coef = total_norm + _EPS
    return coef.reciprocal_().mul_(threshold).clamp_(max=1.0)


def plain_total_norm(tensors: list[Tensor], norm_type: float, foreach: bool | None = None) -> Tensor:
    """``torch.nn.utils.get_total_norm`` of plain, non-empty tensors on one device with one dtype (no grouping).

    The caller guarantees the precondition (``GradientClipping`` checks it once per optimizer, from the
    parameters); the result is bit-identical to torch's, which takes the same single-bucket path.
    """
    if _use_foreach(foreach, tensors[0].device):
        norms = list(torch._foreach_norm(tensors, norm_type))
    else:
        norms = [torch.linalg.vector_norm(t, norm_type) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def plain_scale_(tensors: list[Tensor], coef: Tensor, foreach: bool | None = None) -> None:
    """Multiply plain tensors on ``coef``'s device with one dtype in place by ``coef`` (no grouping)."""
    if _use_foreach(foreach, tensors[0].device):
        torch._foreach_mul_(tensors, coef)
    else:
        for t in tensors:
            t.mul_(coef)


@torch.no_grad()
def clip_by_coef_(tensors: Sequence[Tensor], coef: Tensor, foreach: bool | None = None) -> None:
    """Multiply every tensor (local shards of DTensors) in place by ``coef``."""
    locals_ = [local_tensor(t) for t in tensors] if has_dtensor(tensors) else list(tensors)
    if not locals_:
        return
    for (device, _), (bucket, _) in _buckets(locals_).items():
        plain_scale_(bucket, coef.to(device), foreach)


@torch.no_grad()
def clip_value_(tensors: Sequence[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every element to ``[-clip_value, clip_value]`` in place (``torch.nn.utils.clip_grad_value_``)."""
    locals_ = [local_tensor(t) for t in tensors] if has_dtensor(tensors) else list(tensors)
    if not locals_:
        return
    for (device, _), (bucket, _) in _buckets(locals_).items():
        if _use_foreach(foreach, device):
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

    Examples:
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
        >>> w.grad = torch.tensor([[0.6, 0.8]])  # ||G|| / ||W|| = 1 / 5 > 0.1
        >>> agc_([w], clipping=0.1).item(), w.grad.tolist()
        (1, [[0.30000001192092896, 0.4000000059604645]])
    """
    clipped: Tensor | None = None
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            raise ValueError(AGC_DTENSOR_ERROR)
        max_norm = _unitwise_norm(p.detach()).clamp(min=eps) * clipping
        grad_norm = _unitwise_norm(g)
        trigger = grad_norm > max_norm
        g.copy_(torch.where(trigger, g * (max_norm / grad_norm.clamp(min=_EPS)), g))
        clipped = trigger.sum() if clipped is None else clipped + trigger.sum().to(clipped.device)
    return clipped if clipped is not None else torch.zeros((), dtype=torch.long)
