"""Spike detection fed from the device without a sync per step: values wait in a device buffer.

Each step's values (the loss, the gradient norm: 0-d tensors) are written into one row of a preallocated device
buffer, which costs two small kernels and no host sync. ``flush()`` reads every waiting row in one transfer and
runs the :class:`~lit_optim.monitoring.spikes.SpikeDetector` of each signal over them in order, so the verdicts
are exactly those of feeding the detectors step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_optim.monitoring.spikes import SpikeDetector

__all__ = ["SpikeTracker"]


class SpikeTracker:
    """Detectors for several named signals, fed through a device buffer of ``capacity`` rows.

    Examples:
        >>> tracker = SpikeTracker(["loss"], threshold=3.0, ema_decay=0.9, warmup_steps=2)
        >>> for v in (1.0, 1.1, 0.9, 50.0):
        ...     full = tracker.record([torch.tensor(v)])
        >>> tracker.flush(), tracker.pop_counts()
        ([[False], [False], [False], [True]], {'loss': 1})
    """

    def __init__(
        self, signals: Sequence[str], threshold: float, ema_decay: float, warmup_steps: int, capacity: int = 1024
    ) -> None:
        self.signals = tuple(signals)
        self.detectors = {s: SpikeDetector(threshold, ema_decay, warmup_steps) for s in self.signals}
        self.capacity = capacity
        self._buffer: Tensor | None = None
        self._present: list[tuple[bool, ...]] = []  # host: which signals each waiting row carries
        self.counts = dict.fromkeys(self.signals, 0)  # spikes since the last pop_counts() (flushed rows only)

    def record(self, values: Sequence[Tensor | None]) -> bool:
        """Queue one step's values (``None`` for a signal without a value this step); return whether full."""
        present = tuple(v is not None for v in values)
        if not any(present):
            return len(self._present) >= self.capacity
        first = next(v for v in values if v is not None)
        if self._buffer is None or self._buffer.device != first.device:
            self.flush()
            self._buffer = torch.zeros(self.capacity, len(self.signals), dtype=torch.float32, device=first.device)
        row = [(v if v is not None else first).detach().reshape(()).float() for v in values]
        torch.stack(row, out=self._buffer[len(self._present)])
        self._present.append(present)
        return len(self._present) >= self.capacity

    def flush(self) -> list[list[bool]]:
        """Run the detectors over every waiting row (one host transfer); return each row's flags."""
        if not self._present or self._buffer is None:
            self._present = []
            return []
        rows = self._buffer[: len(self._present)].tolist()
        verdicts = []
        for row, present in zip(rows, self._present, strict=True):
            flags = [p and self.detectors[s].update(v) for s, v, p in zip(self.signals, row, present, strict=True)]
            for s, flag in zip(self.signals, flags, strict=True):
                self.counts[s] += flag
            verdicts.append(flags)
        self._present = []
        return verdicts

    def pop_counts(self) -> dict[str, int]:
        """Spikes per signal since the previous call (flush first to include waiting rows)."""
        counts, self.counts = self.counts, dict.fromkeys(self.signals, 0)
        return counts

    def state_dict(self) -> dict[str, Any]:
        """Each detector's statistics, after flushing the waiting rows (a host transfer: checkpoint time only)."""
        self.flush()
        return {s: d.state_dict() for s, d in self.detectors.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the detectors of the signals in ``state``; waiting rows are dropped."""
        self._present = []
        for s, detector_state in state.items():
            if s in self.detectors:
                self.detectors[s].load_state_dict(detector_state)
