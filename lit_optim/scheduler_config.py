"""The Lightning ``lr_scheduler`` dicts for lit_optim schedules: the layer that attaches ``SchedulerStepper``.

Schedules, ``ScheduleLR`` and ``PlateauLR`` live in :mod:`lit_optim.schedules` and know nothing of the Trainer's
callbacks; these two builders return the dict Lightning expects and make sure the one stepper is attached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch.optim import Optimizer

from lit_optim.callbacks.stepper import ensure_stepper
from lit_optim.schedules.base import Warmup
from lit_optim.schedules.durations import (
    TrainingLength,
    _length_or_none,
    _unknown_total_error,
    resolve_training_length,
)
from lit_optim.schedules.params import ParamSchedule, as_param_schedules
from lit_optim.schedules.plateau import Plateau, PlateauLR
from lit_optim.schedules.scheduler import OPEN_ENDED_STEPS, ScheduleLR, as_schedule
from lit_optim.schedules.specs import Schedule

__all__ = ["lightning_scheduler_config", "plateau_scheduler_config"]


def lightning_scheduler_config(
    optimizer: Optimizer,
    schedule: Schedule | str | Mapping[str, Any],
    trainer: pl.Trainer | None,
    name: str | None = None,
    params: Mapping[str, ParamSchedule | Mapping[str, Any]] | None = None,
    total_steps: int | None = None,
) -> dict[str, Any]:
    """Lightning's lr-scheduler dict for ``schedule``, its durations resolved against ``trainer``'s run.

    ``params`` schedules other param-group hyper-parameters next to the lr (see
    :class:`~lit_optim.schedules.ParamSchedule`), in the same :class:`~lit_optim.schedules.ScheduleLR`.

    Call it from ``configure_optimizers`` (the Trainer then knows its dataloader and limits). Stepping is
    per optimizer step (``"interval": "step"``); the scheduler is checkpointed by Lightning.

    When the run's total is unknown (an iterable dataset or ``max_epochs=-1`` without ``max_steps``), a schedule
    that does not depend on it (``schedule.needs_total_steps()`` is false, e.g. ``InverseSqrt(warmup=500)``) runs
    open-ended; any other raises, naming ``max_steps``.

    Args:
        optimizer: the optimizer to drive.
        schedule: a :class:`~lit_optim.schedules.Schedule`, a catalogue name or a ``{"name": ..., **params}`` mapping.
        trainer: the Trainer about to fit (``module.trainer``); ``None`` (a module outside a fit) raises.
        name: the name ``LearningRateMonitor`` logs under; ``None`` lets Lightning name it ``"lr-<OptimizerClass>"``,
            numbered (``"lr-Adam-1"``) when several optimizers share a class (a name given here is never numbered).
        params: ``{field: ParamSchedule}`` for other hyper-parameters, stepped in the same ``ScheduleLR``.
        total_steps: the schedule's length in this optimizer's own steps; ``None`` resolves the run's from
            ``trainer``. Give it under manual optimization with several optimizers bounded by ``max_steps``
            (``global_step`` counts every optimizer's steps there), or whenever an optimizer steps less than once
            per optimizer step of the run.

    Raises:
        ValueError: no Trainer, the run's total is unknown and the schedule needs it (set ``max_steps``), or a
            duration does not fit the run.

    Examples:
        >>> import torch
        >>> from lit_optim.schedules.specs import Cosine
        >>> opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
        >>> def configure_optimizers(self):  # in your LightningModule
        ...     return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, "cosine", self.trainer)}
        >>> from types import SimpleNamespace  # a Trainer-like stand-in, for the example only
        >>> trainer = SimpleNamespace(estimated_stepping_batches=100, num_training_batches=50,
        ...                           accumulate_grad_batches=1, max_steps=100, max_epochs=None)
        >>> config = lightning_scheduler_config(opt, Cosine(warmup="10%"), trainer)
        >>> config["scheduler"].total_steps, config["interval"], config["name"]
        (100, 'step', None)
    """
    schedule = as_schedule(schedule)
    if trainer is None:
        raise ValueError(
            f"{schedule!r} needs the run's length, known only once fitting starts: call this (or "
            "`lit_optim.configure_optimizers(self, scheduler=...)`) inside `LightningModule.configure_optimizers` "
            "during `trainer.fit`, or build `ScheduleLR(optimizer, schedule, total_steps=...)` yourself."
        )
    bad_total = isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    if total_steps is not None and bad_total:
        raise ValueError(f"`total_steps` must be an int >= 1 or None, got {total_steps!r}.")
    total, steps_per_epoch = _length_or_none(trainer)
    from_trainer = total_steps is None
    if total_steps is not None:
        total = total_steps
    if total is None:
        if schedule.needs_total_steps():
            raise _unknown_total_error(
                trainer,
                f" {schedule!r} needs it (by its formula or a duration in % of the run); InverseSqrt, Constant, "
                "Exponential, Step, MultiStep and CosineRestarts with durations in steps or epochs do not.",
            )
        for label, spec in as_param_schedules(params or {}, "params").items():
            shape = spec.shape
            if isinstance(shape, Schedule) and shape.needs_total_steps():
                raise _unknown_total_error(
                    trainer,
                    f" The {label!r} schedule's shape {shape!r} needs it; give it a shape with durations in steps "
                    "(e.g. `Linear(decay_end=10_000)`).",
                )
        total = OPEN_ENDED_STEPS
    length = TrainingLength(total_steps=total, steps_per_epoch=steps_per_epoch)
    try:
        scheduler = ScheduleLR(optimizer, schedule, length.total_steps, length.steps_per_epoch, params=params)
    except ValueError as err:
        if length.steps_per_epoch is None and total_steps is None:
            _explain_changing_accumulation(trainer, err)
        fast_dev_run = getattr(trainer, "fast_dev_run", False)
        if not fast_dev_run:
            raise
        raise ValueError(
            f"{err} Note: `Trainer(fast_dev_run={fast_dev_run!r})` cuts the run to {length.total_steps} optimizer "
            "steps; for a smoke test of this schedule use e.g. `Trainer(max_steps=..., limit_val_batches=...)`."
        ) from err
    scheduler.resolved_from_trainer = from_trainer
    if hasattr(trainer, "callbacks"):  # a real Trainer (the docstring example passes a stand-in)
        ensure_stepper(trainer)
    return {
        "scheduler": scheduler,
        "interval": "step",
        "frequency": 1,
        "name": name,
    }



def _explain_changing_accumulation(trainer: Any, err: ValueError) -> None:
    """Re-raise ``err`` with the reason an epoch has no single length, when a GradientAccumulationScheduler is why."""
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    found = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, GradientAccumulationScheduler)]
    epochs = trainer.max_epochs if isinstance(trainer.max_epochs, int) and trainer.max_epochs > 0 else 0
    if not found or not epochs or not 0 < trainer.num_training_batches < math.inf:
        return
    steps = [math.ceil(trainer.num_training_batches / found[0].get_accumulate_grad_batches(e)) for e in range(epochs)]
    raise ValueError(
        f"{err} Note: `GradientAccumulationScheduler` changes the optimizer steps per epoch "
        f"({', '.join(map(str, steps))}), so a duration in epochs has no single length in this run."
    ) from err


def plateau_scheduler_config(
    optimizer: Optimizer, plateau: Plateau, trainer: pl.Trainer | None = None, name: str | None = None
) -> dict[str, Any]:
    """Return the Lightning ``lr_scheduler`` dict for a :class:`Plateau` spec.

    The dict has ``interval="step"`` (the warmup advances per optimizer step); reductions happen after
    validation runs, driven by :class:`~lit_optim.callbacks.stepper.SchedulerStepper`, which is added to
    ``trainer`` when one is given (pass ``self.trainer`` from ``configure_optimizers``). A warmup in epochs or
    as a fraction of the run is resolved against that trainer.

    Args:
        optimizer: the optimizer to drive.
        plateau: the spec.
        trainer: the Trainer about to fit; gets a ``SchedulerStepper`` when it has none.
        name: the name ``LearningRateMonitor`` logs under (Lightning's default when ``None``).

    Raises:
        ValueError: a warmup in epochs or as a fraction with no ``trainer`` to resolve it, or one that does not
            fit the run.

    Examples:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> config = plateau_scheduler_config(opt, Plateau("val_loss"))
        >>> type(config["scheduler"]).__name__, config["interval"]
        ('PlateauLR', 'step')
    """
    warmup = plateau.warmup
    needs_length = isinstance(warmup, Warmup) and getattr(warmup.duration, "unit", "step") != "step"
    length = resolve_training_length(trainer) if trainer is not None and needs_length else None
    scheduler = PlateauLR(optimizer, plateau, length)
    config: dict[str, Any] = {"scheduler": scheduler, "interval": "step", "frequency": 1}
    if name is not None:
        config["name"] = name
    if trainer is not None:
        ensure_stepper(trainer)
    return config
