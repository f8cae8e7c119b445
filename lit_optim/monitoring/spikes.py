"""Spike detection on a scalar training signal (the loss, the gradient norm), kept on the device.

No host sync: the statistics and the verdict are tensors. Whoever acts on a verdict (skips a step, raises)
reads it on the host, and that read is the only synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_optim._validation import check_positive, check_positive_int

__all__ = ["SpikeDetector"]


class SpikeDetector:
    r"""Flag values far above an exponential moving average of the past values.

    The first ``warmup_steps`` finite values are never flagged; they set the exact running mean and population
    variance. Afterwards, with :math:`\mu, \sigma^2` the current statistics, :math:`x` the new value, :math:`z`
    the ``threshold`` and :math:`a` the ``ema_decay``, :math:`x` is a spike when

    .. math::
        x > \mu + z\,\sigma \quad\text{or } x \text{ is not finite,}

    and a value that is not a spike updates the statistics:

    .. math::
        \mu \leftarrow a\mu + (1-a)\,x,\qquad \sigma^2 \leftarrow a\sigma^2 + (1-a)(x - \mu)^2

    (the variance update uses the new :math:`\mu`). Spikes never enter the statistics, so a burst of spikes does
    not widen the band that detects them; a lasting level shift keeps being flagged. A non-finite value is a
    spike even during warm-up.

    Args:
        threshold: :math:`z`, in standard deviations (> 0).
        ema_decay: :math:`a`, in (0, 1).
        warmup_steps: finite values that only initialise the statistics (>= 1).

    Example:
        >>> detector = SpikeDetector(threshold=3.0, ema_decay=0.9, warmup_steps=3)
        >>> [bool(detector.update(torch.tensor(v))) for v in (1.0, 1.2, 0.8, 1.1, 9.0, float("nan"), 1.0)]
        [False, False, False, False, True, True, False]
    """

    def __init__(self, threshold: float, ema_decay: float, warmup_steps: int) -> None:
        self.threshold = check_positive("threshold", threshold)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 < ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in (0, 1), got {ema_decay!r}.")
        self.ema_decay = float(ema_decay)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        self._stats: Tensor | None = None  # [count, mean, var] as float64 on the value's device
        self._pending: list[float] | None = None

    def update(self, value: Tensor) -> Tensor:
        """Return whether ``value`` (a 0-d tensor) is a spike, as a 0-d bool tensor, then fold it in if not."""
        x = value.detach().to(torch.float64)
        if self._stats is None or self._stats.device != x.device:
            values = self._pending if self._pending is not None else [0.0, 0.0, 0.0]
            old = self._stats.to(x.device) if self._stats is not None else None
            self._stats = old if old is not None else torch.tensor(values, dtype=torch.float64, device=x.device)
            self._pending = None
        count, mean, var = self._stats.unbind()
        finite = x.isfinite()
        warm = count < self.warmup_steps
        spike = ~finite | (~warm & (x > mean + self.threshold * var.clamp(min=0).sqrt()))
        # warm-up: exact running mean / population variance (Welford)
        n = count + 1
        w_mean = mean + (x - mean) / n
        w_var = var + ((x - mean) * (x - w_mean) - var) / n
        # afterwards: EMA
        a = self.ema_decay
        e_mean = a * mean + (1 - a) * x
        e_var = a * var + (1 - a) * (x - e_mean) ** 2
        new = torch.stack([n, torch.where(warm, w_mean, e_mean), torch.where(warm, w_var, e_var)])
        self._stats = torch.where(spike, self._stats, new)
        return spike

    @property
    def stats(self) -> tuple[float, float, float]:
        """``(values folded in, mean, variance)`` as host floats (for inspection, tests and checkpoints)."""
        values = self._stats.tolist() if self._stats is not None else (self._pending or [0.0, 0.0, 0.0])
        return (float(values[0]), float(values[1]), float(values[2]))

    def state_dict(self) -> dict[str, Any]:
        """The count, mean and variance as plain floats."""
        count, mean, var = self.stats
        return {"count": count, "mean": mean, "var": var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the statistics; they move to the values' device at the next update."""
        self._pending = [float(state["count"]), float(state["mean"]), float(state["var"])]
        self._stats = None
