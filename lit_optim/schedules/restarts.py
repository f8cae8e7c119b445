r"""``CosineRestarts``: cosine cycles that restart at the peak (SGDR), with timm's and Hugging Face's options."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from lit_optim._validation import check_bool, check_positive, check_positive_int, check_ratio
from lit_optim.schedules._anneal import AnnealedSchedule
from lit_optim.schedules.base import optional_field, steps_of
from lit_optim.schedules.durations import Duration, DurationLike

__all__ = ["CosineRestarts"]


@dataclass(frozen=True, kw_only=True)
class CosineRestarts(AnnealedSchedule):
    r"""Cosine decay to the floor over cycles that restart at the peak (SGDR).

    Cycle :math:`i` lasts :math:`P_i = P\,k^i` steps (``period``, ``period_mult``; real lengths when :math:`k` is
    not an integer) or, with ``cycles`` :math:`n`, the steps after the warmup are split into :math:`n` equal
    cycles (Hugging Face's hard restarts: cycle boundaries need not fall on whole steps). With :math:`t` steps
    into cycle :math:`i`, peak :math:`h_i = \gamma^i` (``cycle_decay``) and :math:`c = (1 + \cos(\pi t / P_i))/2`:

    .. math::
        f(s) = m + (h_i - m)\,c \quad (i < \text{cycle\_limit}), \qquad f(s) = m \quad \text{after}

    (with ``min_lr_abs`` :math:`a`: :math:`\text{lr} = a + (h_i\,\text{lr}_0 - a)\,c`). With ``cycles``, the
    end of the run is the floor.

    Args:
        period: length :math:`P` of the first cycle (a duration); or give ``cycles``.
        period_mult: factor :math:`k \ge 1` by which each cycle is longer than the previous one (timm's
            ``cycle_mul``; torch's ``T_mult`` as an int).
        cycles: split the steps after the warmup into this many equal cycles, instead of ``period``.
        cycle_decay: :math:`\gamma` in ``(0, 1]``: the peak of cycle :math:`i` is :math:`\gamma^i` times the base lr
            (timm).
        cycle_limit: after this many cycles, hold the floor (timm's ``cycle_limit``); ``None`` cycles forever.
        warmup_prefix: ``True`` starts the cycles after the warmup; ``False`` counts them from the run's first
            step, so the warmup overlaps the first cycle (timm's ``warmup_prefix=False``, its default).
        warmup: a :class:`Warmup` or its duration.
        min_lr: the lr at the end of each cycle, as a ratio of each group's initial lr.
        min_lr_abs: the lr at the end of each cycle as one absolute lr for every group (timm's ``lr_min``).

    Raises:
        ValueError: neither or both of ``period`` and ``cycles``; ``period_mult`` below 1 or with ``cycles``.

    Examples:
        >>> s = CosineRestarts(period=2, period_mult=2)
        >>> [round(s.factor(i, 10), 4) for i in range(7)]
        [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]
        >>> [round(CosineRestarts(cycles=2).factor(i, 5), 4) for i in range(6)]
        [1.0, 0.6545, 0.0955, 0.9045, 0.3455, 0.0]
    """

    _durations = ("period",)
    _needs_total = False
    period: DurationLike | None = None
    period_mult: float = 1
    cycles: int | None = optional_field(None)
    cycle_decay: float = optional_field(1.0)
    cycle_limit: int | None = optional_field(None)
    warmup_prefix: bool = optional_field(True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.period is None) == (self.cycles is None):
            raise ValueError(
                "CosineRestarts needs exactly one of `period` (the first cycle's length, e.g. 1000 or '1ep') and "
                f"`cycles` (the steps after the warmup split evenly), got period={self.period!r}, "
                f"cycles={self.cycles!r}."
            )
        mult = check_positive("period_mult", self.period_mult)
        if mult < 1:
            raise ValueError(f"`period_mult` must be >= 1 (each cycle at least as long), got {self.period_mult!r}.")
        if self.cycles is not None:
            check_positive_int("cycles", self.cycles)
            if mult != 1:
                raise ValueError(f"`cycles` splits the run evenly: `period_mult` must be 1, got {self.period_mult!r}.")
        check_ratio("cycle_decay", self.cycle_decay)  # a peak above the base lr is not a decay
        if self.cycle_limit is not None:
            check_positive_int("cycle_limit", self.cycle_limit)
        check_bool("warmup_prefix", self.warmup_prefix)

    def needs_total_steps(self) -> bool:
        """Whether the run's total is needed: with ``cycles`` or a duration in ``%`` of the run."""
        return self.cycles is not None or super().needs_total_steps()

    def _span(self, step: int, warmup_steps: int, total_steps: int) -> tuple[int, int]:
        if self.warmup_prefix:
            return super()._span(step, warmup_steps, total_steps)
        return step, total_steps  # the cycles count from the run's first step, through the warmup

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        if self.cycles is not None:
            if step >= steps:
                return 1.0, 0.0  # the end of the last cycle: the floor
            i, t = divmod(self.cycles * step, steps)  # exact: cycle boundaries may fall between steps
            x = t / steps
        else:
            length = steps_of(cast(Duration, self.period), run_steps)
            if self.period_mult == 1:
                i, t = divmod(step, length)
                x = t / length
            else:
                limit = math.inf if self.cycle_limit is None else self.cycle_limit
                position, span, i = float(step), float(length), 0
                while position >= span and i < limit:  # cycles grow geometrically: O(log step) rounds
                    position -= span
                    span *= self.period_mult
                    i += 1
                x = position / span
        if self.cycle_limit is not None and i >= self.cycle_limit:
            return 1.0, 0.0
        return self.cycle_decay**i, (1.0 + math.cos(math.pi * x)) / 2.0
