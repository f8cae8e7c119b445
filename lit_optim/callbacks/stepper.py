"""One owner for stepping every learning-rate scheduler of a run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lit_optim._logging import skip_unused_hooks
from lit_optim._validation import check_choice
from lit_optim.callbacks._attach import after_module_hook, ensure_callback
from lit_optim.callbacks._checks import check_manual_lengths, check_shared_optimizers, warn_unfinished
from lit_optim.callbacks._intervals import Claim, Interval, infer_interval, progress_of
from lit_optim.callbacks._plateau import Moment, check_plateau, reduction_count, step_plateaus

__all__ = ["SchedulerStepper", "ensure_stepper"]

_STEP_COUNT = "lit_optim_step_count"
_EPOCHS = "lit_optim_epochs"  # training epochs whose end an epoch scheduler has been stepped for
_LEFT_AT = "lit_optim_left_at"  # an epoch scheduler's progress after the stepper's last step of it
_YIELDED = "lit_optim_user_stepped"  # an epoch scheduler the user steps by hand (manual optimization)
_NEVER = sys.maxsize  # Lightning steps a config when (batch_idx + 1) % frequency == 0: never with this.


def _has_grad(optimizer: Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class SchedulerStepper(Callback):
    """Step every scheduler of the run exactly when training progress says so, instead of Lightning.

    At ``on_train_start`` it claims every config in ``trainer.lr_scheduler_configs`` (lit_optim's and plain
    torch schedulers alike), sets its ``frequency`` so Lightning's own stepping never fires, and steps it, through
    ``LightningModule.lr_scheduler_step`` as Lightning does (override it for a scheduler with another ``step``
    signature, e.g. timm's ``scheduler.step(epoch=self.current_epoch)``):

    - ``"step"`` schedulers after each real optimizer step (``optimizer.register_step_post_hook``): not when
      fp16 AMP's ``GradScaler`` skipped ``optimizer.step``; with ``accumulate_grad_batches`` once per accumulated
      step. A step where no parameter had a gradient (``training_step`` returned ``None``) does not advance them
      with ``skipped_steps="hold"``, and does with ``"advance"`` (the schedule then follows ``global_step``);
    - ``"epoch"`` schedulers at the end of each training epoch (before checkpoint callbacks save). How many epoch
      ends a scheduler has been stepped for is saved with it, so a run resumed from any checkpoint (mid-epoch,
      on an epoch's last step, at its end) steps it for exactly the epoch ends it missed;
    - plateau schedulers (torch ``ReduceLROnPlateau``, lit_optim ``PlateauLR``) with the monitored value averaged
      over ranks (``strategy.reduce``), so all ranks take the same decision even when the metric was logged
      without ``sync_dist``; ranks that did not log it are left out of the mean. A metric logged by validation
      steps them after each (non-sanity) validation run; a training metric logged with ``on_epoch=True`` or in
      ``LightningModule.on_train_epoch_end`` (or any metric in a run without validation) at the end of each
      training epoch, right after the module's ``on_train_epoch_end`` (wrapped during the fit), as plain Lightning
      does, and before checkpoint callbacks save.

    A config that leaves ``trainer.lr_scheduler_configs`` during the fit (``StochasticWeightAveraging`` swaps
    in its ``SWALR``, ``LearningRateFinder`` runs its own) is not stepped while it is out; configs added during
    the fit are left to Lightning.

    Refused when fitting starts: a second ``SchedulerStepper`` on the Trainer, a lit_optim schedule
    (``ScheduleLR``/``PlateauLR``) sharing its optimizer with any other torch scheduler (``ReduceLROnPlateau``,
    ``StepLR``, another lit_optim schedule; each would overwrite the other's learning rate), and, under manual
    optimization with several optimizers and ``max_steps`` set, a schedule whose length was resolved
    from the run (``global_step`` counts every optimizer's steps, so no optimizer's own count is known).

    The interval of a plain torch scheduler is inferred (see ``infer_interval``); a one-time warning says
    when the choice was ambiguous. A config's ``frequency`` N > 1 means every N optimizer steps (``"step"``)
    or every N epochs (``"epoch"``); plateau schedulers step at every evaluation. Under manual optimization, a
    per-step scheduler stepped by someone else as well raises a ``RuntimeError`` at the next optimizer step rather
    than advancing twice; an epoch scheduler you step yourself in ``training_step`` is left to you (warned once).

    The stepper keeps no state of its own (``state_dict()`` is empty): all progress is in the schedulers,
    which Lightning checkpoints, so a stepper added during ``configure_optimizers`` resumes exactly. The counts
    it needs are kept on the scheduler (``lit_optim_epochs``, and ``lit_optim_step_count`` for a per-step
    ``frequency`` N > 1), which torch's and ``ScheduleLR``'s ``state_dict`` save.

    Logged keys (through ``trainer.loggers``, after each evaluation that stepped a plateau scheduler):
    ``"plateau/reductions"`` (reductions so far; ``"plateau/reductions/<name or index>"`` when there are
    several plateau schedulers). A reduction also prints one line on rank 0.

    Args:
        intervals: overrides, keyed by the config's ``name`` or the scheduler's class name, e.g.
            ``{"StepLR": "step"}``.
        monitor: metric for a plateau config that names none (manual optimization).
        on_missing_monitor: ``"raise"`` when the monitored metric is not logged by the first evaluation,
            or ``"warn"`` and skip the plateau step. lit_optim's ``Plateau`` spec carries its own setting; a
            Lightning config with ``"strict": False`` always warns.
        skipped_steps: ``"hold"`` (a step without gradients does not advance per-step schedules; if such steps
            keep a schedule from its end, a warning says so at the end of the fit) or ``"advance"`` (they do, so
            the schedule follows ``global_step`` and ends where ``preview_schedule`` ends).

    Raises:
        ValueError: on an unknown interval or option.

    Examples:
        >>> SchedulerStepper(intervals={"StepLR": "step"}).intervals
        {'StepLR': 'step'}
    """

    def __init__(
        self,
        intervals: Mapping[str, Interval] | None = None,
        monitor: str | None = None,
        on_missing_monitor: Literal["raise", "warn"] = "raise",
        skipped_steps: Literal["hold", "advance"] = "hold",
    ) -> None:
        self.intervals: dict[str, Interval] = dict(intervals or {})
        for value in self.intervals.values():
            check_choice("intervals", value, ["epoch", "plateau", "step"])
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise TypeError(f"`monitor` must be a non-empty metric name or None, got {monitor!r}.")
        self.monitor = monitor
        check_choice("on_missing_monitor", on_missing_monitor, ["raise", "warn"])
        self.on_missing_monitor = on_missing_monitor
        check_choice("skipped_steps", skipped_steps, ["advance", "hold"])
        self.skipped_steps = skipped_steps
        self._claims: list[Claim] = []
        self._handles: list[RemovableHandle] = []
        self._undo: list[Callable[[], None]] = []  # hooks wrapped on the module during a fit
        self._metrics_before: dict[str, Any] = {}
        self._epoch_metrics_before: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._step_counts: dict[int, int] = {}
        skip_unused_hooks(self)  # Lightning skips the per-step hooks the stepper does not use
        self._skipped: dict[int, int] = {}  # optimizer steps without gradients in this fit, by id(optimizer)
        self._validated = False
        self._trainer: Trainer | None = None  # during a fit
        self._pending: list[Claim] = []  # per-step claims whose `lr_scheduler_step` override runs at batch end

    @property
    def reductions(self) -> dict[int, int]:
        """Plateau reductions so far, by index in ``trainer.lr_scheduler_configs``."""
        return {c.index: reduction_count(c) for c in self._claims if c.is_plateau}

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._claim(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_metrics_before = dict(trainer.callback_metrics)
        self._step_epochs(trainer, trainer.current_epoch, at_start=True)  # epoch ends a checkpoint was taken before

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._flush()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush()
        self._step_epochs(trainer, trainer.current_epoch + 1, at_start=False)
        # training-epoch plateaus step right after `LightningModule.on_train_epoch_end` (see `_claim`), which may log
        # their metric, and before the checkpoint callbacks save

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._metrics_before = dict(trainer.callback_metrics)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._step_plateaus(trainer, "validation", self._metrics_before)
            self._validated = True
        self._metrics_before = {}

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        warn_unfinished(self._claims, trainer, pl_module, self._skipped, self._warn_once)
        self._release()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()  # Lightning calls no `teardown` after an exception: leave the module and configs as they were

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    # ---------------------------------------------------------------- claiming
    def _claim(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()
        steppers = sum(isinstance(c, SchedulerStepper) for c in trainer.callbacks)  # type: ignore[attr-defined]
        if steppers > 1:
            raise ValueError(
                f"The Trainer has {steppers} SchedulerStepper callbacks, and each would step every scheduler. Keep "
                "one (e.g. not both in `callbacks=[...]` and in a config; `configure_optimizers` adds one only when "
                "there is none)."
            )
        self._claims, self._step_counts, self._skipped, self._validated, self._pending = [], {}, {}, False, []
        self._epoch_metrics_before = {}  # a run resumed mid-epoch has no `on_train_epoch_start`: all values are new
        self._trainer = trainer
        overridden = type(pl_module).lr_scheduler_step is not LightningModule.lr_scheduler_step
        hook = pl_module.lr_scheduler_step if overridden else None
        total = float(trainer.estimated_stepping_batches)
        for index, config in enumerate(trainer.lr_scheduler_configs):
            interval = self._interval(index, config.scheduler, config.name, config.interval, trainer, total)
            frequency = max(1, int(config.frequency))
            claim = Claim(index, config, interval, frequency, None, self.on_missing_monitor, hook=hook)
            scheduler = config.scheduler
            if interval == "epoch":
                done = getattr(scheduler, _EPOCHS, None)
                fresh = not isinstance(done, int) or done > trainer.current_epoch  # a fresh scheduler (or a new run)
                if fresh:
                    scheduler.__dict__[_EPOCHS] = trainer.current_epoch
                    scheduler.__dict__[_LEFT_AT] = progress_of(scheduler)
                # restored: where the stepper left it, so a hand step saved in the checkpoint is seen as one
                claim.expected = getattr(scheduler, _LEFT_AT, None)
                claim.yielded = not fresh and bool(getattr(scheduler, _YIELDED, False))
            elif interval == "step":
                progress = progress_of(scheduler) or 0
                # optimizer steps counted towards `frequency`, saved with the scheduler (see _after_optimizer_step)
                self._step_counts[index] = int(getattr(scheduler, _STEP_COUNT, progress * frequency))
                claim.expected = progress_of(scheduler)
            if claim.is_plateau:
                check_plateau(claim, trainer, pl_module, self.monitor, self._warn_once)
            config.frequency = _NEVER
            claim.configured_interval = config.interval
            if interval in ("step", "epoch"):
                config.interval = interval  # so LearningRateMonitor logs at the cadence the scheduler moves
            self._claims.append(claim)
        check_shared_optimizers(self._claims)
        check_manual_lengths(self._claims, trainer, pl_module)
        if any(c.is_plateau for c in self._claims):
            self._undo.append(after_module_hook(pl_module, "on_train_epoch_end", self._after_module_epoch_end))
        for optimizer in {id(c.optimizer): c.optimizer for c in self._claims if c.interval == "step"}.values():
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        # A run resumed from a checkpoint taken on an epoch's last step starts at the next epoch without calling
        # `on_train_epoch_start`: the epoch end it skipped is stepped here (unless the user stepped it by hand).
        self._step_epochs(trainer, trainer.current_epoch, at_start=False)

    def _interval(
        self, index: int, scheduler: Any, name: str | None, configured: str, trainer: Trainer, total: float
    ) -> Interval:
        key = name if name in self.intervals else type(scheduler).__name__
        if key in self.intervals:
            interval: Interval = self.intervals[key]
            if (interval == "plateau") != isinstance(scheduler, ReduceLROnPlateau):
                raise ValueError(
                    f"`intervals[{key!r}]` is {interval!r}, but only ReduceLROnPlateau steps on a metric "
                    f"('plateau') and it needs one; {type(scheduler).__name__} cannot use {interval!r}."
                )
            return interval
        interval, why = infer_interval(scheduler, configured, trainer.max_epochs, total)
        if why is not None:
            self._warn_once(
                f"interval-{index}",
                f"{why} Pass `SchedulerStepper(intervals={{{type(scheduler).__name__!r}: 'step'}})` "
                "(or 'epoch') to choose.",
            )
        return interval

    def _active(self, claim: Claim) -> bool:
        """Whether the claimed config is in the Trainer's list now (SWA and the LR finder replace it)."""
        trainer = self._trainer
        return trainer is None or any(config is claim.config for config in trainer.lr_scheduler_configs)

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for undo in self._undo:
            undo()
        self._undo = []
        self._trainer = None
        for claim in self._claims:  # kept until the next fit, so `reductions` can be read after training
            claim.config.frequency = claim.frequency
            claim.config.interval = claim.configured_interval

    # ---------------------------------------------------------------- stepping
    def _after_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.skipped_steps == "hold" and not _has_grad(optimizer):
            # nothing was trained this step (training_step returned None, or a skipped step)
            self._skipped[id(optimizer)] = self._skipped.get(id(optimizer), 0) + 1
            return
        for claim in self._claims:
            if claim.interval != "step" or claim.optimizer is not optimizer or not self._active(claim):
                continue
            scheduler = claim.config.scheduler
            if claim in self._pending:  # stepped twice in one batch (manual optimization): no batch end between
                self._flush()
            if claim.expected is not None and progress_of(scheduler) != claim.expected:
                raise RuntimeError(
                    f"{type(scheduler).__name__} (lr_scheduler_configs[{claim.index}]) was stepped outside "
                    f"SchedulerStepper (it is at step {progress_of(scheduler)}, the stepper left it at "
                    f"{claim.expected}), "
                    "so it would advance twice per optimizer step. SchedulerStepper steps it after every real "
                    "optimizer step: remove your own `scheduler.step()` call (also under manual optimization)."
                )
            count = self._step_counts.get(claim.index, 0) + 1
            self._step_counts[claim.index] = count
            if claim.frequency > 1:  # saved with the scheduler: a resumed run keeps the same N-step window
                scheduler.__dict__[_STEP_COUNT] = count
            if count % claim.frequency == 0:
                if claim.hook is not None:
                    # Lightning calls the hook after the optimizer step is counted in `global_step`, which happens
                    # only once this post-hook has returned: an override reading `self.global_step` sees its value.
                    self._pending.append(claim)
                else:
                    claim.step()
                    claim.expected = progress_of(scheduler)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for claim in pending:
            claim.step()
            claim.expected = progress_of(claim.config.scheduler)

    def _step_epochs(self, trainer: Trainer, through: int, at_start: bool) -> None:
        """Bring every epoch scheduler to ``through`` epoch ends: bounded by epochs, never by its own counter."""
        for claim in self._claims:
            if claim.interval != "epoch" or claim.yielded or not self._active(claim):
                continue
            scheduler = claim.config.scheduler
            if self._stepped_elsewhere(claim, trainer, at_start):
                continue
            done = int(getattr(scheduler, _EPOCHS, through))
            for epoch in range(done, through):
                if (epoch + 1) % claim.frequency == 0:
                    claim.step()
            scheduler.__dict__[_EPOCHS] = max(done, through)
            claim.expected = scheduler.__dict__[_LEFT_AT] = progress_of(scheduler)

    def _stepped_elsewhere(self, claim: Claim, trainer: Trainer, at_start: bool) -> bool:
        """Whether the user stepped this epoch scheduler too; hand it over, or raise if it was stepped twice."""
        scheduler = claim.config.scheduler
        progress = progress_of(scheduler)
        if progress is None or claim.expected is None or progress <= claim.expected:
            claim.expected = progress  # unmoved, or restored by a checkpoint (LearningRateFinder)
            return False
        name = f"{type(scheduler).__name__} (lr_scheduler_configs[{claim.index}])"
        if trainer.lightning_module.automatic_optimization or at_start:
            raise RuntimeError(
                f"{name} was stepped outside SchedulerStepper (it is at {progress}, the stepper left it at "
                f"{claim.expected}) after the stepper's end-of-epoch step, so it advanced twice in one epoch. "
                "SchedulerStepper steps it at the end of each training epoch: remove your own `scheduler.step()` "
                "call, or (manual optimization) make it in `training_step` (e.g. `if self.trainer.is_last_batch: "
                "sch.step()`), where the stepper sees it and leaves the scheduler to you."
            )
        claim.yielded = scheduler.__dict__[_YIELDED] = True  # saved with it: a resumed run leaves it to the user
        self._warn_once(
            f"yielded-{claim.index}",
            f"{name} is stepped by your `training_step` (manual optimization): SchedulerStepper leaves it to you "
            "and no longer steps it.",
        )
        return True

    def _after_module_epoch_end(self) -> None:
        if self._trainer is not None and self._trainer.training:
            self._step_plateaus(self._trainer, "train_epoch", self._epoch_metrics_before)

    def _step_plateaus(self, trainer: Trainer, moment: Moment, metrics_before: Mapping[str, Any]) -> None:
        plateaus = [c for c in self._claims if c.is_plateau and self._active(c)]
        if plateaus and not trainer.sanity_checking:
            step_plateaus(trainer, plateaus, moment, metrics_before, self._validated, self._warn_once)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=RuntimeWarning)


def ensure_stepper(trainer: Trainer) -> SchedulerStepper:
    """Return the Trainer's :class:`SchedulerStepper`, adding one when it has none.

    A new one is inserted before the first checkpoint callback: Lightning runs checkpoint callbacks last so
    that they save state after the other callbacks' ``on_validation_end``, and a plateau step must land in
    that checkpoint.

    Examples:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> stepper = ensure_stepper(trainer)
        >>> [type(c).__name__ for c in trainer.callbacks][-2:]
        ['SchedulerStepper', 'ModelCheckpoint']
        >>> ensure_stepper(trainer) is stepper
        True
    """
    return ensure_callback(trainer, SchedulerStepper)
