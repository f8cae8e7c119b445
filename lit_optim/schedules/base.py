"""The schedule base classes and :class:`Warmup`, which composes with every warmed schedule.

Kept apart from the catalogue in :mod:`lit_optim.schedules` (which re-exports the public names).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, cast

from lit_optim._validation import check_choice, unknown_key_error
from lit_optim.schedules.durations import Duration, DurationLike, TrainingLength, parse_duration

__all__ = ["Schedule", "WarmedSchedule", "Warmup", "WarmupShape", "as_warmup", "steps_of"]

WarmupShape = Literal["linear", "cosine", "exponential"]
_S = TypeVar("_S", bound="Schedule")


def steps_of(duration: Duration, total_steps: int) -> int:
    """Steps of a duration already in steps or a fraction (what ``factor`` can resolve without epochs)."""
    if duration.unit == "step":
        return int(duration.value)
    if duration.unit == "fraction":
        return max(1, round(duration.value * total_steps))
    raise ValueError(
        f"{duration} is in epochs: resolve the schedule first with `schedule.resolve(TrainingLength(...))`, "
        "or let `ScheduleLR` do it by passing `steps_per_epoch`."
    )


@dataclass(frozen=True, kw_only=True)
class Warmup:
    r"""A warmup from ``start_factor`` up to the base lr (where every schedule starts) over ``duration``.

    With :math:`W` warmup steps, :math:`s < W` and start factor :math:`a`:

    .. math::
        f_\text{linear}(s) = a + (1 - a)\,\frac{s}{W}, \quad
        f_\text{cosine}(s) = a + (1 - a)\,\frac{1 - \cos(\pi s / W)}{2}, \quad
        f_\text{exponential}(s) = a^{1 - s / W}.

    The schedule it is attached to then starts at step :math:`W`, counting its own steps from 0 over the
    remaining :math:`T - W` steps.

    Args:
        duration: warmup length (``int`` steps, ``"2ep"``, ``"5%"``, ...); must resolve to at least one step
            and to fewer steps than the run.
        shape: ``"linear"``, ``"cosine"`` or ``"exponential"``.
        start_factor: multiplier of the base lr at step 0, in ``[0, 1)``; > 0 for ``"exponential"``.

    Example:
        >>> w = Warmup(duration=4, start_factor=0.2)
        >>> [round(w.factor(s, 4), 3) for s in range(4)]
        [0.2, 0.4, 0.6, 0.8]
    """

    duration: DurationLike
    shape: WarmupShape = "linear"
    start_factor: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "duration", parse_duration(self.duration, "warmup"))
        check_choice("shape", self.shape, ["cosine", "exponential", "linear"])
        a = self.start_factor
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < 1:
            raise ValueError(f"`start_factor` must be in [0, 1), got {a!r}.")
        if self.shape == "exponential" and a == 0:
            raise ValueError("An exponential warmup needs `start_factor` > 0 (it multiplies), got 0.0.")

    def factor(self, step: int, warmup_steps: int) -> float:
        """Multiplier of the base lr at ``step`` (``0 <= step < warmup_steps``)."""
        a = self.start_factor
        x = step / warmup_steps
        if self.shape == "linear":
            return a + (1.0 - a) * x
        if self.shape == "cosine":
            return a + (1.0 - a) * (1.0 - math.cos(math.pi * x)) / 2.0
        return float(a ** (1.0 - x))




def as_warmup(value: Warmup | DurationLike | Mapping[str, Any] | None) -> Warmup | None:
    """A :class:`Warmup` from a warmup, a duration (linear from 0), a mapping of its arguments, or ``None``.

    Example:
        >>> as_warmup({"duration": "5%", "shape": "cosine"})
        Warmup(duration=Duration('5%'), shape='cosine', start_factor=0.0)
    """
    if value is None or isinstance(value, Warmup):
        return value
    if isinstance(value, Mapping):
        valid = [f.name for f in dataclasses.fields(Warmup)]
        for key in value:
            if key not in valid:
                raise unknown_key_error("parameter of Warmup", str(key), valid)
        return Warmup(**value)
    return Warmup(duration=value)

@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Base class of every schedule: a pure map from ``(step, total_steps)`` to a multiplier of the base lr.

    Subclasses are frozen dataclasses; ``_durations`` names their duration fields so :meth:`resolve` can
    turn epochs and fractions into steps once.

    Example:
        >>> from lit_optim.schedules import Step
        >>> Step(every="1ep", gamma=0.5).resolve(TrainingLength(total_steps=100, steps_per_epoch=30))
        Step(warmup=None, min_lr=0.0, every=Duration('30steps'), gamma=0.5)
    """

    _durations: ClassVar[tuple[str, ...]] = ()
    _needs_total: ClassVar[bool] = True  # whether the formula itself depends on the run's total

    def __post_init__(self) -> None:
        for name in self._durations:
            value = getattr(self, name)
            if isinstance(value, tuple):
                parsed: Any = tuple(parse_duration(v, name) for v in value)
            elif value is None:
                continue
            else:
                parsed = parse_duration(value, name)
            object.__setattr__(self, name, parsed)

    def factor(self, step: int, total_steps: int) -> float:
        """Multiplier of each group's initial lr after ``step`` optimizer steps of a ``total_steps`` run."""
        raise NotImplementedError

    def needs_total_steps(self) -> bool:
        """Whether the schedule depends on the run's total length, by its formula or a duration in ``%`` of the run.

        One that does not (e.g. ``InverseSqrt(warmup=500)``) can drive a run of unknown length (an iterable
        dataset or ``max_epochs=-1`` without ``max_steps``).

        Example:
            >>> from lit_optim.schedules import Cosine, InverseSqrt
            >>> Cosine().needs_total_steps(), InverseSqrt(warmup=500).needs_total_steps()
            (True, False)
            >>> InverseSqrt(warmup="5%").needs_total_steps()
            True
        """
        return self._needs_total or any(d.unit == "fraction" for d in self._all_durations())

    def _all_durations(self) -> list[Duration]:
        found: list[Duration] = []
        for name in self._durations:
            value = getattr(self, name)
            if isinstance(value, tuple):
                found.extend(value)
            elif value is not None:
                found.append(value)
        return found

    def momentum(self, step: int, total_steps: int) -> float | None:
        """The momentum (or Adam's beta1) to set at ``step``, or ``None`` when the schedule leaves it alone."""
        return None

    def resolve(self: _S, length: TrainingLength) -> _S:
        """Return a copy whose durations are in optimizer steps for the run ``length``, after checking them.

        Raises:
            ValueError: a duration that cannot be resolved, resolves to 0 steps, or does not fit the run
                (e.g. a warmup as long as the run or longer).
        """
        resolved = dataclasses.replace(self, **self._resolved_fields(length))
        resolved._check_fits(length.total_steps)
        return resolved

    def _resolved_fields(self, length: TrainingLength) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name in self._durations:
            value = getattr(self, name)
            if isinstance(value, tuple):
                changes[name] = tuple(Duration(v.to_steps(length)) for v in value)
            elif value is not None:
                changes[name] = Duration(cast(Duration, value).to_steps(length))
        return changes

    def _check_fits(self, total_steps: int) -> None:
        """Hook: raise when the resolved durations do not fit a run of ``total_steps``."""


@dataclass(frozen=True, kw_only=True)
class WarmedSchedule(Schedule):
    """A schedule with an optional :class:`Warmup` and a floor ``min_lr`` (ratio of each group's initial lr).

    ``warmup`` is a :class:`Warmup`, its duration (a linear warmup from 0), or a mapping of :class:`Warmup`'s
    arguments (how a YAML/CLI config spells it, e.g. ``{"duration": "5%", "shape": "cosine"}``).
    The main schedule :meth:`_main` sees steps counted from the end of the warmup, and the steps left.
    """

    warmup: Warmup | DurationLike | Mapping[str, Any] | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "warmup", as_warmup(self.warmup))
        m = self.min_lr
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
            raise ValueError(
                f"`min_lr` is a ratio of each group's initial lr and must be in [0, 1], got {m!r}: a floor "
                "above the base lr is not a floor. For an absolute floor of x, pass x / base_lr."
            )

    def factor(self, step: int, total_steps: int) -> float:
        """Multiplier of each group's initial lr after ``step`` optimizer steps of a ``total_steps`` run."""
        if step > total_steps:
            step = total_steps  # past the end of the run: hold the final value
        warmup = cast("Warmup | None", self.warmup)
        if warmup is None:
            return self._main(step, total_steps, total_steps)
        w = steps_of(cast(Duration, warmup.duration), total_steps)
        if step < w:
            return warmup.factor(step, w)
        return self._main(step - w, total_steps - w, total_steps)

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        """The schedule after the warmup: ``step`` of its ``steps``; ``run_steps`` resolves fractions."""
        raise NotImplementedError

    def _resolved_fields(self, length: TrainingLength) -> dict[str, Any]:
        changes = super()._resolved_fields(length)
        warmup = cast("Warmup | None", self.warmup)
        if warmup is not None:
            steps = cast(Duration, warmup.duration).to_steps(length)
            if steps >= length.total_steps:
                raise ValueError(
                    f"The warmup ({warmup.duration}) resolves to {steps} steps, not shorter than the run of "
                    f"{length.total_steps} optimizer steps. Shorten the warmup or lengthen the run (`max_steps`)."
                )
            changes["warmup"] = dataclasses.replace(warmup, duration=Duration(steps))
        return changes

    def _all_durations(self) -> list[Duration]:
        warmup = cast("Warmup | None", self.warmup)
        found = super()._all_durations()
        return found if warmup is None else [*found, cast(Duration, warmup.duration)]

    def _warmup_steps(self) -> int:
        """Warmup steps of a resolved schedule (0 without warmup)."""
        warmup = cast("Warmup | None", self.warmup)
        return 0 if warmup is None else int(cast(Duration, warmup.duration).value)
