"""Durations (steps, epochs, fraction of the run) and the training length they resolve against.

A duration is written once, when a schedule spec is built, as an ``int`` (optimizer steps), a ``float`` in
``(0, 1]`` (fraction of the run), a string (``"500steps"``, ``"2ep"``, ``"5%"``) or a :class:`Duration`.
It is parsed at that moment (bad input raises there) and resolved to optimizer steps against a
:class:`TrainingLength` when fitting starts, via :func:`resolve_training_length`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

from lit_optim._validation import check_positive_int, unknown_key_error

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["Duration", "DurationLike", "TrainingLength", "parse_duration", "resolve_training_length"]

Unit = Literal["step", "epoch", "fraction"]

_UNIT_ALIASES: dict[str, Unit] = {
    "steps": "step",
    "step": "step",
    "ep": "epoch",
    "epoch": "epoch",
    "epochs": "epoch",
    "%": "fraction",
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%]*)\s*$")


@dataclass(frozen=True)
class TrainingLength:
    """The length of a run in optimizer steps, the unit every duration resolves to.

    Args:
        total_steps: optimizer steps in the whole run (per rank).
        steps_per_epoch: optimizer steps in one epoch (per rank), or ``None`` when epochs are not known
            (then a duration in epochs cannot be resolved).

    Examples:
        >>> TrainingLength(total_steps=1000, steps_per_epoch=100)
        TrainingLength(total_steps=1000, steps_per_epoch=100)
    """

    total_steps: int
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("total_steps", self.total_steps)
        if self.steps_per_epoch is not None:
            check_positive_int("steps_per_epoch", self.steps_per_epoch)

    @classmethod
    def from_loop(
        cls, *, max_epochs: int, batches_per_epoch: int, accumulate_grad_batches: int = 1, max_steps: int = -1
    ) -> TrainingLength:
        """The length of a Lightning fit loop, counted as :func:`resolve_training_length` does, without a Trainer.

        Args:
            max_epochs: epochs to train; ``-1`` (endless, as in the Trainer) needs ``max_steps``.
            batches_per_epoch: training batches per epoch and rank, after ``limit_train_batches``.
            accumulate_grad_batches: batches per optimizer step.
            max_steps: a cap on the optimizer steps, ``-1`` for none.

        Raises:
            ValueError: a count below 1, or ``max_epochs=-1`` without ``max_steps`` (the total is unknown).

        Examples:
            >>> TrainingLength.from_loop(max_epochs=3, batches_per_epoch=10, accumulate_grad_batches=4)
            TrainingLength(total_steps=9, steps_per_epoch=3)
            >>> TrainingLength.from_loop(max_epochs=-1, batches_per_epoch=10, max_steps=25)
            TrainingLength(total_steps=25, steps_per_epoch=10)
        """
        endless = max_epochs == -1 and not isinstance(max_epochs, bool)
        if endless and max_steps == -1:
            raise ValueError(
                "A run that is endless (`max_epochs=-1`) without `max_steps`: the total is unknown. Pass `max_steps`."
            )
        if not endless:
            if isinstance(max_epochs, int) and not isinstance(max_epochs, bool) and max_epochs < 1:
                raise ValueError(f"`max_epochs` must be an int >= 1 (or -1 with `max_steps`), got {max_epochs!r}.")
            check_positive_int("max_epochs", max_epochs)
        check_positive_int("batches_per_epoch", batches_per_epoch)
        check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
        per_epoch = math.ceil(batches_per_epoch / accumulate_grad_batches)
        total = max_steps if endless else per_epoch * max_epochs
        if max_steps != -1:
            total = min(total, check_positive_int("max_steps", max_steps))
        return cls(total_steps=total, steps_per_epoch=per_epoch)


@dataclass(frozen=True)
class Duration:
    """A length of training: ``value`` optimizer steps, epochs, or a fraction of the run.

    Build one with :func:`parse_duration` (or pass an ``int``/``float``/string wherever a duration is
    accepted). Steps are whole numbers; epochs may be fractional (``"0.5ep"``); a fraction lies in ``(0, 1]``.
    Epochs and fractions that do not land on a whole step **round up** to the next step (as Hugging Face's
    ``warmup_ratio`` does), computed on the decimal written (``"7%"`` of 100 steps is exactly 7, where the float
    product ``100 * 0.07`` would round up to 8), so a non-zero duration never resolves to 0 steps.

    Args:
        value: the amount, > 0.
        unit: ``"step"``, ``"epoch"`` or ``"fraction"``.

    Examples:
        >>> d = Duration(2, "epoch")
        >>> d
        Duration('2ep')
        >>> d.to_steps(TrainingLength(total_steps=1000, steps_per_epoch=30))
        60
        >>> [Duration(0.1, "fraction").to_steps(TrainingLength(total_steps=n)) for n in (25, 30, 5)]
        [3, 3, 1]
        >>> Duration(0.07, "fraction").to_steps(TrainingLength(total_steps=100))
        7
    """

    value: float
    unit: Unit = "step"

    def __post_init__(self) -> None:
        if self.unit not in ("step", "epoch", "fraction"):
            raise unknown_key_error("duration unit", str(self.unit), ["epoch", "fraction", "step"])
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise TypeError(f"A duration's value must be a number, got {value!r}.")
        if not 0 < value < math.inf:
            raise ValueError(f"A duration must be > 0, got {self!r}.")
        if self.unit == "step" and value != int(value):
            raise ValueError(f"A duration in steps must be a whole number, got {value!r} steps.")
        if self.unit == "fraction" and value > 1:
            raise ValueError(f"A duration as a fraction of the run must be in (0, 1], got {value!r}.")

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    def __str__(self) -> str:
        if self.unit == "step":
            return f"{int(self.value)}steps"
        if self.unit == "epoch":
            return f"{self.value:g}ep"
        return f"{self.value * 100:g}%"

    def to_steps(self, length: TrainingLength) -> int:
        """Resolve to a number of optimizer steps in the run described by ``length``.

        Raises:
            ValueError: a duration in epochs when ``length.steps_per_epoch`` is unknown, or a duration
                that resolves to 0 steps.
        """
        if self.unit == "step":
            steps = int(self.value)
        elif self.unit == "fraction":
            steps = _ceil_product(self.value, length.total_steps)
        else:
            if length.steps_per_epoch is None:
                raise ValueError(
                    f"Cannot resolve {self} to optimizer steps: the number of steps per epoch is unknown. "
                    "Give the duration in steps or as a fraction of the run (e.g. '5%'), or pass "
                    "`steps_per_epoch`."
                )
            steps = _ceil_product(self.value, length.steps_per_epoch)
        if steps < 1:
            raise ValueError(
                f"Duration {self} resolves to 0 optimizer steps in a run of {length.total_steps} steps "
                f"({length.steps_per_epoch} per epoch). Use a longer duration."
            )
        return steps


def _ceil_product(value: float, count: int) -> int:
    """``ceil(value * count)`` on the shortest decimal of ``value`` (what the user wrote), free of float error."""
    return math.ceil(Fraction(repr(float(value))) * count)


DurationLike = Duration | int | float | str
"""What every ``duration`` argument accepts: ``Duration``, ``int`` steps, ``float`` fraction, or a string."""


def parse_duration(value: Any, name: str = "duration") -> Duration:
    """Parse ``value`` into a :class:`Duration`; the one place where duration strings are read.

    ``int`` means optimizer steps, ``float`` a fraction of the run in ``(0, 1]``; strings are
    ``"<n>steps"``/``"<n>step"``, ``"<n>ep"``/``"<n>epochs"``, or ``"<n>%"``.

    Args:
        value: the duration to parse.
        name: the argument name used in error messages.

    Raises:
        TypeError: ``value`` is of another type.
        ValueError: an unknown unit, a malformed string, or a value that is not > 0.

    Examples:
        >>> parse_duration("5%"), parse_duration(500), parse_duration("2ep"), parse_duration(0.25)
        (Duration('5%'), Duration('500steps'), Duration('2ep'), Duration('25%'))
    """
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, float, str or Duration, got {value!r}.")
    try:
        if isinstance(value, int):
            return Duration(value, "step")
        if isinstance(value, float):
            return Duration(value, "fraction")
        if isinstance(value, str):
            match = _PATTERN.match(value)
            if match is None:
                raise ValueError("write a positive number and a unit, e.g. '500steps', '2ep', '5%'.")
            number, unit = float(match.group(1)), match.group(2).lower()
            if unit not in _UNIT_ALIASES:
                raise unknown_key_error("duration unit", unit, _UNIT_ALIASES)
            kind = _UNIT_ALIASES[unit]
            return Duration(number / 100 if kind == "fraction" else number, kind)
    except (TypeError, ValueError) as err:
        given = f" {value!r}" if isinstance(value, str) else ""  # echo what the user wrote, e.g. '150%'
        raise type(err)(f"Invalid `{name}`{given}: {err}") from None
    raise TypeError(f"`{name}` must be an int, float, str or Duration, got {value!r} ({type(value).__name__}).")


def resolve_training_length(trainer: pl.Trainer) -> TrainingLength:
    """The run's length in optimizer steps (per rank), as :attr:`Trainer.estimated_stepping_batches` counts it.

    ``steps_per_epoch = ceil(num_training_batches / accumulate_grad_batches)`` (Lightning steps the
    optimizer on the last, partial accumulation window of an epoch), ``num_training_batches`` being per
    rank and after ``limit_train_batches``; ``total_steps = steps_per_epoch * max_epochs``, capped by
    ``max_steps`` when set. Loads the train dataloader if the Trainer has not yet.

    Args:
        trainer: a Trainer attached to a model (inside ``configure_optimizers`` or later).

    Raises:
        ValueError: the total is unknown (an iterable dataset or ``max_epochs=-1`` without ``max_steps``, or a
            Trainer with no model attached yet).

    Only the attributes named above are read, so a Trainer-like description works too (as in the
    example: 10 batches per epoch accumulated by 3 is 4 steps per epoch, the last one over a single batch).

    Examples:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(estimated_stepping_batches=8, num_training_batches=10,
        ...                           accumulate_grad_batches=3, max_steps=-1, max_epochs=2)
        >>> resolve_training_length(trainer)
        TrainingLength(total_steps=8, steps_per_epoch=4)
    """
    total, steps_per_epoch = _length_or_none(trainer)
    if total is None:
        raise _unknown_total_error(trainer)
    return TrainingLength(total_steps=total, steps_per_epoch=steps_per_epoch)


def _length_or_none(trainer: Any) -> tuple[int | None, int | None]:
    """``(total_steps, steps_per_epoch)`` of the run, each ``None`` when unknown."""
    if getattr(trainer, "train_dataloader", None) is None and hasattr(trainer, "fit_loop"):
        # what `estimated_stepping_batches` does, except that it skips it when max_epochs=-1
        trainer.fit_loop.setup_data()
    estimated = trainer.estimated_stepping_batches
    batches = trainer.num_training_batches
    steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if 0 < batches < math.inf else None
    total = int(estimated) if 0 < estimated < math.inf else None
    from lightning.pytorch.callbacks import GradientAccumulationScheduler  # lightning's, not lit_optim's callbacks

    accumulation = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, GradientAccumulationScheduler)]
    if accumulation and steps_per_epoch is not None:
        # It changes `accumulate_grad_batches` per epoch, which `estimated_stepping_batches` does not know.
        max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
        epochs = max_epochs if max_epochs is not None and max_epochs > 0 else None
        if epochs is None and max_steps in (None, -1):
            return None, None
        n_epochs = epochs if epochs is not None else max_steps  # at least one step per epoch: enough epochs
        per_epoch = [math.ceil(batches / accumulation[0].get_accumulate_grad_batches(e)) for e in range(n_epochs)]
        total = sum(per_epoch) if epochs is not None else max_steps
        if max_steps not in (None, -1):
            total = min(total, max_steps)
        steps_per_epoch = per_epoch[0] if len(set(per_epoch)) == 1 else None  # "1ep" has no single length then
    return total, steps_per_epoch


def _unknown_total_error(trainer: Any, detail: str = "") -> ValueError:
    """The error for a run whose total number of optimizer steps is unknown; ``detail`` is appended."""
    if hasattr(trainer, "fit_loop") and getattr(trainer, "lightning_module", None) is None:
        return ValueError(
            "Cannot resolve the schedule: the total number of optimizer steps is unknown: the Trainer has no "
            "model attached yet, so it knows no dataloader. Call this inside `configure_optimizers` (or once "
            "`trainer.fit(model)` has started), or describe the run with `TrainingLength.from_loop(...)`." + detail
        )
    return ValueError(
        "Cannot resolve the schedule: the total number of optimizer steps is unknown "
        f"(max_steps={trainer.max_steps!r}, max_epochs={trainer.max_epochs!r}, "
        f"num_training_batches={trainer.num_training_batches!r}). Set `max_steps` on the Trainer (needed with an "
        "iterable dataset or max_epochs=-1)." + detail
    )
