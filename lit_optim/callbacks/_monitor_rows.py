"""How OptimizerMonitor turns device values into one logged row (plumbing of ``optimizer_monitor.py``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_values", "host_row"]


def group_values(
    metric: str, per_group: Tensor, total: Tensor, present: list[bool] | None = None
) -> dict[str, Tensor | float]:
    """``{"metric/#i": value}`` per group (named later by :func:`host_row`) plus ``{"metric/global": total}``."""
    out: dict[str, Tensor | float] = {
        f"{metric}/#{i}": v for i, v in enumerate(per_group.unbind()) if present is None or present[i]
    }
    out[f"{metric}/global"] = total
    return out


def _keys(metrics: dict[str, Tensor | float], names: list[str]) -> list[str]:
    """Replace ``#i`` by the name of group ``i`` (a group called ``global`` becomes ``global-{i}``)."""
    keys = []
    for key in metrics:
        metric, _, rest = key.partition("/#")
        if rest:
            i = int(rest)
            name = names[i] if i < len(names) else f"group{i}"
            keys.append(f"{metric}/{name if name != 'global' else f'global-{i}'}")
        elif key == "grad_norm":
            keys.append("grad_norm/global")
        else:
            keys.append(key)
    return keys



def host_row(metrics: dict[str, Tensor | float], names: list[str]) -> dict[str, float]:
    """``metrics`` with group indices replaced by group names, every tensor read in one host transfer."""
    keys = _keys(metrics, names)
    tensors = [v for v in metrics.values() if isinstance(v, Tensor)]
    host: list[float] = []
    if tensors:
        device = tensors[0].device
        host = torch.stack([t.detach().to(device=device, dtype=torch.float64) for t in tensors]).tolist()
    values = iter(host)
    return {
        k: float(next(values)) if isinstance(v, Tensor) else float(v)
        for k, v in zip(keys, metrics.values(), strict=True)
    }
