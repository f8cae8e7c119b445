"""Callbacks and a logger the whole-run benchmarks share: a timer of the training loop and a logger that drops."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger


class LoopTimer(Callback):
    """Seconds from ``on_train_start`` to ``on_train_end`` (setup and teardown excluded)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start


class NullLogger(Logger):
    """Accepts metrics and drops them, so the timing is the callbacks' own work."""

    @property
    def name(self) -> str:
        return "null"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def warmup_cosine_lambda(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Lightning users' hand-written 10% linear warmup + cosine, as a ``LambdaLR``: the baseline of ``Cosine``."""
    warmup = max(1, total // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rotated_samples(fit: Callable[[str, int], float], kinds: list[str], steps: int, repeats: int) -> dict[str, float]:
    """Median of ``fit(kind, steps)`` per kind over ``repeats`` rounds, the order rotated every round.

    A warm-up fit of each kind runs first (imports, allocator, first-call costs); rotating the order keeps any
    configuration from always running first or right after the same one.
    """
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for kind in kinds:
        fit(kind, 10)
    for rep in range(repeats):
        shift = rep % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            samples[kind].append(fit(kind, steps))
    return {kind: statistics.median(values) for kind, values in samples.items()}
