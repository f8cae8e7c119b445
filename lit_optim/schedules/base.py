"""The schedule base classes and :class:`Warmup`, which composes with every warmed schedule.

Kept apart from the catalogue in :mod:`lit_optim.schedules` (which re-exports the public names).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, cast

from lit_optim._validation import check_choice, check_non_negative, unknown_key_error
from lit_optim.schedules.durations import Duration, DurationLike, TrainingLength, parse_duration

__all__ = [
    "Schedule",
    "WarmedSchedule",
    "Warmup",
    "WarmupShape",
    "as_warmup",
    "optional_field",
    "shown_fields",
    "spec_repr",
    "steps_of",
]

WarmupShape = Literal["linear", "cosine", "exponential", "1-sqrt", "constant"]
_SHAPES = ["1-sqrt", "constant", "cosine", "exponential", "linear"]
_S = TypeVar("_S", bound="Schedule")


def optional_field(default: Any) -> Any:
    """A spec field left out of the ``repr`` while at its ``default``.

    Options added after a spec's first release use it, so the ``repr`` of a spec that does not use them (the
    schedule's identity in a ``ScheduleLR`` checkpoint) stays what it was.
    """
    return dataclasses.field(default=default, metadata={"repr_default": False})


def shown_fields(spec: Any) -> list[dataclasses.Field[Any]]:
    """The init fields of a spec (or warmup) that its ``repr`` and plain config show: all but unused options."""
    return [
        f
        for f in dataclasses.fields(spec)
        if f.init and not (f.metadata.get("repr_default") is False and getattr(spec, f.name) == f.default)
    ]


def spec_repr(spec: Any) -> str:
    """``Class(field=value, ...)`` as a dataclass writes it, without :func:`optional_field` fields at their default."""
    shown = ", ".join(f"{f.name}={getattr(spec, f.name)!r}" for f in shown_fields(spec) if f.repr)
    return f"{type(spec).__qualname__}({shown})"


def steps_of(duration: Duration, total_steps: int) -> int:
    """Steps of a duration already in steps or a fraction (what ``factor`` can resolve without epochs).

    A fraction resolves exactly as :meth:`Duration.to_steps` does (rounded up), so ``factor`` on an unresolved
    spec equals ``factor`` on the spec resolved for the same run.
    """
    if duration.unit == "step":
        return int(duration.value)
    if duration.unit == "fraction":
        return duration.to_steps(TrainingLength(total_steps=total_steps))
    raise ValueError(
        f"{duration} is in epochs: resolve the schedule first with `schedule.resolve(TrainingLength(...))`, "
        "or let `ScheduleLR` do it by passing `steps_per_epoch`."
    )


@dataclass(frozen=True, kw_only=True)
class Warmup:
    r"""A warmup from ``start_factor`` (or the absolute ``start_lr``) up to the base lr over ``duration``.

    With :math:`W` warmup steps, :math:`x = s / W` for :math:`s < W` and start factor :math:`a`:

    .. math::
        f_\text{linear} = a + (1 - a)\,x, \quad
        f_\text{cosine} = a + (1 - a)\,\frac{1 - \cos(\pi x)}{2}, \quad
        f_\text{1-sqrt} = a + (1 - a)\,(1 - \sqrt{1 - x}), \quad
        f_\text{constant} = a, \quad
        f_\text{exponential} = a^{1 - x}.

    ``"constant"`` holds ``start_factor`` for the whole warmup (torch's ``ConstantLR``). With ``start_lr``
    :math:`b` instead of a factor, each group's lr starts at the same absolute :math:`b` (timm's
    ``warmup_lr_init``): :math:`\text{lr} = b + (\text{lr}_0 - b)\,g(x)`, :math:`g` being the shape above
    with :math:`a = 0`.

    The schedule it is attached to then starts at step :math:`W`, counting its own steps from 0 over the
    remaining :math:`T - W` steps.

    Args:
        duration: warmup length (``int`` steps, ``"2ep"``, ``"5%"``, ...); must resolve to at least one step
            and to fewer steps than the run.
        shape: ``"linear"``, ``"cosine"``, ``"1-sqrt"``, ``"constant"`` or ``"exponential"``.
        start_factor: multiplier of the base lr at step 0, in ``[0, 1)``; > 0 for ``"exponential"``.
        start_lr: an absolute lr to start from, the same for every group, instead of ``start_factor``
            (not with ``"exponential"``, whose ratio would differ per group).

    Examples:
        >>> w = Warmup(duration=4, start_factor=0.2)
        >>> [round(w.factor(s, 4), 3) for s in range(4)]
        [0.2, 0.4, 0.6, 0.8]
        >>> Warmup(duration=4, start_lr=0.01).lr_terms(1, 4)  # lr = initial_lr * 0.25 + 0.0075
        (0.25, 0.0075)
    """

    duration: DurationLike
    shape: WarmupShape = "linear"
    start_factor: float = 0.0
    start_lr: float | None = optional_field(None)

    __repr__ = spec_repr

    def __post_init__(self) -> None:
        object.__setattr__(self, "duration", parse_duration(self.duration, "warmup"))
        check_choice("shape", self.shape, _SHAPES)
        a = self.start_factor
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < 1:
            raise ValueError(f"`start_factor` must be in [0, 1), got {a!r}.")
        if self.start_lr is not None:
            check_non_negative("start_lr", self.start_lr)
            if a != 0:
                raise ValueError(
                    f"Give `start_factor` (a ratio of each group's lr) or `start_lr` (an absolute lr), not both; "
                    f"got start_factor={a!r}, start_lr={self.start_lr!r}."
                )
            if self.shape == "exponential":
                raise ValueError(
                    "An exponential warmup cannot start from an absolute `start_lr` (its ratio to each group's lr "
                    "would differ per group); use `start_factor` or another shape."
                )
        elif self.shape == "exponential" and a == 0:
            raise ValueError("An exponential warmup needs `start_factor` > 0 (it multiplies), got 0.0.")

    def factor(self, step: int, warmup_steps: int) -> float:
        """Multiplier of the base lr at ``step`` (``0 <= step < warmup_steps``).

        Raises:
            ValueError: the warmup starts from an absolute ``start_lr`` (its lr is not a multiple of the base
                lr: use :meth:`lr_terms`).
        """
        if self.start_lr is not None:
            raise ValueError(
                f"{self!r} starts from an absolute lr: its lr is `initial_lr * factor + offset`, see `lr_terms`."
            )
        return self.lr_terms(step, warmup_steps)[0]

    def lr_terms(self, step: int, warmup_steps: int) -> tuple[float, float]:
        """``(factor, offset)`` at ``step``: each group's lr is ``initial_lr * factor + offset``."""
        x = step / warmup_steps
        if self.shape == "exponential":
            return float(self.start_factor ** (1.0 - x)), 0.0
        if self.shape == "linear":
            g = x
        elif self.shape == "cosine":
            g = (1.0 - math.cos(math.pi * x)) / 2.0
        elif self.shape == "1-sqrt":
            g = 1.0 - math.sqrt(1.0 - x)
        else:  # constant
            g = 0.0
        if self.start_lr is not None:
            return g, self.start_lr * (1.0 - g)
        a = self.start_factor
        return a + (1.0 - a) * g, 0.0


def as_warmup(value: Warmup | DurationLike | Mapping[str, Any] | None) -> Warmup | None:
    """A :class:`Warmup` from a warmup, a duration (linear from 0), a mapping of its arguments, or ``None``.

    Examples:
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

    Examples:
        >>> from lit_optim.schedules import Step
        >>> Step(every="1ep", gamma=0.5).resolve(TrainingLength(total_steps=100, steps_per_epoch=30))
        Step(warmup=None, min_lr=0.0, every=Duration('30steps'), gamma=0.5)
    """

    _durations: ClassVar[tuple[str, ...]] = ()
    _needs_total: ClassVar[bool] = True  # whether the formula itself depends on the run's total

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__repr__ = spec_repr  # type: ignore[method-assign]  # set before @dataclass, which keeps it

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

    def lr_terms(self, step: int, total_steps: int) -> tuple[float, float]:
        """``(factor, offset)``: each group's lr is ``initial_lr * factor + offset`` after ``step`` steps.

        ``offset`` is an absolute lr, the same for every group: non-zero only where an absolute floor
        (``min_lr_abs``) or warmup start (``Warmup(start_lr=...)``) is in play. :class:`ScheduleLR` and the
        preview use this; :meth:`factor` alone is the whole story when ``offset`` is 0.
        """
        return self.factor(step, total_steps), 0.0

    def needs_total_steps(self) -> bool:
        """Whether the schedule depends on the run's total length, by its formula or a duration in ``%`` of the run.

        One that does not (e.g. ``InverseSqrt(warmup=500)``) can drive a run of unknown length (an iterable
        dataset or ``max_epochs=-1`` without ``max_steps``).

        Examples:
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
                "above the base lr is not a floor. For an absolute floor of x, pass `min_lr_abs=x` (Linear, Cosine, "
                "Polynomial, CosineRestarts, WarmupStableDecay, Cyclic) or `min_lr=x / base_lr`."
            )

    def factor(self, step: int, total_steps: int) -> float:
        """Multiplier of each group's initial lr after ``step`` optimizer steps of a ``total_steps`` run."""
        return self.lr_terms(step, total_steps)[0]

    def lr_terms(self, step: int, total_steps: int) -> tuple[float, float]:
        """``(factor, offset)``: each group's lr is ``initial_lr * factor + offset`` after ``step`` steps."""
        if step > total_steps:
            step = total_steps  # past the end of the run: hold the final value
        warmup = cast("Warmup | None", self.warmup)
        w = 0 if warmup is None else steps_of(cast(Duration, warmup.duration), total_steps)
        if step < w:
            return cast(Warmup, warmup).lr_terms(step, w)
        return self._main_terms(*self._span(step, w, total_steps), total_steps)

    def _span(self, step: int, warmup_steps: int, total_steps: int) -> tuple[int, int]:
        """``(step, steps)`` as the main schedule counts them: after the warmup, over the steps left."""
        return step - warmup_steps, total_steps - warmup_steps

    def _main_terms(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        """``(factor, offset)`` of the main schedule (no absolute part unless a subclass has one)."""
        return self._main(step, steps, run_steps), 0.0

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
