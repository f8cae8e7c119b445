"""See what the optimizer does: per-group update ratios and norms, Adam's second moment, loss/grad-norm spikes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lit_optim._distributed import reduce_mean
from lit_optim._logging import group_names, is_logging_step, log_metrics, logging_step
from lit_optim._validation import check_choice, check_positive, check_positive_int
from lit_optim.callbacks._optimizer_monitor import check_strategy, group_values, host_row, shared_clipper
from lit_optim.clipping.functional import still_scaled
from lit_optim.clipping.norms import grouped_norms
from lit_optim.monitoring.spikes import SpikeDetector
from lit_optim.monitoring.tracker import SpikeTracker
from lit_optim.monitoring.updates import second_moment_means, snapshot, update_stats

__all__ = ["OptimizerMonitor"]

SpikeAction = Literal["log", "skip", "raise"]
_ACTIONS = ("log", "raise", "skip")
_SIGNALS = ("grad_norm", "loss")


class OptimizerMonitor(Callback):
    r"""Log how big each optimizer step is, per named param group, and catch loss and gradient-norm spikes.

    **Update statistics** (on logging steps only). Right before a logging step (``on_before_optimizer_step``) the
    parameters are copied; right after it (an ``optimizer.register_step_post_hook``) they are compared with the
    copy, so :math:`\Delta w` is the update the optimizer really applied (weight decay, momentum, any optimizer,
    including one that presents several inner optimizers' groups as its own). No copy is kept on other steps.
    For group *g* with weights :math:`w` before the step and :math:`n` elements:

    - ``update_ratio`` :math:`= \|\Delta w\| / \|w\|` (a healthy step is often around ``1e-3``);
    - ``update_rms`` :math:`= \|\Delta w\| / \sqrt{n}`;
    - ``param_norm`` :math:`= \|w\|` (before the step);
    - ``grad_norm``: the 2-norm of the gradients the step was given, before any clipping;
    - ``sqrt_v``: the mean of :math:`\sqrt{v}` over the group's elements, :math:`v` being the optimizer's
      ``exp_avg_sq`` state after the step (``max_exp_avg_sq`` with AMSGrad: what this step divided by; Adam
      family only, raw, without bias correction); parameters without that state are left out.

    The ``global`` entries are the same quantities over all groups together (norms of the concatenation).

    **Shared gradient norm.** When a callback with a ``pre_clip_norm(optimizer)`` accessor (``GradientClipping``
    with the default 2-norm) comes *before* this one in ``Trainer(callbacks=[...])``, its pre-clip global norm is
    reused (computed once) and the per-group ``grad_norm/{group}`` keys are left out (the gradients this callback
    sees may already be clipped; the clipper logs the pre-clip per-group norms as ``grad_clip/group_norm/{group}`` on
    the same rows); a step it has no norm for has no ``grad_norm``. A ``GradientClipping`` placed first that cannot
    share a 2-norm is refused when training starts. Placed after this callback, the clipper clips what this
    callback has measured.

    **Spikes.** For each signal in ``spike_on`` (``"loss"``: the sum of the losses passed to backward since the
    previous optimizer step, i.e. the mean loss of an accumulation window, averaged over ranks; ``"grad_norm"``:
    the global pre-clip gradient norm), a :class:`~lit_optim.monitoring.SpikeDetector` flags values above
    ``mean + spike_threshold * std`` of an EMA (``spike_ema_decay``) after ``spike_warmup_steps`` values, and any
    non-finite value. With ``action="log"`` the values wait in a device buffer and are checked at the next logging
    step (no host sync before it; with nothing logged, one every 1024 steps), where the number of spikes since the
    previous row is logged. With ``action="skip"`` every gradient of a spiking step is set to ``None`` before the
    step, so weights, optimizer state and the ``SchedulerStepper``'s schedule are untouched; with
    ``action="raise"`` steps are taken as usual. Both raise ``RuntimeError`` after
    ``max_consecutive_spikes`` spiking steps in a row, and both read the verdict on the host: **one host sync per
    optimizer step**, the documented price of acting on it; the spike is then written at its own row. The values
    are global (rank-averaged loss, global norm), so every rank takes the same decision.

    **Logged keys**, through ``trainer.loggers`` at Lightning's logging step (the row of ``self.log``,
    ``GradientClipping`` and ``LearningRateLogger``; ``trainer.global_step`` with one optimizer), on every
    ``log_every_n_steps``-th step, i.e. where ``(step + 1) % log_every_n_steps == 0``. With several optimizers
    each key gets ``opt{i}/`` after ``optimizer/``.

    - ``optimizer/update_ratio/{group}``, ``optimizer/update_ratio/global``;
    - ``optimizer/update_rms/{group}``, ``optimizer/update_rms/global``;
    - ``optimizer/param_norm/{group}``, ``optimizer/param_norm/global``;
    - ``optimizer/grad_norm/{group}`` (not when sharing a clipper's norm), ``optimizer/grad_norm/global``;
    - ``optimizer/sqrt_v/{group}``, ``optimizer/sqrt_v/global`` (groups with ``exp_avg_sq`` state);
    - ``optimizer/spikes/loss``, ``optimizer/spikes/grad_norm``: spikes since the previous row that carried them
      (for the signals in ``spike_on``);
    - ``optimizer/skipped_steps``: steps skipped so far (``action="skip"``).

    ``{group}`` is the group's ``name`` (``decay``, ``head/no_decay``), else ``group{i}``, as every lit_optim
    callback names groups, never ``global`` or below it (``global`` is logged as ``global-{i}``; no key is a path
    prefix of another). Update statistics are not logged for a step fp16's ``GradScaler`` skipped.

    Args:
        log_every_n_steps: logging period in optimizer steps (>= 1); ``None`` follows the Trainer's.
        spike_on: the signals to watch, any of ``"grad_norm"``, ``"loss"``; ``()`` turns spike detection off.
        spike_threshold: the z of the spike rule, in standard deviations (> 0).
        spike_ema_decay: in (0, 1), the EMA decay of the spike statistics.
        spike_warmup_steps: values that only initialise the spike statistics (>= 1).
        action: ``"log"``, ``"skip"`` or ``"raise"`` (see above).
        max_consecutive_spikes: with ``"skip"``/``"raise"``, raise after this many spiking steps in a row (``None``:
            10); refused with ``"log"``, which never raises.
        foreach: force (``True``) or forbid (``False``) the batched ``torch._foreach_*`` norm kernels.

    Raises:
        ValueError: on an unknown action or signal, an argument out of range, an action with nothing to watch,
            and when fitting starts under ``DeepSpeedStrategy`` or ``FSDPStrategy`` (FSDP1) or after a
            ``GradientClipping`` that cannot share its pre-clip 2-norm.
        TypeError: when ``spike_on`` is a string or an argument has the wrong type.

    Examples:
        >>> OptimizerMonitor(spike_on=["loss"], action="skip").state_key
        "OptimizerMonitor{'spike_on': ('loss',), 'action': 'skip'}"
        >>> OptimizerMonitor(action="skipp")
        Traceback (most recent call last):
        ...
        ValueError: `action` must be one of ['log', 'raise', 'skip'], got 'skipp'. Did you mean 'skip'?
    """

    def __init__(
        self,
        *,
        log_every_n_steps: int | None = None,
        spike_on: Iterable[str] = ("grad_norm", "loss"),
        spike_threshold: float = 6.0,
        spike_ema_decay: float = 0.98,
        spike_warmup_steps: int = 20,
        action: SpikeAction = "log",
        max_consecutive_spikes: int | None = None,
        foreach: bool | None = None,
    ) -> None:
        if log_every_n_steps is not None:
            check_positive_int("log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps
        if spike_on is None or not isinstance(spike_on, Iterable):
            raise TypeError(f"`spike_on` must be a list of signals (or `()` to turn spikes off), got {spike_on!r}.")
        if isinstance(spike_on, str):
            raise TypeError(
                f"`spike_on` must be a list of signals, got the string {spike_on!r}. "
                f"Wrap it: `spike_on=[{spike_on!r}]`."
            )
        self.spike_on = tuple(sorted({check_choice("spike_on", s, _SIGNALS) for s in spike_on}))
        self.spike_threshold = check_positive("spike_threshold", spike_threshold)
        SpikeDetector(self.spike_threshold, spike_ema_decay, spike_warmup_steps)  # the same checks, one voice
        self.spike_ema_decay = float(spike_ema_decay)
        self.spike_warmup_steps = spike_warmup_steps
        self.action: SpikeAction = check_choice("action", action, _ACTIONS)  # type: ignore[assignment]
        if self.action != "log" and not self.spike_on:
            raise ValueError(
                f"`action={action!r}` acts on spikes, but `spike_on` is empty so none can be detected. "
                "Name the signals to watch, e.g. `spike_on=['loss', 'grad_norm']`, or use `action='log'`."
            )
        if max_consecutive_spikes is not None and self.action == "log":
            raise ValueError(
                f"`max_consecutive_spikes={max_consecutive_spikes!r}` only applies to `action='skip'` or "
                "`action='raise'`; with `action='log'` spikes are only logged. Choose an action or drop the argument."
            )
        self.max_consecutive_spikes = check_positive_int(
            "max_consecutive_spikes", 10 if max_consecutive_spikes is None else max_consecutive_spikes
        )
        self.foreach = foreach
        self._trackers: dict[int, SpikeTracker] = {}  # optimizer index -> its spike detectors
        self._pending_detectors: dict[str, dict[str, Any]] = {}  # "{optimizer index}/{signal}" -> checkpointed
        self._pending_counts: dict[str, int] = {}  # spikes not yet logged, from a checkpoint
        self._consecutive: dict[int, int] = {}
        self._skipped_steps = 0
        self._window_loss: Tensor | None = None
        self._pending: dict[int, tuple[int, Any, dict[str, Any]]] = {}  # id(optimizer) -> (index, snapshot, ...)
        self._handles: list[RemovableHandle] = []
        self._trainer: pl.Trainer | None = None
        self._shares_clip_norm: Any = None
        self._warned = False
        self._state_key: str | None = None

    @property
    @override
    def state_key(self) -> str:
        if self._state_key is None:
            self._state_key = self._generate_state_key(spike_on=self.spike_on, action=self.action)
        return self._state_key

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a spike so far (``action="skip"``)."""
        return self._skipped_steps

    def detector(self, signal: str, optimizer_idx: int = 0) -> SpikeDetector | None:
        """The spike detector of ``signal`` (``"loss"`` or ``"grad_norm"``) of an optimizer, once it has run.

        Values wait on the device until the next logging step (or checkpoint, or the end of fitting); reading
        this flushes them first, which synchronises with the device.
        """
        check_choice("signal", signal, _SIGNALS)
        tracker = self._trackers.get(optimizer_idx)
        if tracker is None:
            return None
        tracker.flush()
        return tracker.detectors.get(signal)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_strategy(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._trainer = trainer
        self._window_loss = None
        self._pending = {}
        self._shares_clip_norm = shared_clipper(trainer, self)
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_post_hook(self._after_step))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._trainer, self._shares_clip_norm = None, None
        for tracker in self._trackers.values():
            tracker.flush()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if "loss" not in self.spike_on:
            return
        value = loss.detach().float()
        scaler: torch.amp.GradScaler | None = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # fp16: Lightning hands over the scaled loss
            scale = scaler._get_scale_async()
            value = value if scale is None else value / scale.to(value.device)
        self._window_loss = value if self._window_loss is None else self._window_loss + value

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        self._before_step(trainer, optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        detectors = {
            f"{idx}/{signal}": state for idx, t in self._trackers.items() for signal, state in t.state_dict().items()
        }  # flushes the queued values first, so the counts below are complete
        counts = {f"{i}/{s}": n for i, t in self._trackers.items() for s, n in t.counts.items()}
        return {
            "detectors": {**self._pending_detectors, **detectors},
            "spike_counts": {**self._pending_counts, **counts},
            "consecutive": dict(self._consecutive),
            "skipped_steps": self._skipped_steps,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._trackers = {}
        self._pending_detectors = {str(k): dict(v) for k, v in state_dict.get("detectors", {}).items()}
        self._pending_counts = {str(k): int(v) for k, v in state_dict.get("spike_counts", {}).items()}
        self._consecutive = {int(k): int(v) for k, v in state_dict.get("consecutive", {}).items()}
        self._skipped_steps = int(state_dict.get("skipped_steps", 0))

    # -- internals -------------------------------------------------------------------------------------------

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending = {}

    def _tracker(self, idx: int) -> SpikeTracker:
        tracker = self._trackers.get(idx)
        if tracker is None:
            tracker = SpikeTracker(self.spike_on, self.spike_threshold, self.spike_ema_decay, self.spike_warmup_steps)
            saved = {s: self._pending_detectors.pop(f"{idx}/{s}") for s in self.spike_on
                     if f"{idx}/{s}" in self._pending_detectors}  # fmt: skip
            tracker.load_state_dict(saved)
            tracker.counts.update({s: self._pending_counts.pop(f"{idx}/{s}", 0) for s in self.spike_on})
            self._trackers[idx] = tracker
        return tracker

    def _before_step(self, trainer: pl.Trainer, optimizer: Optimizer) -> None:
        idx = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), None)
        loss, self._window_loss = self._window_loss, None
        scaler: torch.amp.GradScaler | None = getattr(trainer.precision_plugin, "scaler", None)
        if self._pending.pop(id(optimizer), None) is not None and scaler is None and not self._warned:
            self._warned = True  # fp16's GradScaler skips steps legitimately; anything else never ran our hook
            rank_zero_warn(
                f"OptimizerMonitor: `{type(optimizer).__name__}.step()` did not run the optimizer's step post-hooks, "
                "so its update statistics cannot be measured. Call `torch.optim.Optimizer.__init__` in the optimizer's "
                "`__init__` (it installs the hooks).",
                category=UserWarning,
            )
        if idx is None:
            return
        step = logging_step(trainer)  # the row GradientClipping, LearningRateLogger and `self.log` use
        groups = [list(group["params"]) for group in optimizer.param_groups]
        grads = [[p.grad for p in group if p.grad is not None] for group in groups]
        if not any(grads):  # `training_step` returned None, or an earlier callback skipped: no step follows
            return
        grad_scale: Tensor | None = None
        if scaler is not None and still_scaled(scaler, optimizer):
            if not getattr(optimizer, "_step_supports_amp_scaling", False):
                return  # Lightning did not unscale because `training_step` returned None: no step follows
            grad_scale = scaler._get_scale_async()  # a fused optimizer unscales inside its step
        log = is_logging_step(trainer, self.log_every_n_steps, step)
        metrics: dict[str, Tensor | float] = {}
        total = self._shared_norm(optimizer)
        # a clipper ran first: its pre-clip norm or none (the gradients seen here may already be clipped)
        if self._shares_clip_norm is None and (log or "grad_norm" in self.spike_on):
            measured = grouped_norms(grads if log else [[g for gs in grads for g in gs]], 2.0, self.foreach)
            total = measured[0] if grad_scale is None else measured[0] / grad_scale
            if log:
                per_group = measured[1] if grad_scale is None else measured[1] / grad_scale
                nonempty = [bool(group) for group in groups]
                metrics.update(group_values("grad_norm", per_group, total, nonempty))
        elif total is not None and log:
            metrics["grad_norm"] = total
        if self.spike_on:
            self._detect(trainer, optimizer, idx, loss, total, write_now=not log)
        if log:
            self._pending[id(optimizer)] = (idx, snapshot(groups), metrics)

    def _shared_norm(self, optimizer: Optimizer) -> Tensor | None:
        norm = None if self._shares_clip_norm is None else self._shares_clip_norm.pre_clip_norm(optimizer)
        return norm if isinstance(norm, Tensor) else None

    def _detect(
        self, trainer: pl.Trainer, optimizer: Optimizer, idx: int, loss: Tensor | None, norm: Tensor | None,
        write_now: bool,
    ) -> None:
        """Queue this step's values; with ``action="skip"``/``"raise"``, decide on them now (a host sync)."""
        values = {"grad_norm": norm, "loss": None if loss is None else reduce_mean(trainer, loss)}
        tracker = self._tracker(idx)
        full = tracker.record([values[s] for s in self.spike_on])
        if self.action == "log":
            if full:  # nothing logged for `capacity` steps: make room (one sync per 1024 steps)
                tracker.flush()
            return
        verdicts = tracker.flush()  # the documented host sync of action="skip"/"raise"
        flags = verdicts[-1] if verdicts else []
        if not any(flags):
            self._consecutive[idx] = 0
            return
        in_a_row = self._consecutive[idx] = self._consecutive.get(idx, 0) + 1
        if self.action == "skip":
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._skipped_steps += 1
        if write_now:  # a non-logging step: the spike is still written, at its own row
            self._write(trainer, idx, {})
        if in_a_row >= self.max_consecutive_spikes:
            names = [s for s, f in zip(self.spike_on, flags, strict=True) if f]
            raise RuntimeError(
                f"OptimizerMonitor: {in_a_row} consecutive optimizer steps spiked (last one in {names} at global step "
                f"{trainer.global_step}; `max_consecutive_spikes={self.max_consecutive_spikes}`). Training looks "
                "diverged: lower the learning rate, add warmup or clipping, or raise `spike_threshold`."
            )

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        pending = self._pending.pop(id(optimizer), None)
        if pending is None or self._trainer is None:
            return
        idx, before, metrics = pending
        groups = [list(group["params"]) for group in optimizer.param_groups]
        if [len(g) for g in groups] != [len(g) for g in before]:  # groups changed inside the step: nothing to compare
            return
        stats = update_stats(groups, before, self.foreach)
        nonempty = [bool(g) for g in groups]  # a group without parameters has no ratio to report
        metrics.update(group_values("update_ratio", stats.update_ratio, stats.total_update_ratio, nonempty))
        metrics.update(group_values("update_rms", stats.update_rms, stats.total_update_rms, nonempty))
        metrics.update(group_values("param_norm", stats.param_norm, stats.total_param_norm, nonempty))
        moments = second_moment_means(groups, optimizer.state, foreach=self.foreach)
        if moments is not None:
            total, per_group, present = moments
            metrics.update(group_values("sqrt_v", per_group, total, present))
        self._write(self._trainer, idx, metrics, names=group_names(optimizer.param_groups, reserved=["global"]))

    def _write(
        self, trainer: pl.Trainer, idx: int, metrics: dict[str, Tensor | float], names: list[str] | None = None
    ) -> None:
        tracker = self._trackers.get(idx)
        if tracker is not None:
            tracker.flush()  # one host transfer for every value queued since the last row
            metrics.update({f"spikes/{s}": float(c) for s, c in tracker.pop_counts().items()})
        if self.action == "skip":
            metrics["skipped_steps"] = float(self._skipped_steps)
        if not metrics:
            return
        row = host_row(metrics, names or [])
        prefix = "optimizer/" if len(trainer.optimizers) <= 1 else f"optimizer/opt{idx}/"
        log_metrics(trainer, {f"{prefix}{k}": v for k, v in row.items()})

