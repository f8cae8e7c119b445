"""An in-memory Lightning logger: what a callback wrote, and at which step."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)`` in ``logged``."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def series(self, key: str) -> list[float]:
        """The values of every call that logged ``key``, in order."""
        return [metrics[key] for _, metrics in self.logged if key in metrics]
