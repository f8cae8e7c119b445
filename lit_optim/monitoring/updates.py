"""What one optimizer step did to each param group: update, weight and gradient norms, Adam's second moment.

Everything stays on the device (no host sync). DTensor parameters (FSDP2, tensor parallel) are handled through
:func:`lit_optim.clipping.norms.grouped_norms`, which reduces their shards over the mesh, so every value is the
value of the full parameters and is identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_optim.clipping.norms import grouped_norms

__all__ = ["GroupStats", "second_moment_means", "snapshot", "update_stats"]


@dataclass(frozen=True)
class GroupStats:
    r"""Per-group values (1-d tensors, one entry per group) and their global counterparts (0-d tensors).

    ``param_norm`` is :math:`\|w\|` before the step, ``update_norm`` is :math:`\|\Delta w\|`,
    ``update_rms`` is :math:`\|\Delta w\| / \sqrt{n}` and ``update_ratio`` is
    :math:`\|\Delta w\| / \|w\|`, with :math:`n` the number of elements.
    """

    param_norm: Tensor
    update_norm: Tensor
    update_rms: Tensor
    update_ratio: Tensor
    total_param_norm: Tensor
    total_update_norm: Tensor
    total_update_rms: Tensor
    total_update_ratio: Tensor


@torch.no_grad()
def snapshot(groups: Sequence[Sequence[Tensor]]) -> list[list[Tensor]]:
    """A detached copy of every tensor, group by group (DTensors stay DTensors, copying only their shards)."""
    return [[p.detach().clone() for p in group] for group in groups]


@torch.no_grad()
def update_stats(
    groups: Sequence[Sequence[Tensor]], before: Sequence[Sequence[Tensor]], foreach: bool | None = None
) -> GroupStats:
    """Compare parameters after a step with their :func:`snapshot` from before it.

    Examples:
        >>> w = torch.tensor([3.0, 4.0])
        >>> before = snapshot([[w]])
        >>> w.sub_(torch.tensor([0.3, 0.4]))  # an update of norm 0.5 on weights of norm 5
        tensor([2.7000, 3.6000])
        >>> stats = update_stats([[w]], before)
        >>> round(stats.update_ratio.item(), 6), round(stats.total_update_rms.item(), 6)
        (0.1, 0.353553)
    """
    deltas = [
        [p.detach() - b for p, b in zip(group, old, strict=True)] for group, old in zip(groups, before, strict=True)
    ]
    total_param, param = grouped_norms(before, 2.0, foreach)
    total_update, update = grouped_norms(deltas, 2.0, foreach)
    sizes = [sum(p.numel() for p in group) for group in groups]  # DTensor.numel() is the global size
    roots = torch.tensor([math.sqrt(n) for n in sizes], dtype=update.dtype, device=update.device)
    root_total = math.sqrt(sum(sizes))
    return GroupStats(
        param_norm=param,
        update_norm=update,
        update_rms=update / roots,
        update_ratio=update / param,
        total_param_norm=total_param,
        total_update_norm=total_update,
        total_update_rms=total_update / root_total,
        total_update_ratio=total_update / total_param,
    )


@torch.no_grad()
def second_moment_means(
    groups: Sequence[Sequence[Tensor]], state: Mapping[Any, Mapping[str, Any]], key: str = "exp_avg_sq",
    foreach: bool | None = None,
) -> tuple[Tensor, Tensor, list[bool]] | None:
    r"""Mean of :math:`\sqrt{v}` per group and overall, where :math:`v` is ``state[p][key]`` (Adam's ``exp_avg_sq``).

    With AMSGrad (``state[p]["max_" + key]`` present) that running maximum is used: it is what the step divides by.

    Parameters without the state entry (no gradient yet, or another optimizer's half of a hybrid) are left out
    of the mean. Returns ``(total, per_group, present)``, where ``present[i]`` says whether group ``i`` had any
    such parameter, or ``None`` when no group had one (SGD).

    Examples:
        >>> p = torch.zeros(2)
        >>> total, per_group, present = second_moment_means([[p]], {p: {"exp_avg_sq": torch.tensor([4.0, 16.0])}})
        >>> total.item(), per_group.tolist(), present
        (3.0, [3.0], [True])
    """
    roots: list[list[Tensor]] = []
    sizes: list[int] = []
    for group in groups:
        # with amsgrad the step divides by the running maximum of v, so that is the moment that explains it
        found = (state[p].get(f"max_{key}", state[p].get(key)) for p in group if p in state)
        values = [v for v in found if isinstance(v, Tensor)]
        roots.append([v.sqrt() for v in values])
        sizes.append(sum(v.numel() for v in values))
    if not any(sizes):
        return None
    total, per_group = grouped_norms(roots, 1.0, foreach)  # the L1 norm of sqrt(v) is the sum of sqrt(v)
    counts = torch.tensor([max(n, 1) for n in sizes], dtype=per_group.dtype, device=per_group.device)
    return total / sum(sizes), per_group / counts, [n > 0 for n in sizes]
