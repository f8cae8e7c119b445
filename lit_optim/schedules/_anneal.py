"""Plumbing of the schedules that move between each group's peak and a floor (``Cosine``, ``Linear``, ...).

:class:`AnnealedSchedule` adds the absolute floor ``min_lr_abs`` next to the ratio ``min_lr``;
:class:`DecaySchedule` adds ``decay_end``, a decay that ends before the run does and then holds the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from lit_optim._validation import check_non_negative
from lit_optim.schedules.base import WarmedSchedule, optional_field, steps_of
from lit_optim.schedules.durations import Duration, DurationLike

__all__ = ["AnnealedSchedule", "DecaySchedule"]


@dataclass(frozen=True, kw_only=True)
class AnnealedSchedule(WarmedSchedule):
    r"""A schedule between each group's peak and a floor: :math:`\text{lr} = lo + (h\,\text{lr}_0 - lo)\,c`.

    Subclasses give :meth:`_shape`: the peak :math:`h` (a multiple of the base lr, 1 unless cycles decay) and
    the position :math:`c \in [0, 1]` from the floor (0) to the peak (1). The floor :math:`lo` is
    ``min_lr * lr_0`` (a ratio of each group's own lr) or ``min_lr_abs`` (one absolute lr for every group, as
    timm's ``lr_min`` and torch's ``eta_min``/``base_lr`` are), never both.

    Examples:
        >>> from lit_optim.schedules import Cosine
        >>> Cosine(min_lr_abs=0.01).lr_terms(5, 10)  # halfway: lr = initial_lr * 0.5 + 0.005
        (0.5, 0.005)
    """

    min_lr_abs: float | None = optional_field(None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_lr_abs is not None:
            check_non_negative("min_lr_abs", self.min_lr_abs)
            if self.min_lr != 0:
                raise ValueError(
                    f"Give `min_lr` (a ratio of each group's initial lr) or `min_lr_abs` (an absolute lr for every "
                    f"group), not both; got min_lr={self.min_lr!r}, min_lr_abs={self.min_lr_abs!r}."
                )

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        """``(peak, position)`` of the main schedule at ``step`` of its ``steps``."""
        raise NotImplementedError

    def _main(self, step: int, steps: int, run_steps: int) -> float:
        return self._main_terms(step, steps, run_steps)[0]

    def _main_terms(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        h, c = self._shape(step, steps, run_steps)
        if c == 1.0:
            return h, 0.0
        if self.min_lr_abs is None:
            m = self.min_lr
            return m + (h - m) * c, 0.0
        return h * c, self.min_lr_abs * (1.0 - c)


@dataclass(frozen=True, kw_only=True)
class DecaySchedule(AnnealedSchedule):
    """An :class:`AnnealedSchedule` whose curve may end at ``decay_end`` (a run position) and then hold.

    ``decay_end`` counts from the run's first step, warmup included (nanoGPT's ``lr_decay_iters``); the
    curve runs from the end of the warmup to it, then holds its final value until the run ends. ``None``
    (the default) ends it with the run; a ``decay_end`` past the run's end (in steps or epochs) is kept as
    given: the run then stops before the curve ends.
    """

    _durations = ("decay_end",)
    decay_end: DurationLike | None = optional_field(None)  # noqa: RUF009 (a field spec, not a value)

    def needs_total_steps(self) -> bool:
        """Whether the run's total is needed: without ``decay_end`` or with durations in ``%`` of the run."""
        if self.decay_end is None:
            return True
        return any(d.unit == "fraction" for d in self._all_durations())

    def _span(self, step: int, warmup_steps: int, total_steps: int) -> tuple[int, int]:
        if self.decay_end is None:
            return super()._span(step, warmup_steps, total_steps)
        end = steps_of(cast(Duration, self.decay_end), total_steps)
        return step - warmup_steps, end - warmup_steps

    def _check_fits(self, total_steps: int) -> None:
        if self.decay_end is None:
            return
        end, warmup = int(cast(Duration, self.decay_end).value), self._warmup_steps()
        if end <= warmup:
            raise ValueError(
                f"{type(self).__name__}: `decay_end` ({end} steps into the run) must come after the warmup "
                f"({warmup} steps). Move `decay_end` later or shorten the warmup."
            )
