"""Gradient clipping: exact global norms, adaptive thresholds, skip-on-non-finite, logged per named group."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from typing_extensions import override

from lit_optim._logging import logging_step, skip_unused_hooks
from lit_optim._validation import check_choice, check_positive, check_positive_int
from lit_optim.callbacks._clip_setup import (
    DOUBLE_CLIP_ERROR,
    STATE_KEY_ARGS,
    Plan,
    StepNorms,
    check_decay,
    check_mode_args,
    check_patterns,
    check_percentile,
    check_trainer,
    divergence_error,
    guard_lightning_clipping,
    log_clipping,
    release_lightning_clipping,
    resolve_excluded,
    unheld_schedulers_message,
)
from lit_optim.clipping.functional import CLIPPED_BY_FUNCTION, check_flag, check_norm_type, still_scaled
from lit_optim.clipping.norms import (
    AGC_DTENSOR_ERROR,
    agc_,
    clip_by_coef_,
    clip_coef,
    clip_value_,
    grouped_norms,
    plain_scale_,
    plain_total_norm,
)
from lit_optim.clipping.thresholds import PercentileThreshold, ZScoreThreshold

__all__ = ["GradientClipping"]

ClipMode = Literal["norm", "value", "agc", "percentile", "zscore"]
_MODES = ("norm", "value", "agc", "percentile", "zscore")
_NORM_MODES = ("norm", "percentile", "zscore")


class GradientClipping(Callback):
    r"""Clip gradients once per optimizer step, where they are unscaled, and log their norms.

    Runs in ``on_before_optimizer_step``: after the whole accumulation window's backward passes and after
    Lightning's fp16 ``GradScaler.unscale_``, in automatic and manual optimization alike. A fused optimizer
    (``AdamW(fused=True)``) unscales inside its own step: its scale is divided out of the norms and bounds.

    Modes (``mode=``), each with its own arguments; passing an argument of another mode raises ``ValueError``
    (``GradientClipping(0.5, mode="value")`` would otherwise clamp at the default, ignoring the 0.5):

    - ``"norm"`` (``max_norm``, default 1.0): ``clip_grad_norm_``: multiply all gradients of the optimizer by
      ``min(max_norm / (norm + 1e-6), 1)`` where ``norm`` is the global ``norm_type``-norm.
    - ``"value"`` (``clip_value``, default 1.0): clamp each element to ``[-clip_value, clip_value]``.
    - ``"agc"`` (``agc_clipping`` 0.01, ``agc_eps`` 1e-3, ``agc_exclude`` globs such as ``"head.*"``): AGC (Brock
      et al. 2021), unit-wise: a unit's gradient (a row of a weight, a bias) is rescaled to
      ``agc_clipping * max(||W_i||, agc_eps)`` when ``||G_i|| / max(||W_i||, agc_eps) > agc_clipping``.
    - ``"percentile"`` (``percentile`` 10, ``window`` 1000): AutoClip: clip the norm to the ``percentile``-th
      percentile (in percent, ``numpy.percentile``) of the last ``window`` global norms, the current one included.
    - ``"zscore"`` (``z_threshold`` 2.5, ``ema_decay`` 0.97, ``warmup_steps`` 25): clip the norm to
      ``mean + z_threshold * std`` of an EMA of past clipped norms (see ``ZScoreThreshold``).

    Norms are global (DDP; DTensor/FSDP2 with one all-reduce; FSDP1 through the wrapped module's
    ``clip_grad_norm_``, total only), so adaptive thresholds are identical on every rank. DeepSpeed is refused.

    One clipper per Trainer: a second ``GradientClipping``, ``Trainer(gradient_clip_val=...)``, Lightning's
    ``self.clip_gradients(opt, <positive value>)`` (or an overridden ``configure_gradient_clipping`` that clips)
    and :func:`lit_optim.clip_gradients` on an optimizer this callback clips all raise ``ValueError``: the
    gradients would be clipped twice. ``torch.optim.LBFGS`` is refused (its closure, and so this hook, runs up to
    ``max_iter`` times per optimizer step).

    Non-finite steps (``skip_nonfinite=True``): when the global norm is inf/nan, every gradient of that
    optimizer is set to ``None``, so the optimizer leaves parameters and state untouched and
    ``SchedulerStepper`` does not advance the LR schedule (a per-step scheduler stepped by Lightning would:
    warned once, with the fix). One host sync per step. ``max_consecutive_skips`` skips in a row of one optimizer
    raise ``RuntimeError``. Under fp16 AMP the ``GradScaler`` skips such steps itself (not counted here).
    Without ``skip_nonfinite`` nothing is synchronised except on logging steps.

    Logged keys, through ``trainer.loggers`` at Lightning's own logging step (the rows of ``self.log``:
    ``trainer.global_step`` with one optimizer; once per batch under manual optimization with several, so all
    optimizers of a batch share its row) where ``(step + 1) % log_every_n_steps == 0`` (an optimizer's first
    step in that batch). The prefix ``{p}`` is ``grad_clip/``, or ``grad_clip/opt{i}/`` with several optimizers
    (``i``: index in ``trainer.optimizers``). No key is a path prefix of another (MLflow's file store cannot hold
    both ``a/b`` and ``a/b/c``):

    - ``{p}norm``: pre-clip global norm;
    - ``{p}group_norm/{group}``: pre-clip norm of each param group, by its ``name`` (else ``group{i}``; see
      :func:`lit_optim._logging.group_names`; not under FSDP1);
    - ``{p}threshold`` and ``{p}clip_coef`` (norm, percentile, zscore modes);
    - ``{p}clipped``: 1.0 when the pre-clip norm exceeded the threshold (value mode: an element exceeded
      ``clip_value``; AGC: a unit was rescaled), else 0.0. (torch's ``+ 1e-6`` makes ``clip_coef`` a hair under
      1 at a norm equal to the threshold; that step reads 0.0.);
    - ``{p}clipped_units`` (AGC): number of units rescaled;
    - ``{p}skipped_steps`` (with ``skip_nonfinite``): skipped steps so far, all optimizers together.

    Other callbacks can read this step's pre-clip norm with :meth:`pre_clip_norm` instead of computing it again.

    Args:
        max_norm: largest allowed global norm (``mode="norm"``; default 1.0).
        mode: one of ``"agc"``, ``"norm"``, ``"percentile"``, ``"value"``, ``"zscore"``.
        norm_type: the p of the p-norm used for measuring, logging and norm clipping; ``float("inf")`` allowed.
        clip_value: the clamp bound of ``mode="value"`` (default 1.0).
        agc_clipping: AGC's clipping factor :math:`\lambda` (default 0.01).
        agc_eps: AGC's floor on the parameter norm (default 1e-3).
        agc_exclude: parameter-name globs AGC skips; each must match at least one parameter.
        percentile: the percentile of ``mode="percentile"``, a percent in [1, 100] (default 10); a fraction
            such as 0.9 is refused as ambiguous.
        window: number of recent norms ``mode="percentile"`` keeps (default 1000).
        z_threshold: the z of ``mode="zscore"`` (default 2.5).
        ema_decay: in (0, 1), the EMA decay of ``mode="zscore"`` (default 0.97).
        warmup_steps: unclipped steps that initialise ``mode="zscore"``'s statistics (default 25).
        skip_nonfinite: skip optimizer steps whose global norm is inf/nan (a ``bool``).
        max_consecutive_skips: raise after this many skipped steps in a row (counted per optimizer).
        log_every_n_steps: logging period in steps; ``None`` uses the Trainer's.
        foreach: force (``True``) or forbid (``False``) the batched ``torch._foreach_*`` kernels; ``None``: auto.

    Raises:
        ValueError: on an unknown mode, an argument of another mode or out of range (at construction), and when
            fitting starts with a second clipper (see above), under DeepSpeed, with LBFGS, with an unmatched
            ``agc_exclude`` pattern, or with ``mode="agc"`` on sharded (DTensor) parameters.
        TypeError: on a flag that is not a ``bool``.

    Examples:
        >>> GradientClipping(max_norm=0.5).state_key
        "GradientClipping{'mode': 'norm', 'max_norm': 0.5, 'norm_type': 2.0}"
        >>> GradientClipping(0.5, mode="value")
        Traceback (most recent call last):
        ...
        ValueError: `GradientClipping(mode='value')` does not use `max_norm` (an argument of mode 'norm'), got `max_norm=0.5`; it would be ignored. Pass the bound of mode 'value' as `clip_value=0.5`, or set `mode='norm'`. Mode 'value' reads ['clip_value'].
    """  # noqa: E501

    def __init__(
        self,
        max_norm: float | None = None,
        *,
        mode: ClipMode = "norm",
        norm_type: float = 2.0,
        clip_value: float | None = None,
        agc_clipping: float | None = None,
        agc_eps: float | None = None,
        agc_exclude: tuple[str, ...] | list[str] | None = None,
        percentile: float | None = None,
        window: int | None = None,
        z_threshold: float | None = None,
        ema_decay: float | None = None,
        warmup_steps: int | None = None,
        skip_nonfinite: bool = False,
        max_consecutive_skips: int = 10,
        log_every_n_steps: int | None = None,
        foreach: bool | None = None,
    ) -> None:
        self.mode: ClipMode = check_choice("mode", mode, _MODES)  # type: ignore[assignment]
        given = {"max_norm": max_norm, "clip_value": clip_value, "agc_clipping": agc_clipping, "agc_eps": agc_eps}
        check_mode_args(self.mode, {**given, "agc_exclude": agc_exclude, "percentile": percentile, "window": window,
                                    "z_threshold": z_threshold, "ema_decay": ema_decay, "warmup_steps": warmup_steps})
        self.max_norm = check_positive("max_norm", 1.0 if max_norm is None else max_norm)
        self.norm_type = check_norm_type(norm_type)
        self.clip_value = check_positive("clip_value", 1.0 if clip_value is None else clip_value)
        self.agc_clipping = check_positive("agc_clipping", 0.01 if agc_clipping is None else agc_clipping)
        self.agc_eps = check_positive("agc_eps", 1e-3 if agc_eps is None else agc_eps)
        self.agc_exclude = check_patterns(agc_exclude)
        self.percentile = check_percentile(10.0 if percentile is None else percentile)
        self.window = check_positive_int("window", 1000 if window is None else window)
        self.z_threshold = check_positive("z_threshold", 2.5 if z_threshold is None else z_threshold)
        self.ema_decay = check_decay(0.97 if ema_decay is None else ema_decay)
        self.warmup_steps = check_positive_int("warmup_steps", 25 if warmup_steps is None else warmup_steps)
        self.skip_nonfinite: bool = check_flag("skip_nonfinite", skip_nonfinite)
        self.max_consecutive_skips = check_positive_int("max_consecutive_skips", max_consecutive_skips)
        every = log_every_n_steps
        self.log_every_n_steps = None if every is None else check_positive_int("log_every_n_steps", every)
        self.foreach: bool | None = check_flag("foreach", foreach, optional=True)
        self._skipped_steps = 0
        self._consecutive_skips: dict[int, int] = {}  # optimizer index -> skips in a row
        self._rules: dict[int, PercentileThreshold | ZScoreThreshold] = {}
        self._pending_rules: dict[int, dict[str, Any]] = {}
        self._agc_excluded: set[int] = set()
        self._state_key: str | None = None
        # run time only, set when training starts
        self._plans: dict[int, Plan] = {}  # id(optimizer) -> plan
        self._pre_clip = StepNorms()  # this step's pre-clip norm of each optimizer
        self._logged_at: dict[int, int] = {}  # optimizer index -> logging step last logged
        self._every = 0
        self._scaler: torch.amp.GradScaler | None = None
        self._fsdp = False
        self._schedule_warned = False
        skip_unused_hooks(self)

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it on every hook call; the settings never change after __init__, so build it once.
        if self._state_key is None:
            self._state_key = self._build_state_key()
        return self._state_key

    def _build_state_key(self) -> str:
        bounds = {name: getattr(self, name) for name in STATE_KEY_ARGS[self.mode]}
        return self._generate_state_key(mode=self.mode, **bounds, norm_type=self.norm_type)

    @property
    def skipped_steps(self) -> int:
        """Number of optimizer steps skipped for a non-finite norm so far."""
        return self._skipped_steps

    def threshold_rule(self, optimizer_idx: int = 0) -> PercentileThreshold | ZScoreThreshold | None:
        """The adaptive rule (with its ``history`` / ``stats``) of an optimizer, once it has clipped a step."""
        return self._rules.get(optimizer_idx)

    def pre_clip_norm(self, optimizer: Any) -> Tensor | None:
        """The pre-clip global norm of ``optimizer``'s gradients at the current step, or ``None``.

        A 0-d tensor on the gradients' device (no host sync), the value logged as ``grad_clip/norm``: global
        across ranks, unscaled under fp16, in every mode. Valid from this callback's ``on_before_optimizer_step``
        until the optimizer step ends (``None`` otherwise), so a callback after this one in ``callbacks`` can
        reuse it instead of computing the norm again. Read only.

        Args:
            optimizer: the torch optimizer (or Lightning's ``LightningOptimizer`` wrapping it).

        Examples:
            >>> GradientClipping().pre_clip_norm(torch.optim.SGD([torch.zeros(1, requires_grad=True)])) is None
            True
        """
        return self._pre_clip.get(getattr(optimizer, "optimizer", optimizer))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_trainer(self, trainer, self.mode, GradientClipping)
        if self.mode == "agc":
            if any(isinstance(p, DTensor) for p in pl_module.parameters()):  # sharded by `configure_model`
                raise ValueError(AGC_DTENSOR_ERROR)
            self._agc_excluded = resolve_excluded(pl_module, self.agc_exclude)
        guard_lightning_clipping(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._fsdp = isinstance(trainer.strategy, FSDPStrategy)
        every = self.log_every_n_steps or getattr(trainer, "log_every_n_steps", 50)
        self._every = int(every or 0) if trainer.loggers else 0
        self._plans, self._logged_at = {}, {}
        self._pre_clip.start(trainer)
        for i, wrapped in enumerate(trainer.optimizers):
            optimizer = getattr(wrapped, "optimizer", wrapped)
            self._plans[id(optimizer)] = Plan.of(optimizer, i)
            CLIPPED_BY_FUNCTION.discard(optimizer)  # a mark left by an earlier run without this callback

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._clip(trainer, optimizer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        release_lightning_clipping(trainer)
        self._pre_clip.stop()
        self._plans = {}  # hold no tensors or optimizers after the run

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning skips callbacks' `teardown` after an exception

    @override
    def state_dict(self) -> dict[str, Any]:
        rules = {idx: rule.state_dict() for idx, rule in self._rules.items()}
        return {
            "skipped_steps": self._skipped_steps,
            "consecutive_skips": dict(self._consecutive_skips),
            "rules": {**self._pending_rules, **rules},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skipped_steps = int(state_dict.get("skipped_steps", 0))
        in_a_row = state_dict.get("consecutive_skips", {})
        in_a_row = {0: in_a_row} if isinstance(in_a_row, int) else in_a_row  # saved before it was per optimizer
        self._consecutive_skips = {int(k): int(v) for k, v in in_a_row.items()}
        self._rules = {}
        self._pending_rules = {int(k): v for k, v in state_dict.get("rules", {}).items()}

    def _rule(self, idx: int) -> PercentileThreshold | ZScoreThreshold:
        rule = self._rules.get(idx)
        if rule is None:
            zscore = ZScoreThreshold(self.z_threshold, self.ema_decay, self.warmup_steps)
            rule = PercentileThreshold(self.percentile, self.window) if self.mode == "percentile" else zscore
            if idx in self._pending_rules:
                rule.load_state_dict(self._pending_rules.pop(idx))
            self._rules[idx] = rule
        return rule

    def _clip(self, trainer: pl.Trainer, optimizer: Optimizer) -> None:
        plan = self._plans.get(id(optimizer))
        if plan is None or plan.optimizer is not optimizer or plan.n_groups != len(optimizer.param_groups):
            index = next((i for i, o in enumerate(trainer.optimizers) if getattr(o, "optimizer", o) is optimizer), 0)
            plan = self._plans[id(optimizer)] = Plan.of(optimizer, index)
        if optimizer in CLIPPED_BY_FUNCTION:
            raise ValueError(DOUBLE_CLIP_ERROR)
        idx = plan.index
        step = logging_step(trainer)
        every = self._every
        log = every > 0 and (step + 1) % every == 0 and self._logged_at.get(idx) != step
        groups = optimizer.param_groups
        if log:
            self._logged_at[idx] = step
            grads = [[p.grad for p in g["params"] if p.grad is not None] for g in groups]
            flat = [g for gs in grads for g in gs]
        else:
            flat = [p.grad for g in groups for p in g["params"] if p.grad is not None]
        if not flat:  # `training_step` returned None (or an earlier callback skipped): nothing to measure
            return
        scaler = self._scaler
        grad_scale: Tensor | None = None  # the fp16 scale the gradients still carry, if any
        if scaler is not None and still_scaled(scaler, optimizer):
            if not getattr(optimizer, "_step_supports_amp_scaling", False):
                return  # Lightning did not unscale because `training_step` returned None: no step follows
            grad_scale = scaler._get_scale_async()  # a fused optimizer unscales inside its step: divide it out
        per_group: Tensor | None = None
        if self._fsdp:
            model: Any = trainer.strategy.model
            total = model.clip_grad_norm_(math.inf, self.norm_type)  # measures only: the factor is 1
        elif log:
            total, per_group = grouped_norms(grads, self.norm_type, self.foreach)
        elif plan.plain:
            total = plain_total_norm(flat, self.norm_type, self.foreach)
        else:
            total = grouped_norms([flat], self.norm_type, self.foreach)[0]
        if grad_scale is not None:
            total = total / grad_scale
            per_group = None if per_group is None else per_group / grad_scale
        self._pre_clip.put(optimizer, total, trainer.global_step)
        if self.skip_nonfinite and scaler is None:
            if not bool(torch.isfinite(total)):  # the documented host sync of skip_nonfinite
                self._skip(trainer, optimizer, idx)
                if log:
                    log_clipping(trainer, idx, optimizer, {"norm": total}, per_group, self._skipped_steps)
                return
            self._consecutive_skips[idx] = 0
        metrics: dict[str, Tensor | float] = {"norm": total}
        # value/AGC bounds in the gradients' units: only a fused optimizer under fp16 has them scaled (a sync)
        scale = 1.0 if grad_scale is None or scaler is None or self.mode in _NORM_MODES else scaler.get_scale()
        if self.mode in _NORM_MODES:
            threshold: Tensor | float = self.max_norm if self.mode == "norm" else self._rule(idx).update(total)
            coef = clip_coef(threshold, total)
            if plan.plain:
                plain_scale_(flat, coef, self.foreach)
            else:
                clip_by_coef_(flat, coef, self.foreach)
            if log:
                metrics.update(threshold=threshold, clip_coef=coef, clipped=(total > threshold).float())
        elif self.mode == "value":
            if log:
                amax = grouped_norms([flat], math.inf, self.foreach)[0]
                metrics["clipped"] = (amax > self.clip_value * scale).float()
            clip_value_(flat, self.clip_value * scale, self.foreach)
        else:
            params = [p for g in groups for p in g["params"] if id(p) not in self._agc_excluded]
            units = agc_(params, self.agc_clipping * scale, self.agc_eps)  # ||G||/s > c||W||  <=>  ||G|| > cs||W||
            if log:
                metrics.update(clipped_units=units.float(), clipped=(units > 0).float())
        if log:
            skipped = self._skipped_steps if self.skip_nonfinite else None
            log_clipping(trainer, idx, optimizer, metrics, per_group, skipped)

    def _skip(self, trainer: pl.Trainer, optimizer: Optimizer, idx: int) -> None:
        for group in optimizer.param_groups:  # not `zero_grad`, which an optimizer class may redefine
            for p in group["params"]:
                p.grad = None
        self._skipped_steps += 1
        if not self._schedule_warned:
            self._schedule_warned = True
            message = unheld_schedulers_message(trainer)
            if message is not None:
                rank_zero_warn(message, category=UserWarning)
        in_a_row = self._consecutive_skips[idx] = self._consecutive_skips.get(idx, 0) + 1
        if in_a_row >= self.max_consecutive_skips:
            raise divergence_error(idx if len(trainer.optimizers) > 1 else None, in_a_row, self.max_consecutive_skips)
