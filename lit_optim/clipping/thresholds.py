"""Adaptive clipping thresholds kept on the device (private).

Both rules take the pre-clip global norm (a 0-d tensor, identical on every rank because it is already the
global norm) and return the threshold for this step without any host sync. A non-finite norm never enters
the statistics.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["PercentileThreshold", "ZScoreThreshold"]


class PercentileThreshold:
    """AutoClip (Seetharaman et al. 2020): the ``percentile``-th percentile of the last ``window`` norms.

    The current norm is recorded first, then the threshold is ``numpy.percentile(history, percentile)``
    (linear interpolation) over the finite norms in the window. The window is a ring buffer on the device;
    non-finite norms are stored as NaN and ignored by ``torch.nanquantile``.

    Examples:
        >>> rule = PercentileThreshold(percentile=50.0, window=3)
        >>> [round(rule.update(torch.tensor(v)).item(), 3) for v in (1.0, 3.0, 2.0, 10.0)]
        [1.0, 2.0, 2.0, 3.0]
    """

    def __init__(self, percentile: float, window: int) -> None:
        self.percentile = percentile
        self.window = window
        self._buffer: Tensor | None = None
        self._pos = 0  # number of norms recorded so far (host int: advances every call, no sync)
        self._pending: list[float] | None = None

    def update(self, norm: Tensor) -> Tensor:
        """Record ``norm`` and return the threshold for this step."""
        if self._buffer is None or self._buffer.device != norm.device:
            values = self._pending if self._pending is not None else [math.nan] * self.window
            old = self._buffer.to(norm.device) if self._buffer is not None else None
            self._buffer = old if old is not None else torch.tensor(values, dtype=torch.float32, device=norm.device)
            self._pending = None
        value = norm.detach().float()
        self._buffer[self._pos % self.window] = torch.where(value.isfinite(), value, torch.nan)
        self._pos += 1
        return torch.nanquantile(self._buffer, self.percentile / 100.0)

    @property
    def history(self) -> list[float]:
        """The finite norms in the window, oldest first (host copy: for inspection and tests)."""
        values = (self._pending or []) if self._buffer is None else self._buffer.tolist()
        n = min(self._pos, self.window)
        start = self._pos % self.window if self._pos >= self.window else 0
        ordered = [values[(start + i) % self.window] for i in range(n)]
        return [v for v in ordered if math.isfinite(v)]

    def state_dict(self) -> dict[str, Any]:
        """The ring buffer (NaN for empty/non-finite slots) and the number of norms recorded."""
        values = self._buffer.tolist() if self._buffer is not None else (self._pending or [math.nan] * self.window)
        return {"buffer": values, "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ring buffer; it moves to the gradients' device at the next update."""
        values = [float(v) for v in state["buffer"]]
        if len(values) != self.window:
            raise ValueError(
                f"Checkpointed percentile window has {len(values)} slots but `window={self.window}`. "
                "Resume with the same `window`."
            )
        self._pending = values
        self._buffer = None
        self._pos = int(state["pos"])


class ZScoreThreshold:
    r"""Spike rule on an EMA of the norm's mean and variance (after ZClip, Kumar et al. 2025).

    Unlike ZClip's default reciprocal rescaling, a spike is clipped to the threshold itself.

    The first ``warmup_steps`` finite norms are not clipped; they set the mean and (population) variance.
    Afterwards, with :math:`\mu, \sigma^2` the current statistics and :math:`g` the norm,

    .. math::
        \tau = \mu + z\,\sigma,\qquad g_c = \min(g, \tau),\qquad
        \mu \leftarrow a\mu + (1-a)\,g_c,\qquad \sigma^2 \leftarrow a\sigma^2 + (1-a)(g_c - \mu)^2

    (the variance update uses the new :math:`\mu`), where :math:`z` is ``z_threshold`` and :math:`a` is
    ``ema_decay``. The returned threshold is :math:`\tau` (``inf`` during warm-up).

    Examples:
        >>> rule = ZScoreThreshold(z_threshold=2.0, ema_decay=0.5, warmup_steps=2)
        >>> [rule.update(torch.tensor(v)).item() for v in (1.0, 3.0, 100.0)]
        [inf, inf, 4.0]
    """

    def __init__(self, z_threshold: float, ema_decay: float, warmup_steps: int) -> None:
        self.z_threshold = z_threshold
        self.ema_decay = ema_decay
        self.warmup_steps = warmup_steps
        self._stats: Tensor | None = None  # [count, mean, var] as float32 on the device
        self._pending: list[float] | None = None

    def update(self, norm: Tensor) -> Tensor:
        """Return the threshold for this step, then fold the (clipped) norm into the statistics."""
        if self._stats is None or self._stats.device != norm.device:
            values = self._pending if self._pending is not None else [0.0, 0.0, 0.0]
            old = self._stats.to(norm.device) if self._stats is not None else None
            self._stats = old if old is not None else torch.tensor(values, dtype=torch.float32, device=norm.device)
            self._pending = None
        count, mean, var = self._stats.unbind()
        g = norm.detach().float()
        finite = g.isfinite()
        warm = count < self.warmup_steps
        threshold = torch.where(warm, torch.inf, mean + self.z_threshold * var.clamp(min=0).sqrt())
        # warm-up: exact running mean / population variance
        n = count + 1
        w_mean = mean + (g - mean) / n
        w_var = var + ((g - mean) * (g - w_mean) - var) / n
        # afterwards: EMA of the clipped norm
        a = self.ema_decay
        g_c = torch.minimum(g, threshold)
        e_mean = a * mean + (1 - a) * g_c
        e_var = a * var + (1 - a) * (g_c - e_mean) ** 2
        new = torch.stack([n, torch.where(warm, w_mean, e_mean), torch.where(warm, w_var, e_var)])
        self._stats = torch.where(finite, new, self._stats)
        return threshold

    @property
    def stats(self) -> tuple[float, float, float]:
        """``(finite norms seen, mean, variance)`` as host floats (for inspection and tests)."""
        values = self._stats.tolist() if self._stats is not None else (self._pending or [0.0, 0.0, 0.0])
        return (values[0], values[1], values[2])

    def state_dict(self) -> dict[str, Any]:
        """The count, mean and variance."""
        count, mean, var = self.stats
        return {"count": count, "mean": mean, "var": var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the statistics; they move to the gradients' device at the next update."""
        self._pending = [float(state["count"]), float(state["mean"]), float(state["var"])]
        self._stats = None
