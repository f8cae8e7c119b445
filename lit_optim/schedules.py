r"""The schedule catalogue: frozen, keyword-only specs, each a pure ``factor(step, total_steps) -> float``.

The lr of param group *g* after *s* optimizer steps is ``initial_lr[g] * factor(s, total_steps)``. In the
formulas below, for a schedule with a warmup of :math:`W` steps, :math:`s` counts steps after the warmup and
:math:`T` is the number of steps left after it (without warmup: the step and the run's total);
:math:`p = \min(s / T, 1)` is the progress and :math:`m` the ``min_lr`` ratio. Past the end of the run every
schedule holds its final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from lit_optim._validation import unknown_key_error
from lit_optim._warmup import Schedule, WarmedSchedule, Warmup, WarmupShape

__all__ = ["SCHEDULES", "Constant", "Cosine", "Linear", "Schedule", "Warmup", "WarmupShape", "build_schedule"]


@dataclass(frozen=True, kw_only=True)
class Constant(WarmedSchedule):
    r"""The base lr throughout (after the optional warmup).

    .. math::
        f(s) = 1

    Args:
        warmup: a :class:`Warmup` or its duration (linear from 0).
        min_lr: unused by this schedule's decay (kept for a uniform signature).

    Example:
        >>> s = Constant(warmup=Warmup(duration=2, start_factor=0.5))
        >>> [s.factor(i, 5) for i in range(5)]
        [0.5, 0.75, 1.0, 1.0, 1.0]
    """

    def _main(self, step: int, total_steps: int) -> float:
        return 1.0


@dataclass(frozen=True, kw_only=True)
class Linear(WarmedSchedule):
    r"""Linear decay from the base lr to the floor at the end of the run.

    .. math::
        f(s) = m + (1 - m)\,(1 - p)

    Args:
        warmup: a :class:`Warmup` or its duration (linear from 0).
        min_lr: the final lr as a ratio of each group's initial lr, in ``[0, 1]``.

    Example:
        >>> [round(Linear(min_lr=0.2).factor(i, 4), 4) for i in range(5)]
        [1.0, 0.8, 0.6, 0.4, 0.2]
    """

    def _main(self, step: int, total_steps: int) -> float:
        p = step / total_steps if step < total_steps else 1.0
        m = self.min_lr
        return m + (1.0 - m) * (1.0 - p)


@dataclass(frozen=True, kw_only=True)
class Cosine(WarmedSchedule):
    r"""Half-cosine decay from the base lr to the floor at the end of the run.

    .. math::
        f(s) = m + (1 - m)\,\frac{1 + \cos(\pi p)}{2}

    Args:
        warmup: a :class:`Warmup` or its duration (linear from 0), e.g. ``"5%"``.
        min_lr: the final lr as a ratio of each group's initial lr, in ``[0, 1]``.

    Example:
        >>> s = Cosine(warmup=2, min_lr=0.1)
        >>> [round(s.factor(i, 6), 4) for i in range(7)]
        [0.0, 0.5, 1.0, 0.8682, 0.55, 0.2318, 0.1]
    """

    def _main(self, step: int, total_steps: int) -> float:
        p = step / total_steps if step < total_steps else 1.0
        m = self.min_lr
        return m + (1.0 - m) * (1.0 + math.cos(math.pi * p)) / 2.0


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "cosine": Cosine,
    "linear": Linear,
}
"""The catalogue by name, for configs: ``build_schedule(name, **params)``."""


def build_schedule(name: str, **params: Any) -> Schedule:
    """Build the catalogue schedule called ``name`` with ``params`` (for YAML/CLI configs).

    Args:
        name: a key of :data:`SCHEDULES` (``"cosine"``, ``"linear"``, ...).
        **params: the schedule's keyword arguments.

    Raises:
        ValueError: an unknown name or parameter (the message lists the valid ones).

    Example:
        >>> build_schedule("cosine", warmup="5%", min_lr=0.1)
        Cosine(warmup=Warmup(duration=Duration('5%'), shape='linear', start_factor=0.0), min_lr=0.1)
    """
    if not isinstance(name, str) or name not in SCHEDULES:
        raise unknown_key_error("schedule", str(name), SCHEDULES)
    cls = SCHEDULES[name]
    valid = [f.name for f in fields(cls)]
    for key in params:
        if key not in valid:
            raise unknown_key_error(f"parameter of {cls.__name__}", key, valid)
    return cls(**params)
