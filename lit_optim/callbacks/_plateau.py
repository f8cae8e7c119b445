"""Plateau stepping for ``SchedulerStepper``: when a metric-driven scheduler steps, with which value, and its errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_optim._distributed import is_distributed
from lit_optim._logging import log_metrics
from lit_optim._validation import unknown_key_error
from lit_optim.callbacks._intervals import Claim
from lit_optim.schedules.plateau import PlateauLR

__all__ = ["Moment", "PlateauMonitorError", "check_plateau", "reduction_count", "step_plateaus"]

_REDUCTIONS = "lit_optim_reductions"

Moment = Literal["validation", "train_epoch"]


class PlateauMonitorError(ValueError, MisconfigurationException):
    """A plateau scheduler's monitor is missing: a ``ValueError`` and Lightning's ``MisconfigurationException``.

    Plain Lightning raises ``MisconfigurationException`` here, so ``except MisconfigurationException`` keeps working
    with the stepper, as does ``except ValueError``.

    Examples:
        >>> issubclass(PlateauMonitorError, ValueError), issubclass(PlateauMonitorError, MisconfigurationException)
        (True, True)
    """


def check_plateau(
    claim: Claim, trainer: Trainer, pl_module: LightningModule, default_monitor: str | None, warn: Callable[..., None]
) -> None:
    """Fill in the claim's monitor and cadence at fit start; raise when it has no metric to monitor."""
    scheduler = claim.config.scheduler
    if isinstance(scheduler, PlateauLR):
        claim.monitor = scheduler.plateau.monitor
        claim.on_missing = scheduler.plateau.on_missing_monitor
        if claim.config.monitor not in (None, claim.monitor):  # two names for one metric: refuse to guess
            raise ValueError(
                f"The scheduler config says `monitor={claim.config.monitor!r}` but its Plateau monitors "
                f"{claim.monitor!r}. Give the metric once, as `Plateau(monitor=...)`."
            )
    else:
        claim.monitor = claim.config.monitor or default_monitor
        if not claim.config.strict:  # Lightning's own switch for "warn and skip"
            claim.on_missing = "warn"
    if claim.monitor is None:
        # Lightning drops the config's "monitor" key under manual optimization: only the stepper's setting works there
        where = (
            "Pass `SchedulerStepper(monitor='val_loss')`"
            if not pl_module.automatic_optimization
            else "Pass `SchedulerStepper(monitor='val_loss')` or return `{'scheduler': ..., 'monitor': 'val_loss'}`"
        )
        raise PlateauMonitorError(f"{type(scheduler).__name__} needs a metric to monitor, and none was given. {where}.")
    # A metric logged by validation steps the scheduler after each validation run; one logged by training with
    # `on_epoch=True` at the end of each training epoch (as plain Lightning does). Which one is decided by where the
    # metric first shows up; without a validation loop it can only be a training metric.
    claim.after = None if trainer.enable_validation else "train_epoch"
    every = trainer.check_val_every_n_epoch
    if claim.after is None and every is not None and trainer.max_epochs is not None and 0 < trainer.max_epochs < every:
        warn(
            f"no-validation-{claim.index}",
            f"{type(scheduler).__name__} monitors {claim.monitor!r}, but `check_val_every_n_epoch={every}` is more "
            f"than `max_epochs={trainer.max_epochs}`: no validation runs, so a validation metric never reduces the "
            "learning rate in this run.",
        )


def _reduce_sum(trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor:
    return trainer.strategy.reduce(tensor, reduce_op="sum") if is_distributed(trainer) else tensor


def step_plateaus(
    trainer: Trainer,
    claims: list[Claim],
    moment: Moment,
    metrics_before: Mapping[str, Any],
    validated: bool,
    warn: Callable[..., None],
) -> None:
    """Step the plateau claims due at ``moment`` (``"validation"`` or ``"train_epoch"``) with a rank-reduced metric.

    ``metrics_before`` is ``trainer.callback_metrics`` at the start of the validation run or training epoch: a value
    that is the same object now was not logged since. ``validated`` says whether a validation run has ended in this
    fit (a monitor still unknown then is missing, not merely not logged yet).
    """
    due = [c for c in claims if c.after in (None, moment)]
    metrics = trainer.callback_metrics
    for claim in due:
        monitor = claim.monitor
        assert monitor is not None  # set in check_plateau
        # One collective per plateau config on every rank, whatever this rank holds, so no rank waits alone in it:
        # (sum of fresh values, ranks with a fresh value, ranks that logged the metric at all).
        value = metrics.get(monitor)
        logged = value is not None
        fresh = logged and not (monitor in metrics_before and metrics_before[monitor] is value)
        local = torch.zeros(3, dtype=torch.float64, device=trainer.strategy.root_device)
        if fresh:
            local[0] = torch.as_tensor(value, dtype=torch.float64).detach().reshape(())
        local[1], local[2] = float(fresh), float(logged)
        total, n_fresh, n_logged = _reduce_sum(trainer, local).tolist()
        if claim.after is None:
            if n_fresh > 0:
                claim.after = moment  # the metric's home: step here from now on
            elif moment == "validation" or not validated:
                continue  # maybe a training-epoch metric, or validation has not run yet: decide later
        if n_logged == 0:
            if not claim.checked and claim.on_missing == "raise":
                raise _missing_monitor_error(trainer, monitor, metrics)
            claim.checked = True
            run = _run_name(moment) if claim.after is not None else "validation run or training epoch"
            warn(
                f"missing-{claim.index}",
                f"Plateau scheduler monitor {monitor!r} was not logged by this {run}. Skipping the plateau step "
                "(warned once).",
            )
            continue
        claim.checked = True
        if n_fresh == 0:
            warn(
                f"stale-{claim.index}",
                f"Plateau scheduler monitor {monitor!r} holds a value from before this {_run_name(moment)}; "
                "skipping the plateau step rather than reusing a stale value (warned once).",
            )
            continue
        _apply(trainer, claim, total / n_fresh, sum(c.is_plateau for c in claims) > 1)


def _run_name(moment: Moment) -> str:
    return "validation run" if moment == "validation" else "training epoch"


def _missing_monitor_error(trainer: Trainer, monitor: str, metrics: Mapping[str, Any]) -> PlateauMonitorError:
    where = (
        "Log it with `self.log(...)` in `validation_step`/`on_validation_epoch_end` (the scheduler then steps after "
        "each validation run) or in `training_step` with `on_epoch=True` (it then steps at the end of each "
        "training epoch)"
    )
    if not trainer.enable_validation:
        where = (
            "This run has no validation loop (no `validation_step`, no `val_dataloader`, or `limit_val_batches=0`), "
            "so only a training metric can drive it: log it in `training_step` with `on_epoch=True`, or add a "
            "validation loop"
        )
    error = unknown_key_error(
        "plateau monitor",
        monitor,
        metrics,
        hint=f"{where}, or pass `on_missing_monitor='warn'` to skip the reduction instead.",
    )
    return PlateauMonitorError(str(error))


def _apply(trainer: Trainer, claim: Claim, value: float, several: bool) -> None:
    scheduler = claim.config.scheduler
    if isinstance(scheduler, PlateauLR):
        reduced = scheduler.step_metric(value)
    else:
        before = [group["lr"] for group in scheduler.optimizer.param_groups]
        claim.step(value)
        reduced = before != [group["lr"] for group in scheduler.optimizer.param_groups]
        if reduced:  # kept on the scheduler: torch's state_dict saves its __dict__, so checkpoints hold it
            scheduler.__dict__[_REDUCTIONS] = reduction_count(claim) + 1
    count = reduction_count(claim)
    suffix = f"/{claim.config.name or claim.index}" if several else ""
    log_metrics(trainer, {f"plateau/reductions{suffix}": float(count)})
    if reduced:
        lrs = ", ".join(f"{group['lr']:.4g}" for group in scheduler.optimizer.param_groups)
        rank_zero_info(
            f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {claim.monitor}={value:.6g} did not "
            f"improve; learning rate reduced to [{lrs}] (reduction {count})."
        )


def reduction_count(claim: Claim) -> int:
    """Plateau reductions so far of the claimed scheduler."""
    scheduler = claim.config.scheduler
    if isinstance(scheduler, PlateauLR):
        return scheduler.reductions
    return int(getattr(scheduler, _REDUCTIONS, 0))
