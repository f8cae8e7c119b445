"""Callbacks and a logger the whole-run benchmarks share: a timer of the training loop and a logger that drops."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
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
