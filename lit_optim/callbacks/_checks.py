"""What ``SchedulerStepper`` refuses when fitting starts, and the shortfalls it reports when fitting ends."""

from __future__ import annotations

from collections.abc import Callable

from lightning.pytorch import LightningModule, Trainer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lit_optim.callbacks._intervals import Claim
from lit_optim.schedules.plateau import PlateauLR
from lit_optim.schedules.scheduler import ScheduleLR

__all__ = ["check_manual_lengths", "check_shared_optimizers", "warn_unfinished"]

Warn = Callable[[str, str], None]
"""``warn(key, message)``: warn once per key."""


def check_shared_optimizers(claims: list[Claim]) -> None:
    """Refuse a lit_optim schedule that shares its optimizer with another scheduler setting the same lrs."""
    by_optimizer: dict[int, list[Claim]] = {}
    for claim in claims:  # a scheduler without `optimizer` (a custom one) is not a lit_optim schedule
        by_optimizer.setdefault(id(getattr(claim.config.scheduler, "optimizer", claim)), []).append(claim)
    for group in by_optimizer.values():
        ours = [c for c in group if isinstance(c.config.scheduler, (ScheduleLR, PlateauLR))]
        torch_kinds = (LRScheduler, ReduceLROnPlateau)
        others = [c for c in group if c not in ours and isinstance(c.config.scheduler, torch_kinds)]
        if ours and len(ours) + len(others) > 1:
            a, b = (ours + others)[:2]
            names = f"{type(a.config.scheduler).__name__} (lr_scheduler_configs[{a.index}])"
            names += f" and {type(b.config.scheduler).__name__} (lr_scheduler_configs[{b.index}])"
            plateau = isinstance(b.config.scheduler, (ReduceLROnPlateau, PlateauLR))
            fix = (
                "`Plateau(monitor=..., warmup=...)` reduces on a plateau after a warmup."
                if plateau
                else "Express the whole curve as one lit_optim schedule (e.g. `Step`, `MultiStep`, a `Warmup` "
                "before a decay), or drive this optimizer with torch schedulers only."
            )
            raise ValueError(
                f"{names} drive the same optimizer ({type(a.optimizer).__name__}). A lit_optim schedule sets "
                "every learning rate from its curve at each step, so the other's changes (e.g. each plateau "
                f"reduction or decay) would be overwritten at the next step. Use one scheduler per optimizer: {fix}"
            )


def check_manual_lengths(claims: list[Claim], trainer: Trainer, pl_module: LightningModule) -> None:
    """Refuse a schedule length resolved from ``max_steps`` when ``global_step`` counts several optimizers."""
    if pl_module.automatic_optimization or len(trainer.optimizers) < 2 or trainer.max_steps == -1:
        return
    for claim in claims:
        scheduler = claim.config.scheduler
        if isinstance(scheduler, ScheduleLR) and scheduler.resolved_from_trainer:
            raise ValueError(
                f"lr_scheduler_configs[{claim.index}]'s schedule spans {scheduler.total_steps} steps, resolved "
                f"from the run (`max_steps={trainer.max_steps}`), but under manual optimization with "
                f"{len(trainer.optimizers)} optimizers `global_step` (which `max_steps` bounds) counts every "
                "optimizer's steps, so no optimizer's own step count is known and each schedule would stop "
                "part-way. Give each schedule its optimizer's own length: `lightning_scheduler_config(opt, "
                "schedule, self.trainer, total_steps=...)` (or `ScheduleLR(opt, schedule, total_steps=...)`), "
                "or bound the run with `max_epochs` only (each schedule then spans one step per batch)."
            )


def warn_unfinished(
    claims: list[Claim], trainer: Trainer, pl_module: LightningModule, skipped: dict[int, int], warn: Warn
) -> None:
    """At the end of a fit, say when a lit_optim schedule did not reach its end for a reason the user can fix."""
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    planned_end = (max_steps != -1 and trainer.global_step >= max_steps) or (
        max_epochs is not None and max_epochs > 0 and trainer.current_epoch >= max_epochs
    )
    for claim in claims:
        scheduler = claim.config.scheduler
        if not isinstance(scheduler, ScheduleLR) or scheduler.last_epoch >= scheduler.total_steps:
            continue
        if planned_end and not pl_module.automatic_optimization and scheduler.resolved_from_trainer:
            warn(
                f"unfinished-{claim.index}",
                f"The run ended with lr_scheduler_configs[{claim.index}] at step {scheduler.last_epoch} of its "
                f"{scheduler.total_steps} (resolved from the run): under manual optimization its optimizer "
                "stepped less often than once per batch, so the end of its curve was not reached. Give it its "
                "optimizer's own length: `lightning_scheduler_config(opt, schedule, self.trainer, "
                "total_steps=...)`.",
            )
        without = skipped.get(id(scheduler.optimizer), 0)
        if without and scheduler.last_epoch + without >= scheduler.total_steps:  # they kept it from its end
            warn(
                f"unfinished-{claim.index}",
                f"{without} optimizer step(s) had no gradients (`training_step` returned None, "
                "`GradientClipping(skip_nonfinite=True)` skipped a non-finite step, or "
                "`OptimizerMonitor(action='skip')` skipped a spike) and did not advance "
                f"lr_scheduler_configs[{claim.index}]: its schedule ended at step "
                f"{scheduler.last_epoch} of {scheduler.total_steps}, so the last "
                f"{scheduler.total_steps - scheduler.last_epoch} steps of its curve (`preview_schedule`) were "
                "not reached. Pass `SchedulerStepper(skipped_steps='advance')` to advance schedules on such "
                "steps as `global_step` does, so the run ends where the preview ends.",
            )
