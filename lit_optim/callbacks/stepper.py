"""One owner for stepping every learning-rate scheduler of a run."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lit_optim._distributed import is_distributed
from lit_optim._logging import log_metrics
from lit_optim._validation import check_choice, unknown_key_error
from lit_optim.callbacks._attach import ensure_callback
from lit_optim.callbacks._intervals import Claim, Interval, infer_interval, progress_of
from lit_optim.schedules.plateau import PlateauLR

__all__ = ["SchedulerStepper", "ensure_stepper"]

_STEP_COUNT = "lit_optim_step_count"
_NEVER = sys.maxsize  # Lightning steps a config when (batch_idx + 1) % frequency == 0: never with this.


def _reduce_sum(trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor:
    return trainer.strategy.reduce(tensor, reduce_op="sum") if is_distributed(trainer) else tensor


def _has_grad(optimizer: Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class SchedulerStepper(Callback):
    """Step every scheduler of the run exactly when training progress says so, instead of Lightning.

    At ``on_train_start`` it claims every config in ``trainer.lr_scheduler_configs`` (lit_optim's and plain
    torch schedulers alike), sets its ``frequency`` so Lightning's own stepping never fires, and steps it:

    - ``"step"`` schedulers after each real optimizer step (``optimizer.register_step_post_hook``): not when
      fp16 AMP's ``GradScaler`` skipped ``optimizer.step``, and not when no parameter had a gradient (a
      ``training_step`` that returned ``None``); with ``accumulate_grad_batches`` once per accumulated step;
    - ``"epoch"`` schedulers at the end of each training epoch (before checkpoint callbacks save);
    - plateau schedulers (torch ``ReduceLROnPlateau``, lit_optim ``PlateauLR``) right after each non-sanity
      validation run, with the monitored value of *that* run averaged over ranks (``strategy.reduce``), so all
      ranks take the same decision even when the metric was logged without ``sync_dist``; ranks that did not
      log it this run (e.g. ``self.log(..., rank_zero_only=True)`` on rank 0 only) are left out of the mean.

    A config that leaves ``trainer.lr_scheduler_configs`` during the fit (``StochasticWeightAveraging`` swaps
    in its ``SWALR``) is no longer stepped; configs added during the fit are left to Lightning.

    The interval of a plain torch scheduler is inferred (see ``infer_interval``); a one-time warning says
    when the choice was ambiguous. A config's ``frequency`` N > 1 means every N optimizer steps (``"step"``)
    or every N epochs (``"epoch"``); plateau schedulers step after every validation run. Manual optimization
    is supported: do not call ``scheduler.step()`` yourself then (a per-step scheduler stepped by someone else
    as well raises a ``RuntimeError`` at the next optimizer step rather than advancing twice).

    The stepper keeps no state of its own (``state_dict()`` is empty): all progress is in the schedulers,
    which Lightning checkpoints, so a stepper added during ``configure_optimizers`` resumes exactly. With
    ``frequency`` N > 1 on a per-step torch scheduler, the count inside the N-step window is kept on the
    scheduler as ``lit_optim_step_count`` (torch's ``state_dict`` saves it).

    Logged keys (through ``trainer.loggers``, after each validation run that stepped a plateau scheduler):
    ``"plateau/reductions"`` (reductions so far; ``"plateau/reductions/<name or index>"`` when there are
    several plateau schedulers). A reduction also prints one line on rank 0.

    Args:
        intervals: overrides, keyed by the config's ``name`` or the scheduler's class name, e.g.
            ``{"StepLR": "step"}``.
        monitor: metric for a plateau config that names none (manual optimization).
        on_missing_monitor: ``"raise"`` when the monitored metric is not logged at the first validation run,
            or ``"warn"`` and skip the plateau step. lit_optim's ``Plateau`` spec carries its own setting; a
            Lightning config with ``"strict": False`` always warns.

    Raises:
        ValueError: on an unknown interval or option.

    Example:
        >>> SchedulerStepper(intervals={"StepLR": "step"}).intervals
        {'StepLR': 'step'}
    """

    def __init__(
        self,
        intervals: Mapping[str, Interval] | None = None,
        monitor: str | None = None,
        on_missing_monitor: Literal["raise", "warn"] = "raise",
    ) -> None:
        self.intervals: dict[str, Interval] = dict(intervals or {})
        for value in self.intervals.values():
            check_choice("intervals", value, ["epoch", "plateau", "step"])
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise TypeError(f"`monitor` must be a non-empty metric name or None, got {monitor!r}.")
        self.monitor = monitor
        check_choice("on_missing_monitor", on_missing_monitor, ["raise", "warn"])
        self.on_missing_monitor = on_missing_monitor
        self._claims: list[Claim] = []
        self._handles: list[RemovableHandle] = []
        self._metrics_before: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._step_counts: dict[int, int] = {}
        self._monitor_checked = False
        self._configs: list[LRSchedulerConfig] | None = None  # the Trainer's live list during a fit

    @property
    def reductions(self) -> dict[int, int]:
        """Plateau reductions so far, by index in ``trainer.lr_scheduler_configs``."""
        return {c.index: self._reduction_count(c) for c in self._claims if c.is_plateau}

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._claim(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._step_epochs_until(trainer.current_epoch)  # catch up after resuming from an end-of-epoch checkpoint

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._step_epochs_until(trainer.current_epoch + 1)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._metrics_before = dict(trainer.callback_metrics)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._step_plateaus(trainer)
        self._metrics_before = {}

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    # ---------------------------------------------------------------- claiming
    def _claim(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()
        self._claims, self._step_counts, self._monitor_checked = [], {}, False
        self._configs = trainer.lr_scheduler_configs
        total = float(trainer.estimated_stepping_batches)
        max_epochs = trainer.max_epochs
        for index, config in enumerate(trainer.lr_scheduler_configs):
            scheduler = config.scheduler
            key = config.name if config.name in self.intervals else type(scheduler).__name__
            if key in self.intervals:
                interval: Interval = self.intervals[key]
                if (interval == "plateau") != isinstance(scheduler, ReduceLROnPlateau):
                    raise ValueError(
                        f"`intervals[{key!r}]` is {interval!r}, but only ReduceLROnPlateau steps on a metric "
                        f"('plateau') and it needs one; {type(scheduler).__name__} cannot use {interval!r}."
                    )
            else:
                interval, why = infer_interval(scheduler, config.interval, max_epochs, total)
                if why is not None:
                    self._warn_once(
                        f"interval-{index}",
                        f"{why} Pass `SchedulerStepper(intervals={{{type(scheduler).__name__!r}: 'step'}})` "
                        "(or 'epoch') to choose.",
                    )
            claim = Claim(index, config, interval, max(1, int(config.frequency)), None, self.on_missing_monitor)
            progress = progress_of(scheduler) or 0
            if interval == "epoch":
                claim.start = progress - trainer.current_epoch // claim.frequency
            elif interval == "step":
                # optimizer steps counted towards `frequency`, saved with the scheduler (see _after_optimizer_step)
                self._step_counts[index] = int(getattr(scheduler, _STEP_COUNT, progress * claim.frequency))
                claim.expected = progress_of(scheduler)
            if claim.is_plateau:
                self._check_plateau(claim, trainer, pl_module)
            config.frequency = _NEVER
            claim.configured_interval = config.interval
            if interval in ("step", "epoch"):
                config.interval = interval  # so LearningRateMonitor logs at the cadence the scheduler moves
            self._claims.append(claim)
        for optimizer in {id(c.optimizer): c.optimizer for c in self._claims if c.interval == "step"}.values():
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))

    def _check_plateau(self, claim: Claim, trainer: Trainer, pl_module: LightningModule) -> None:
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
            claim.monitor = claim.config.monitor or self.monitor
            if not claim.config.strict:  # Lightning's own switch for "warn and skip"
                claim.on_missing = "warn"
        if claim.monitor is None:
            raise ValueError(
                f"{type(scheduler).__name__} needs a metric to monitor, and none was given. Pass "
                "`SchedulerStepper(monitor='val_loss')` or return `{'scheduler': ..., 'monitor': 'val_loss'}`."
            )
        if not trainer.enable_validation:  # Lightning's own test: a `validation_step`, val data, limit_val_batches
            raise ValueError(
                f"{type(scheduler).__name__} monitors {claim.monitor!r} after validation runs, but this run has no "
                "validation loop (no `validation_step`, no `val_dataloader`, or `limit_val_batches=0`). Add a "
                "validation loop or use a schedule that does not depend on a metric."
            )
        every = trainer.check_val_every_n_epoch
        if every is not None and trainer.max_epochs is not None and 0 < trainer.max_epochs < every:
            self._warn_once(
                f"no-validation-{claim.index}",
                f"{type(scheduler).__name__} steps after validation runs, but `check_val_every_n_epoch={every}` is "
                f"more than `max_epochs={trainer.max_epochs}`: no validation runs, so the learning rate never "
                "reduces in this run.",
            )

    def _active(self, claim: Claim) -> bool:
        """Whether the claimed config is still the Trainer's (``StochasticWeightAveraging`` replaces it)."""
        return self._configs is None or any(config is claim.config for config in self._configs)

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._configs = None
        for claim in self._claims:  # kept until the next fit, so `reductions` can be read after training
            claim.config.frequency = claim.frequency
            claim.config.interval = claim.configured_interval

    # ---------------------------------------------------------------- stepping
    def _after_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if not _has_grad(optimizer):
            return  # nothing was trained this step (training_step returned None, or a skipped step)
        for claim in self._claims:
            if claim.interval != "step" or claim.optimizer is not optimizer or not self._active(claim):
                continue
            scheduler = claim.config.scheduler
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
            if claim.frequency > 1:  # torch's state_dict saves __dict__: a resumed run keeps the same N-step window
                scheduler.__dict__[_STEP_COUNT] = count
            if count % claim.frequency == 0:
                scheduler.step()  # type: ignore[call-arg]
                claim.expected = progress_of(scheduler)

    def _step_epochs_until(self, epochs: int) -> None:
        # The scheduler's own `last_epoch` (restored from the checkpoint) says how often it was stepped, so a
        # resumed run neither repeats nor misses the step of an epoch whose end the checkpoint straddles.
        for claim in self._claims:
            if claim.interval != "epoch" or not self._active(claim):
                continue
            scheduler = claim.config.scheduler
            while True:
                done = progress_of(scheduler)
                if (claim.start + claim.stepped if done is None else done) >= claim.start + epochs // claim.frequency:
                    break
                scheduler.step()  # type: ignore[call-arg]
                claim.stepped += 1

    def _step_plateaus(self, trainer: Trainer) -> None:
        plateaus = [c for c in self._claims if c.is_plateau and self._active(c)]
        if not plateaus:
            return
        metrics = trainer.callback_metrics
        first = not self._monitor_checked
        self._monitor_checked = True
        for claim in plateaus:
            monitor = claim.monitor
            assert monitor is not None  # set in _check_plateau
            # One collective per plateau config on every rank, whatever this rank holds, so no rank waits alone
            # in it: (sum of fresh values, ranks with a fresh value, ranks that logged the metric at all).
            value = metrics.get(monitor)
            logged = value is not None
            fresh = logged and not (monitor in self._metrics_before and self._metrics_before[monitor] is value)
            local = torch.zeros(3, dtype=torch.float64, device=trainer.strategy.root_device)
            if fresh:
                local[0] = torch.as_tensor(value, dtype=torch.float64).detach().reshape(())
            local[1], local[2] = float(fresh), float(logged)
            total, n_fresh, n_logged = _reduce_sum(trainer, local).tolist()
            if n_logged == 0:
                message = f"Plateau scheduler monitor {monitor!r} was not logged by this validation run."
                if first and claim.on_missing == "raise":
                    raise unknown_key_error(
                        "plateau monitor",
                        monitor,
                        metrics,
                        hint="Log it with `self.log(...)` in `validation_step`/`on_validation_epoch_end`, or pass "
                        "`on_missing_monitor='warn'` to skip the reduction instead.",
                    )
                self._warn_once(f"missing-{claim.index}", f"{message} Skipping the plateau step (warned once).")
                continue
            if n_fresh == 0:
                self._warn_once(
                    f"stale-{claim.index}",
                    f"Plateau scheduler monitor {monitor!r} holds a value from before this validation run; skipping "
                    "the plateau step rather than reusing a stale value (warned once).",
                )
                continue
            self._apply_plateau(trainer, claim, total / n_fresh, len(plateaus) > 1)

    def _apply_plateau(self, trainer: Trainer, claim: Claim, value: float, several: bool) -> None:
        scheduler = claim.config.scheduler
        if isinstance(scheduler, PlateauLR):
            reduced = scheduler.step_metric(value)
        else:
            before = [group["lr"] for group in scheduler.optimizer.param_groups]
            scheduler.step(value)  # type: ignore[arg-type]
            reduced = before != [group["lr"] for group in scheduler.optimizer.param_groups]
            if reduced:  # kept on the scheduler: torch's state_dict saves its __dict__, so checkpoints hold it
                scheduler.__dict__["lit_optim_reductions"] = self._reduction_count(claim) + 1
        count = self._reduction_count(claim)
        suffix = f"/{claim.config.name or claim.index}" if several else ""
        log_metrics(trainer, {f"plateau/reductions{suffix}": float(count)})
        if reduced:
            lrs = ", ".join(f"{group['lr']:.4g}" for group in scheduler.optimizer.param_groups)
            rank_zero_info(
                f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {claim.monitor}={value:.6g} did not "
                f"improve; learning rate reduced to [{lrs}] (reduction {count})."
            )

    def _reduction_count(self, claim: Claim) -> int:
        scheduler = claim.config.scheduler
        if isinstance(scheduler, PlateauLR):
            return scheduler.reductions
        return int(getattr(scheduler, "lit_optim_reductions", 0))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=RuntimeWarning)


def ensure_stepper(trainer: Trainer) -> SchedulerStepper:
    """Return the Trainer's :class:`SchedulerStepper`, adding one when it has none.

    A new one is inserted before the first checkpoint callback: Lightning runs checkpoint callbacks last so
    that they save state after the other callbacks' ``on_validation_end``, and a plateau step must land in
    that checkpoint.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> stepper = ensure_stepper(trainer)
        >>> [type(c).__name__ for c in trainer.callbacks][-2:]
        ['SchedulerStepper', 'ModelCheckpoint']
        >>> ensure_stepper(trainer) is stepper
        True
    """
    return ensure_callback(trainer, SchedulerStepper)
