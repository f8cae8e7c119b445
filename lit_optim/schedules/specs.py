r"""The schedule catalogue: frozen, keyword-only specs, each a pure ``factor(step, total_steps) -> float``.

The lr of param group *g* after *s* optimizer steps is ``initial_lr[g] * factor(s, total_steps)``. In the
formulas below, for a schedule with a warmup of :math:`W` steps, :math:`s` counts steps after the warmup and
:math:`T` is the number of steps left after it (without warmup: the step and the run's total);
:math:`p = \min(s / T, 1)` is the progress and :math:`m` the ``min_lr`` ratio. Past the end of the run every
schedule holds its final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from lit_optim._validation import check_positive, check_ratio
from lit_optim.schedules._anneal import DecaySchedule
from lit_optim.schedules.base import Schedule, WarmedSchedule, Warmup, WarmupShape, optional_field, steps_of
from lit_optim.schedules.durations import Duration, DurationLike

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "InverseSqrt",
    "Linear",
    "MultiStep",
    "Polynomial",
    "Schedule",
    "Step",
    "Warmup",
    "WarmupShape",
]

@dataclass(frozen=True, kw_only=True)
class Constant(WarmedSchedule):
    r"""The base lr throughout (after the optional warmup).

    .. math::
        f(s) = 1

    Args:
        warmup: a :class:`Warmup` or its duration (linear from 0).
        min_lr: unused by this schedule (kept for a uniform signature).

    Examples:
        >>> s = Constant(warmup=Warmup(duration=2, start_factor=0.5))
        >>> [s.factor(i, 5) for i in range(5)]
        [0.5, 0.75, 1.0, 1.0, 1.0]
    """

    _needs_total = False

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        return 1.0


@dataclass(frozen=True, kw_only=True)
class Linear(DecaySchedule):
    r"""Linear decay from the base lr to the floor at the end of the run (or at ``decay_end``, then held).

    .. math::
        f(s) = m + (1 - m)\,(1 - p)

    Args:
        warmup: a :class:`Warmup` or its duration (linear from 0).
        min_lr: the final lr as a ratio of each group's initial lr, in ``[0, 1]``.
        min_lr_abs: the final lr as one absolute lr for every group, instead of ``min_lr``.
        decay_end: where the decay ends, counted from the run's start (a duration); the floor holds after it.

    Examples:
        >>> [round(Linear(min_lr=0.2).factor(i, 4), 4) for i in range(5)]
        [1.0, 0.8, 0.6, 0.4, 0.2]
    """

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        p = step / steps if step < steps else 1.0
        return 1.0, 1.0 - p


@dataclass(frozen=True, kw_only=True)
class Cosine(DecaySchedule):
    r"""Cosine from the base lr to the floor at the end of the run (or at ``decay_end``, then held).

    With :math:`k` ``cycles`` (Hugging Face's ``num_cycles``; the default 0.5 is the half-cosine down to the floor,
    1.0 goes down and back up, 0.25 ends halfway down):

    .. math::
        f(s) = m + (1 - m)\,\frac{1 + \cos(2\pi k p)}{2}

    Args:
        warmup: a :class:`Warmup` or its duration (linear from 0), e.g. ``"5%"``.
        min_lr: the floor as a ratio of each group's initial lr, in ``[0, 1]``.
        min_lr_abs: the floor as one absolute lr for every group, instead of ``min_lr``.
        decay_end: where the curve ends, counted from the run's start (a duration, nanoGPT's
            ``lr_decay_iters``); its final value holds after it.
        cycles: the number of cosine waves :math:`k` over the decay, > 0.

    Examples:
        >>> s = Cosine(warmup=2, min_lr=0.1)
        >>> [round(s.factor(i, 6), 4) for i in range(7)]
        [0.0, 0.5, 1.0, 0.8682, 0.55, 0.2318, 0.1]
        >>> [round(Cosine(cycles=1.0).factor(i, 4), 4) for i in range(5)]
        [1.0, 0.5, 0.0, 0.5, 1.0]
    """

    cycles: float = optional_field(0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("cycles", self.cycles)

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        p = step / steps if step < steps else 1.0
        return 1.0, (1.0 + math.cos(math.pi * (2.0 * self.cycles) * p)) / 2.0


@dataclass(frozen=True, kw_only=True)
class Polynomial(DecaySchedule):
    r"""Polynomial decay from the base lr to the floor at the end of the run (``power=1`` is linear).

    The decay ends with the run, or at ``decay_end`` (a run position) after which the floor holds.

    .. math::
        f(s) = m + (1 - m)\,(1 - p)^{\text{power}}

    Args:
        power: exponent, > 0.
        warmup: a :class:`Warmup` or its duration.
        min_lr: the final lr as a ratio of each group's initial lr.
        min_lr_abs: the final lr as one absolute lr for every group, instead of ``min_lr``.
        decay_end: where the decay ends, counted from the run's start.

    Examples:
        >>> [Polynomial(power=2.0).factor(i, 4) for i in range(5)]
        [1.0, 0.5625, 0.25, 0.0625, 0.0]
    """

    power: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("power", self.power)

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        p = step / steps if step < steps else 1.0
        return 1.0, (1.0 - p) ** self.power


@dataclass(frozen=True, kw_only=True)
class Step(WarmedSchedule):
    r"""Multiply by ``gamma`` every ``every`` steps, never below the floor.

    .. math::
        f(s) = \max\left(m,\ \gamma^{\lfloor s / E \rfloor}\right)

    Args:
        every: the interval :math:`E` (a duration, e.g. ``"1ep"``), counted after the warmup.
        gamma: the factor :math:`\gamma` in ``(0, 1]``.
        warmup: a :class:`Warmup` or its duration.
        min_lr: the floor, as a ratio of each group's initial lr.

    Examples:
        >>> [round(Step(every=2, gamma=0.5).factor(i, 10), 4) for i in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """

    _durations = ("every",)
    _needs_total = False
    every: DurationLike
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio("gamma", self.gamma)

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        return max(self.min_lr, self.gamma ** (step // steps_of(cast(Duration, self.every), run_steps)))


@dataclass(frozen=True, kw_only=True)
class MultiStep(WarmedSchedule):
    r"""Multiply by ``gamma`` at each milestone, never below the floor.

    Milestones are positions in the run, counted from its first step (warmup included); with :math:`n(k)`
    the number of milestones :math:`\le k` at run step :math:`k = W + s`:

    .. math::
        f(s) = \max\left(m,\ \gamma^{n(W + s)}\right)

    Args:
        milestones: durations, e.g. ``("30%", "60%")`` or ``(100, 200)``.
        gamma: the factor :math:`\gamma` in ``(0, 1]``.
        warmup: a :class:`Warmup` or its duration.
        min_lr: the floor, as a ratio of each group's initial lr.

    Examples:
        >>> [MultiStep(milestones=(1, 3), gamma=0.5).factor(i, 10) for i in range(5)]
        [1.0, 0.5, 0.5, 0.25, 0.25]
    """

    _durations = ("milestones",)
    _needs_total = False
    milestones: tuple[DurationLike, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        milestones: object = self.milestones
        if isinstance(milestones, list):
            object.__setattr__(self, "milestones", tuple(milestones))
        if not isinstance(self.milestones, tuple) or not self.milestones:
            raise ValueError(f"`milestones` must be a non-empty tuple of durations, got {self.milestones!r}.")
        super().__post_init__()
        check_ratio("gamma", self.gamma)

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        at = step + run_steps - steps
        n = sum(1 for d in self.milestones if steps_of(cast(Duration, d), run_steps) <= at)
        return max(self.min_lr, self.gamma**n)


@dataclass(frozen=True, kw_only=True)
class Exponential(WarmedSchedule):
    r"""Multiply by ``gamma`` every step, never below the floor.

    .. math::
        f(s) = \max\left(m,\ \gamma^{s}\right)

    Args:
        gamma: the factor :math:`\gamma` in ``(0, 1]``.
        warmup: a :class:`Warmup` or its duration.
        min_lr: the floor, as a ratio of each group's initial lr.

    Examples:
        >>> [Exponential(gamma=0.5, min_lr=0.2).factor(i, 10) for i in range(4)]
        [1.0, 0.5, 0.25, 0.2]
    """

    _needs_total = False
    gamma: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio("gamma", self.gamma)

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        return max(self.min_lr, self.gamma**step)


@dataclass(frozen=True, kw_only=True)
class InverseSqrt(WarmedSchedule):
    r"""Inverse square-root decay (Transformer/T5 style), never below the floor.

    With time scale :math:`\tau` (by default the warmup length :math:`W`, which gives the classic
    :math:`\sqrt{W / k}` at run step :math:`k = W + s`):

    .. math::
        f(s) = \max\left(m,\ \sqrt{\frac{\tau}{s + \tau}}\right)

    Args:
        timescale: :math:`\tau` as a duration; required without a warmup.
        warmup: a :class:`Warmup` or its duration.
        min_lr: the floor, as a ratio of each group's initial lr.

    Raises:
        ValueError: neither ``timescale`` nor ``warmup`` is given.

    Examples:
        >>> [InverseSqrt(warmup=4).factor(i, 100) for i in (0, 4, 16, 64)]
        [0.0, 1.0, 0.5, 0.25]
    """

    _durations = ("timescale",)
    _needs_total = False
    timescale: DurationLike | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timescale is None and self.warmup is None:
            raise ValueError("InverseSqrt needs a `timescale` or a `warmup` (whose length is then the timescale).")

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        timescale = cast("Duration | None", self.timescale)
        tau = run_steps - steps if timescale is None else steps_of(timescale, run_steps)
        return max(self.min_lr, math.sqrt(tau / (step + tau)))
