"""Helpers for decisions that must be identical on every rank."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer

__all__ = ["is_distributed", "reduce_mean"]


def is_distributed(trainer: Trainer) -> bool:
    """Whether the Trainer runs more than one process."""
    return trainer.world_size > 1


def reduce_mean(trainer: Trainer, value: torch.Tensor) -> torch.Tensor:
    """Average ``value`` over all ranks through the Trainer's strategy (identity on one process)."""
    if not is_distributed(trainer):
        return value
    return trainer.strategy.reduce(value, reduce_op="mean")
