r"""``WarmupStableDecay``: warmup, a long stable phase at the base lr, then a short final decay (WSD)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

from lit_optim._validation import check_choice
from lit_optim.schedules.base import WarmedSchedule, steps_of
from lit_optim.schedules.durations import Duration, DurationLike

__all__ = ["DecayShape", "WarmupStableDecay"]

DecayShape = Literal["linear", "cosine", "1-sqrt"]


@dataclass(frozen=True, kw_only=True)
class WarmupStableDecay(WarmedSchedule):
    r"""Warmup, then the base lr, then a final decay to the floor over the last ``decay`` steps (WSD).

    With :math:`D` decay steps and :math:`q = (s - (T - D)) / D` for :math:`s \ge T - D` (else :math:`f = 1`):

    .. math::
        f_\text{linear} = m + (1 - m)(1 - q), \quad
        f_\text{cosine} = m + (1 - m)\frac{1 + \cos(\pi q)}{2}, \quad
        f_\text{1-sqrt} = m + (1 - m)(1 - \sqrt{q})

    Args:
        decay: length :math:`D` of the final decay (a duration), default ``"20%"`` of the run.
        decay_shape: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.
        warmup: a :class:`Warmup` or its duration.
        min_lr: the final lr, as a ratio of each group's initial lr.

    Raises:
        ValueError: warmup and decay together longer than the run (when resolved).

    Example:
        >>> s = WarmupStableDecay(warmup=2, decay=4, decay_shape="1-sqrt")
        >>> [round(s.factor(i, 10), 4) for i in range(11)]
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.2929, 0.134, 0.0]
    """

    _durations = ("decay",)
    decay: DurationLike = "20%"
    decay_shape: DecayShape = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("decay_shape", self.decay_shape, ["1-sqrt", "cosine", "linear"])

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        length = steps_of(cast(Duration, self.decay), run_steps)
        start = steps - length
        if step < start:
            return 1.0
        q = (step - start) / length if step < steps else 1.0
        m = self.min_lr
        if self.decay_shape == "linear":
            return m + (1.0 - m) * (1.0 - q)
        if self.decay_shape == "cosine":
            return m + (1.0 - m) * (1.0 + math.cos(math.pi * q)) / 2.0
        return m + (1.0 - m) * (1.0 - math.sqrt(q))

    def _check_fits(self, total_steps: int) -> None:
        warmup, decay = self._warmup_steps(), int(cast(Duration, self.decay).value)
        if warmup + decay > total_steps:
            raise ValueError(
                f"WarmupStableDecay: warmup ({warmup} steps) and decay ({decay} steps) together are longer than "
                f"the run of {total_steps} optimizer steps. Shorten them or lengthen the run."
            )
