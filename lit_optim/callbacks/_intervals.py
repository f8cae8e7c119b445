"""Decide whether a scheduler is stepped per optimizer step, per epoch, or after validation runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim import Optimizer
from torch.optim import lr_scheduler as tl

from lit_optim.schedules.plateau import PlateauLR
from lit_optim.schedules.scheduler import ScheduleLR

__all__ = ["Claim", "Interval", "infer_interval", "progress_of"]

StepHook = Callable[[Any, Any], None]
"""``LightningModule.lr_scheduler_step(scheduler, metric)``: how every scheduler is stepped."""

Interval = Literal["epoch", "plateau", "step"]

# Schedulers whose arguments are counted in calls to `step()` and imply a length: (class, attribute).
_LENGTH_ARGS: tuple[tuple[type[tl.LRScheduler], str], ...] = (
    (tl.StepLR, "step_size"),
    (tl.MultiStepLR, "milestones"),
    (tl.CosineAnnealingLR, "T_max"),
    (tl.CosineAnnealingWarmRestarts, "T_0"),
    (tl.LinearLR, "total_iters"),
    (tl.ConstantLR, "total_iters"),
    (tl.PolynomialLR, "total_iters"),
)


# Of those, the ones whose argument is a period (it repeats), not the length of the whole schedule: a period longer
# than `max_epochs` may be meant in epochs for a longer run, so choosing "step" for it deserves a warning.
_PERIODIC = (tl.StepLR, tl.CosineAnnealingWarmRestarts)


def _parts(scheduler: object) -> list[object]:
    """The schedulers inside a ``SequentialLR``/``ChainedScheduler`` (empty for any other scheduler)."""
    if isinstance(scheduler, (tl.SequentialLR, tl.ChainedScheduler)):
        return list(scheduler._schedulers)
    return []


def _per_step(scheduler: object) -> bool:
    """A scheduler that is per-step by construction, or a composite holding one."""
    if isinstance(scheduler, (ScheduleLR, PlateauLR, tl.OneCycleLR, tl.CyclicLR)):  # lit_optim's count optimizer steps
        return True
    return any(_per_step(part) for part in _parts(scheduler))


def _length(scheduler: object) -> int | None:
    if isinstance(scheduler, tl.SequentialLR):
        # Its parts run one after another: the last milestone plus the last part's own length (a last part
        # without a length, e.g. ExponentialLR, leaves the milestones as the only length there is).
        last = _length(scheduler._schedulers[-1])
        start = int(max(scheduler._milestones)) if scheduler._milestones else 0
        return start + last if last is not None else (start or None)
    if isinstance(scheduler, tl.ChainedScheduler):  # its parts run side by side: the longest one
        lengths = [n for n in map(_length, scheduler._schedulers) if n is not None]
        return max(lengths) if lengths else None
    for cls, attr in _LENGTH_ARGS:
        if isinstance(scheduler, cls):
            value = getattr(scheduler, attr)
            if attr == "milestones":
                return int(max(value)) if value else None
            return int(value)
    return None


def infer_interval(
    scheduler: object, configured: str, max_epochs: int | None, total_steps: float
) -> tuple[Interval, str | None]:
    """Return ``(interval, why_ambiguous)`` for one scheduler.

    ``why_ambiguous`` is ``None`` when the choice is clear, else a sentence for a one-time warning.

    Rules: ``ReduceLROnPlateau`` -> ``"plateau"``; lit_optim's ``ScheduleLR`` and ``PlateauLR`` (they count
    optimizer steps by definition), ``OneCycleLR``, ``CyclicLR`` and
    any config that says ``interval="step"`` (Lightning's default is ``"epoch"``, so ``"step"`` was chosen on
    purpose) -> ``"step"``. For an epoch-parameterised torch scheduler the length its arguments imply
    (``step_size``, ``max(milestones)``, ``T_max``, ``T_0``, ``total_iters``; for a ``SequentialLR`` its last
    milestone plus its last part's length, for a ``ChainedScheduler`` its longest part's; a composite holding a
    ``OneCycleLR``/``CyclicLR`` is per step) is compared with ``max_epochs``:
    at most ``max_epochs`` -> ``"epoch"``; more than ``max_epochs`` but at most the total optimizer steps ->
    ``"step"`` (reported as ambiguous for the periodic ``StepLR`` and ``CosineAnnealingWarmRestarts``, whose
    period may be meant in epochs of a longer run). Without a known ``max_epochs``, or for a scheduler with no
    length (``ExponentialLR``, ``LambdaLR``, ``MultiplicativeLR``, unknown classes) -> ``"epoch"``, reported as
    ambiguous. A scheduler that is not a torch ``LRScheduler`` (timm's, stepped through
    ``LightningModule.lr_scheduler_step``) keeps its configured interval.

    Examples:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> infer_interval(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000), "epoch", 10, 1000)
        ('step', None)
    """
    if isinstance(scheduler, tl.ReduceLROnPlateau):
        return "plateau", None
    if _per_step(scheduler) or configured == "step":
        return "step", None
    if not isinstance(scheduler, tl.LRScheduler):  # e.g. timm's, stepped through `lr_scheduler_step`: as configured
        return "epoch", None
    epochs = max_epochs if max_epochs is not None and max_epochs > 0 else None
    name = type(scheduler).__name__
    if isinstance(scheduler, tl.ExponentialLR):
        return "epoch", (f"{name} has no length to compare with the run; stepping it once per epoch.")
    length = _length(scheduler)
    if length is None:
        return "epoch", (
            f"{name} has no length to compare with the run, so it keeps Lightning's default interval and is "
            "stepped once per epoch. If it counts optimizer steps (a warmup written for `step()` per batch), return "
            "it as `{'scheduler': ..., 'interval': 'step'}`."
        )
    if epochs is None:
        chosen: Interval = "step" if length <= total_steps else "epoch"
        return chosen, (
            f"{name} spans {length} calls to step() and `max_epochs` is not set (total optimizer steps: "
            f"{_fmt(total_steps)}); stepping it once per {chosen}."
        )
    if length <= epochs:
        return "epoch", None
    if length <= total_steps:
        if isinstance(scheduler, _PERIODIC):
            return "step", (
                f"{name}'s period of {length} is longer than `max_epochs`={epochs}, so it is stepped once per "
                "optimizer step (per epoch it would never fire in this run). If the period is meant in epochs, say so."
            )
        return "step", None
    return "epoch", (
        f"{name} spans {length} calls to step(), more than both `max_epochs`={epochs} and the "
        f"{_fmt(total_steps)} optimizer steps of the run; stepping it once per epoch."
    )


def _fmt(total: float) -> str:
    return "unknown" if math.isinf(total) or total < 0 else str(int(total))


@dataclass
class Claim:
    """One scheduler config taken over by the stepper: how and when it is stepped."""

    index: int
    config: LRSchedulerConfig
    interval: Interval
    frequency: int
    monitor: str | None
    on_missing: Literal["raise", "warn"]
    hook: StepHook | None = None  # the module's `lr_scheduler_step`, when it overrides Lightning's
    expected: int | None = None  # the scheduler's progress after our last step (to catch a second owner)
    configured_interval: str = "epoch"
    after: Literal["validation", "train_epoch"] | None = None  # when a plateau steps (None: not known yet)
    checked: bool = False  # a plateau's monitor was found (or reported missing) once
    yielded: bool = False  # an epoch scheduler the user steps by hand (manual optimization): left to them

    def step(self, metric: Any = None) -> None:
        """Step the scheduler as Lightning would: through ``lr_scheduler_step`` when the module overrides it."""
        scheduler: Any = self.config.scheduler
        if self.hook is not None:
            self.hook(scheduler, metric)
        elif metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    @property
    def is_plateau(self) -> bool:
        return self.interval == "plateau" or isinstance(self.config.scheduler, PlateauLR)

    @property
    def optimizer(self) -> Optimizer:
        return self.config.scheduler.optimizer


def progress_of(scheduler: object) -> int | None:
    """How often ``scheduler`` was stepped: its ``last_epoch``; a ``ChainedScheduler`` has none, its parts do."""
    if hasattr(scheduler, "last_epoch"):
        return int(scheduler.last_epoch)
    parts = getattr(scheduler, "_schedulers", None)
    return progress_of(parts[0]) if parts else None
