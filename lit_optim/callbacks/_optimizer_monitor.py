"""Plumbing of ``optimizer_monitor.py``: fit-start checks, and turning device values into one logged row."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor

from lit_optim.callbacks.clipping import GradientClipping

__all__ = ["check_strategy", "group_values", "host_row", "shared_clipper"]


def check_strategy(trainer: pl.Trainer) -> None:
    """Refuse the strategies whose optimizers do not step torch parameters we can compare (FSDP1, DeepSpeed)."""
    for kind, strategy in (("DeepSpeedStrategy", DeepSpeedStrategy), ("FSDPStrategy", FSDPStrategy)):
        if isinstance(trainer.strategy, strategy):
            raise ValueError(
                f"`OptimizerMonitor` cannot measure updates under `{kind}`: it flattens and shards parameters "
                "outside torch's optimizer. Use `ModelParallelStrategy` with `fully_shard` (FSDP2), or DDP."
            )


def shared_clipper(trainer: pl.Trainer, monitor: Any) -> Any:
    """The first callback before ``monitor`` that shares a pre-clip 2-norm (``pre_clip_norm``), or ``None``.

    Raises when a ``GradientClipping`` that cannot share comes before it: the monitor would see clipped gradients.
    """
    callbacks = list(getattr(trainer, "callbacks", []))
    position = next((i for i, c in enumerate(callbacks) if c is monitor), len(callbacks))
    found = None
    for clipper in callbacks[:position]:
        shares = callable(getattr(clipper, "pre_clip_norm", None)) and getattr(clipper, "norm_type", 2.0) == 2.0
        if shares and found is None:
            found = clipper
        elif isinstance(clipper, GradientClipping) and not shares:
            raise ValueError(
                "`GradientClipping` comes before `OptimizerMonitor` in `Trainer(callbacks=[...])`, so the monitor "
                "would see clipped gradients, and this `GradientClipping` cannot share its pre-clip 2-norm "
                f"(`norm_type={clipper.norm_type!r}`). Put `OptimizerMonitor` before `GradientClipping` in the "
                "list."
            )
    return found


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
    """Replace ``#i`` by the name of group ``i`` (from ``group_names(..., reserved=["global"])``)."""
    keys = []
    for key in metrics:
        metric, _, rest = key.partition("/#")
        if rest:
            i = int(rest)
            keys.append(f"{metric}/{names[i] if i < len(names) else f'group{i}'}")
        else:
            keys.append("grad_norm/global" if key == "grad_norm" else key)
    return keys


def host_row(metrics: dict[str, Tensor | float], names: list[str]) -> dict[str, float]:
    """``metrics`` with group indices replaced by group names, every tensor read in one host transfer."""
    keys = _keys(metrics, names)
    tensors = [v for v in metrics.values() if isinstance(v, Tensor)]
    host: list[float] = []
    if tensors:
        device = tensors[0].device
        host = torch.stack([t.detach().to(device=device, dtype=torch.float32) for t in tensors]).tolist()
    values = iter(host)
    return {
        k: float(next(values)) if isinstance(v, Tensor) else float(v)
        for k, v in zip(keys, metrics.values(), strict=True)
    }
