r"""``WarmupStableDecay``: warmup, a long stable phase at the base lr, then a short final decay (WSD)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

from lit_optim._validation import check_choice, check_positive
from lit_optim.schedules._anneal import AnnealedSchedule
from lit_optim.schedules.base import optional_field, steps_of
from lit_optim.schedules.durations import Duration, DurationLike

__all__ = ["DecayShape", "WarmupStableDecay"]

DecayShape = Literal["linear", "cosine", "1-sqrt"]


@dataclass(frozen=True, kw_only=True)
class WarmupStableDecay(AnnealedSchedule):
    r"""Warmup, then the base lr, then a decay to the floor over ``decay`` steps (WSD).

    The decay takes the last ``decay`` steps of the run, or, with ``stable`` (Hugging Face's
    ``num_stable_steps``), starts ``stable`` steps after the warmup, after which the floor holds to the end.
    With :math:`D` decay steps starting at :math:`S` and :math:`q = (s - S) / D` for :math:`s \ge S` (else
    :math:`f = 1`), :math:`k` ``cycles`` (cosine only):

    .. math::
        f_\text{linear} = m + (1 - m)(1 - q), \quad
        f_\text{cosine} = m + (1 - m)\frac{1 + \cos(2\pi k q)}{2}, \quad
        f_\text{1-sqrt} = m + (1 - m)(1 - \sqrt{q})

    Args:
        decay: length :math:`D` of the decay (a duration), default ``"20%"`` of the run.
        decay_shape: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.
        stable: length of the stable phase after the warmup (a duration); ``None`` puts the decay at the end.
        cycles: cosine waves :math:`k` in the decay (Hugging Face's ``num_cycles``; 0.5 is the half-cosine).
        warmup: a :class:`Warmup` or its duration (Hugging Face's WSD warms up from ``min_lr_ratio``:
            ``Warmup(duration=..., start_factor=min_lr)``).
        min_lr: the final lr, as a ratio of each group's initial lr.
        min_lr_abs: the final lr as one absolute lr for every group, instead of ``min_lr``.

    Raises:
        ValueError: ``cycles`` with a decay shape other than cosine; (when resolved) warmup, stable phase and
            decay together longer than the run.

    Examples:
        >>> s = WarmupStableDecay(warmup=2, decay=4, decay_shape="1-sqrt")
        >>> [round(s.factor(i, 10), 4) for i in range(11)]
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.2929, 0.134, 0.0]
        >>> [WarmupStableDecay(stable=1, decay=2, min_lr=0.1).factor(i, 6) for i in range(6)]
        [1.0, 1.0, 0.55, 0.1, 0.1, 0.1]
    """

    _durations = ("decay", "stable")
    decay: DurationLike = "20%"
    decay_shape: DecayShape = "linear"
    stable: DurationLike | None = optional_field(None)  # noqa: RUF009 (a field spec, not a value)
    cycles: float = optional_field(0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("decay_shape", self.decay_shape, ["1-sqrt", "cosine", "linear"])
        check_positive("cycles", self.cycles)
        if self.cycles != 0.5 and self.decay_shape != "cosine":
            raise ValueError(
                f"`cycles` shapes a cosine decay; with decay_shape={self.decay_shape!r} it would be ignored. "
                f"Use decay_shape='cosine' or leave `cycles` at 0.5 (got {self.cycles!r})."
            )

    def needs_total_steps(self) -> bool:
        """Whether the run's total is needed: without ``stable``, or with durations in ``%`` of the run."""
        return self.stable is None or any(d.unit == "fraction" for d in self._all_durations())

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        length = steps_of(cast(Duration, self.decay), run_steps)
        stable = cast("Duration | None", self.stable)
        start = steps - length if stable is None else steps_of(stable, run_steps)
        if step < start:
            return 1.0, 1.0
        q = (step - start) / length if step < start + length else 1.0
        if self.decay_shape == "linear":
            return 1.0, 1.0 - q
        if self.decay_shape == "cosine":
            return 1.0, (1.0 + math.cos(math.pi * (2.0 * self.cycles) * q)) / 2.0 if q < 1.0 else 0.0
        return 1.0, 1.0 - math.sqrt(q)

    def _check_fits(self, total_steps: int) -> None:
        warmup, decay = self._warmup_steps(), int(cast(Duration, self.decay).value)
        stable = 0 if self.stable is None else int(cast(Duration, self.stable).value)
        if warmup + stable + decay > total_steps:
            parts = f"warmup ({warmup} steps)" + (f", stable phase ({stable} steps)" if self.stable else "")
            raise ValueError(
                f"WarmupStableDecay: {parts} and decay ({decay} steps) together are longer than the run of "
                f"{total_steps} optimizer steps. Shorten them or lengthen the run."
            )
