"""Spike detection on a scalar training signal (the loss, the gradient norm).

The rule runs on host floats: it costs microseconds, and whoever feeds it decides when values cross from the
device (``OptimizerMonitor`` buffers them on the device and reads them in one transfer on its logging steps).
"""

from __future__ import annotations

import math
from typing import Any

from lit_optim._validation import check_positive, check_positive_int

__all__ = ["SpikeDetector"]


class SpikeDetector:
    r"""Flag values far above an exponential moving average of the past values.

    With :math:`\mu, \sigma^2` the current statistics, :math:`x` the new value, :math:`z` the ``threshold`` and
    :math:`a` the ``ema_decay``, :math:`x` is a spike when

    .. math::
        x > \mu + z\,\sigma \quad\text{(after warm-up)}, \quad\text{or } x \text{ is not finite.}

    A value that is not a spike updates the statistics, with :math:`n` the number of values folded in so far
    (this one included), :math:`\delta = x - \mu` and :math:`w = 1/n` during the first ``warmup_steps`` values
    (the exact running mean and population variance, Welford) and :math:`w = 1 - a` afterwards (an exponentially
    weighted mean and variance, Finch 2009):

    .. math::
        \mu' = \mu + w\,\delta,\qquad \sigma'^2 = (1 - w)\,\sigma^2 + w\,\delta\,(x - \mu').

    Spikes never enter the statistics, so a burst of spikes does not widen the band that detects it (a lasting
    level shift keeps being flagged). Warm-up values are never flagged unless they are not finite.

    Args:
        threshold: :math:`z`, in standard deviations (> 0).
        ema_decay: :math:`a`, in (0, 1).
        warmup_steps: finite values that only initialise the statistics (>= 1).

    Examples:
        >>> detector = SpikeDetector(threshold=3.0, ema_decay=0.9, warmup_steps=3)
        >>> [detector.update(v) for v in (1.0, 1.2, 0.8, 1.1, 9.0, float("nan"), 1.0)]
        [False, False, False, False, True, True, False]
    """

    def __init__(self, threshold: float, ema_decay: float, warmup_steps: int) -> None:
        self.threshold = check_positive("threshold", threshold)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 < ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in (0, 1), got {ema_decay!r}.")
        self.ema_decay = float(ema_decay)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def is_spike(self, value: float) -> bool:
        """Whether ``value`` would be flagged now (the statistics are left alone)."""
        if not math.isfinite(value):
            return True
        return self.count >= self.warmup_steps and value > self.mean + self.threshold * math.sqrt(max(self.var, 0.0))

    def update(self, value: float) -> bool:
        """Return whether ``value`` is a spike; fold it into the statistics when it is not."""
        value = float(value)
        if self.is_spike(value):
            return True
        self.count += 1
        w = 1.0 / self.count if self.count <= self.warmup_steps else 1.0 - self.ema_decay
        delta = value - self.mean
        self.mean += w * delta
        self.var = (1.0 - w) * self.var + w * delta * (value - self.mean)
        return False

    @property
    def stats(self) -> tuple[int, float, float]:
        """``(values folded in, mean, variance)``."""
        return self.count, self.mean, self.var

    def state_dict(self) -> dict[str, Any]:
        """The count, mean and variance as plain Python numbers."""
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the statistics."""
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.var = float(state["var"])
