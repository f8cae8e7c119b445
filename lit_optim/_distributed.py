"""Helpers for the Trainer a module runs under, and for decisions that must be identical on every rank."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

__all__ = ["attached_trainer", "is_distributed", "reduce_mean"]


def attached_trainer(module: nn.Module) -> Trainer | None:
    """The Trainer ``module`` is attached to, or ``None`` (a plain module, or a LightningModule outside a fit).

    ``LightningModule.trainer`` raises when there is none; this reads the attribute behind it.
    """
    return module._trainer if isinstance(module, LightningModule) else None


def is_distributed(trainer: Trainer) -> bool:
    """Whether the Trainer runs more than one process."""
    return trainer.world_size > 1


def reduce_mean(trainer: Trainer, value: torch.Tensor) -> torch.Tensor:
    """Average ``value`` over all ranks through the Trainer's strategy (identity on one process)."""
    if not is_distributed(trainer):
        return value
    return trainer.strategy.reduce(value, reduce_op="mean")
