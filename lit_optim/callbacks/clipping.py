"""Gradient clipping: exact global norms, adaptive thresholds, skip-on-non-finite, logged per named group."""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from typing_extensions import override

from lit_optim._logging import group_names, is_logging_step, log_metrics, optimizer_step
from lit_optim._validation import check_choice, check_positive, check_positive_int
from lit_optim.clipping.functional import (
    check_norm_type,
    optimizer_grads,
    still_scaled,
)
from lit_optim.clipping.norms import AGC_DTENSOR_ERROR, agc_, clip_by_coef_, clip_coef, clip_value_, grouped_norms
from lit_optim.clipping.thresholds import PercentileThreshold, ZScoreThreshold

__all__ = ["GradientClipping"]

ClipMode = Literal["norm", "value", "agc", "percentile", "zscore"]
_MODES = ("norm", "value", "agc", "percentile", "zscore")
_NORM_MODES = ("norm", "percentile", "zscore")


class GradientClipping(Callback):
    r"""Clip gradients once per optimizer step, where they are unscaled, and log their norms.

    Runs in ``on_before_optimizer_step``: after the whole accumulation window's backward passes and after
    Lightning's fp16 ``GradScaler.unscale_``, in automatic and manual optimization alike. A fused optimizer
    (``AdamW(fused=True)``) unscales inside its own step, so Lightning leaves its gradients scaled: the scale is
    divided out of the norms and bounds (Lightning's own clipping refuses such optimizers). A window whose last
    ``training_step`` returned ``None`` under fp16 is neither unscaled nor stepped by Lightning: it is ignored.

    Modes (``mode=``):

    - ``"norm"`` (default): ``torch.nn.utils.clip_grad_norm_`` semantics: multiply all gradients of the
      optimizer by ``min(max_norm / (norm + 1e-6), 1)`` where ``norm`` is the global ``norm_type``-norm.
    - ``"value"``: clamp each element to ``[-clip_value, clip_value]`` (``clip_grad_value_``).
    - ``"agc"``: adaptive gradient clipping (Brock et al. 2021), unit-wise: a unit's gradient (a row of a
      weight, a whole bias) is rescaled to ``agc_clipping * max(||W_i||, agc_eps)`` when
      ``||G_i|| / max(||W_i||, agc_eps) > agc_clipping``. Parameters whose name matches a pattern in
      ``agc_exclude`` (``fnmatch`` globs, e.g. ``"head.*"``) are left alone.
    - ``"percentile"``: AutoClip: clip the norm to the ``percentile``-th percentile (``numpy.percentile``,
      linear) of the last ``window`` global norms, the current one included.
    - ``"zscore"``: clip the norm to ``mean + z_threshold * std`` of an EMA (``ema_decay``) of past clipped
      norms, after ``warmup_steps`` unclipped steps (see ``ZScoreThreshold``).

    Norms are global: DDP gradients are already reduced, DTensor (FSDP2 via ``ModelParallelStrategy``)
    gradients are reduced over the mesh with one all-reduce, and ``FSDPStrategy`` (FSDP1) uses the wrapped
    module's ``clip_grad_norm_`` (total norm only). Adaptive thresholds are computed from that global norm,
    so they are identical on every rank. ``DeepSpeedStrategy`` is refused: DeepSpeed clips inside its engine.

    Non-finite steps (``skip_nonfinite=True``): when the global norm is inf/nan, every gradient of that
    optimizer is set to ``None``, so the optimizer leaves parameters and state untouched and
    ``SchedulerStepper`` does not advance the LR schedule. Deciding this costs one host sync per step.
    After ``max_consecutive_skips`` skips in a row of one optimizer a ``RuntimeError`` is raised. Under fp16 AMP the
    ``GradScaler`` already skips such steps, so they are left to it (not counted).
    Without ``skip_nonfinite`` nothing is synchronised except on logging steps.

    Logged keys (through ``trainer.loggers`` at ``step=trainer.global_step``, on every ``log_every_n_steps``-th
    step of each optimizer, i.e. where ``(global_step + 1) % log_every_n_steps == 0`` with one optimizer; with
    several optimizers the prefix is ``grad_clip/opt{i}/``):

    - ``grad_clip/norm``: pre-clip global norm; ``grad_clip/group_norm/{group}``: pre-clip norm of each param group,
      by its ``name`` (else ``group{i}``; not under FSDP1); :meth:`pre_clip_norm` hands the global one (on the device)
      to a callback after this one (``OptimizerMonitor``), so the norm is computed once;
    - ``grad_clip/threshold`` and ``grad_clip/clip_coef`` (norm, percentile, zscore modes);
    - ``grad_clip/clipped``: 1.0 when this step changed the gradients, else 0.0;
      ``grad_clip/clipped_units`` (AGC): number of units rescaled;
    - ``grad_clip/skipped_steps`` (with ``skip_nonfinite``): skipped steps so far.

    Args:
        max_norm: largest allowed global norm (``mode="norm"``).
        mode: one of ``"agc"``, ``"norm"``, ``"percentile"``, ``"value"``, ``"zscore"``.
        norm_type: the p of the p-norm used for measuring, logging and norm clipping; ``float("inf")`` allowed.
        clip_value: the clamp bound of ``mode="value"``.
        agc_clipping: AGC's clipping factor :math:`\lambda`.
        agc_eps: AGC's floor on the parameter norm.
        agc_exclude: parameter-name globs AGC skips; each must match at least one parameter.
        percentile: in (0, 100], the percentile of ``mode="percentile"``.
        window: number of recent norms ``mode="percentile"`` keeps.
        z_threshold: the z of ``mode="zscore"``.
        ema_decay: in (0, 1), the EMA decay of ``mode="zscore"``.
        warmup_steps: unclipped steps that initialise ``mode="zscore"``'s statistics.
        skip_nonfinite: skip optimizer steps whose global norm is inf/nan.
        max_consecutive_skips: raise after this many skipped steps in a row (counted per optimizer).
        log_every_n_steps: logging period in optimizer steps; ``None`` uses the Trainer's.
        foreach: force (``True``) or forbid (``False``) the batched ``torch._foreach_*`` kernels.

    Raises:
        ValueError: on an unknown mode or an argument out of range (at construction), and when fitting starts
            with ``Trainer(gradient_clip_val=...)`` also set, under DeepSpeed, with an unmatched
            ``agc_exclude`` pattern, or with ``mode="agc"`` on sharded (DTensor) parameters.

    Example:
        >>> GradientClipping(max_norm=0.5).state_key
        "GradientClipping{'mode': 'norm', 'max_norm': 0.5, 'norm_type': 2.0}"
        >>> GradientClipping(mode="percentle")
        Traceback (most recent call last):
        ...
        ValueError: `mode` must be one of ['agc', 'norm', 'percentile', 'value', 'zscore'], got 'percentle'. Did you mean 'percentile'?
    """  # noqa: E501

    def __init__(
        self,
        max_norm: float = 1.0,
        *,
        mode: ClipMode = "norm",
        norm_type: float = 2.0,
        clip_value: float = 1.0,
        agc_clipping: float = 0.01,
        agc_eps: float = 1e-3,
        agc_exclude: tuple[str, ...] | list[str] = (),
        percentile: float = 10.0,
        window: int = 1000,
        z_threshold: float = 2.5,
        ema_decay: float = 0.97,
        warmup_steps: int = 25,
        skip_nonfinite: bool = False,
        max_consecutive_skips: int = 10,
        log_every_n_steps: int | None = None,
        foreach: bool | None = None,
    ) -> None:
        self.mode: ClipMode = check_choice("mode", mode, _MODES)  # type: ignore[assignment]
        self.max_norm = check_positive("max_norm", max_norm)
        self.norm_type = check_norm_type(norm_type)
        self.clip_value = check_positive("clip_value", clip_value)
        self.agc_clipping = check_positive("agc_clipping", agc_clipping)
        self.agc_eps = check_positive("agc_eps", agc_eps)
        patterns: object = agc_exclude
        if isinstance(patterns, str):
            raise TypeError(
                f"`agc_exclude` must be a list of name patterns, got the string {patterns!r}. "
                f"Wrap it in a list: `agc_exclude=[{patterns!r}]`."
            )
        self.agc_exclude = tuple(agc_exclude)
        if not _is_number(percentile) or not 0 < percentile <= 100:
            raise ValueError(f"`percentile` must be in (0, 100], got {percentile!r}.")
        self.percentile = float(percentile)
        self.window = check_positive_int("window", window)
        self.z_threshold = check_positive("z_threshold", z_threshold)
        if not _is_number(ema_decay) or not 0 < ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in (0, 1), got {ema_decay!r}.")
        self.ema_decay = float(ema_decay)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.max_consecutive_skips = check_positive_int("max_consecutive_skips", max_consecutive_skips)
        self.log_every_n_steps = None if log_every_n_steps is None else check_positive_int(
            "log_every_n_steps", log_every_n_steps
        )
        self.foreach = foreach
        self._skipped_steps = 0
        self._consecutive_skips: dict[int, int] = {}  # optimizer index -> skips in a row
        self._optimizer_steps: dict[int, int] = {}  # optimizer index -> steps seen, with several optimizers
        self._rules: dict[int, PercentileThreshold | ZScoreThreshold] = {}
        self._pending_rules: dict[int, dict[str, Any]] = {}
        self._agc_excluded: set[int] = set()
        self._norms: dict[int, Tensor] = {}  # id(optimizer) -> this step's pre-clip global norm
        self._state_key: str | None = None

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it on every hook call; the settings never change after __init__, so build it once.
        if self._state_key is None:
            self._state_key = self._build_state_key()
        return self._state_key

    def _build_state_key(self) -> str:
        settings: dict[str, Any] = {"mode": self.mode}
        if self.mode == "norm":
            settings.update(max_norm=self.max_norm)
        elif self.mode == "value":
            settings.update(clip_value=self.clip_value)
        elif self.mode == "agc":
            settings.update(agc_clipping=self.agc_clipping)
        elif self.mode == "percentile":
            settings.update(percentile=self.percentile, window=self.window)
        else:
            settings.update(z_threshold=self.z_threshold, ema_decay=self.ema_decay)
        settings["norm_type"] = self.norm_type
        return self._generate_state_key(**settings)

    @property
    def skipped_steps(self) -> int:
        """Number of optimizer steps skipped for a non-finite norm so far."""
        return self._skipped_steps

    def threshold_rule(self, optimizer_idx: int = 0) -> PercentileThreshold | ZScoreThreshold | None:
        """The adaptive rule (with its ``history`` / ``stats``) of an optimizer, once it has clipped a step."""
        return self._rules.get(optimizer_idx)

    def pre_clip_norm(self, optimizer: Optimizer) -> Tensor | None:
        """The pre-clip global norm of ``optimizer``'s gradients this step (a device tensor), or ``None``."""
        return self._norms.get(id(optimizer))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_trainer(trainer)
        if self.mode == "agc":
            if any(isinstance(p, DTensor) for p in pl_module.parameters()):  # sharded by `configure_model`
                raise ValueError(AGC_DTENSOR_ERROR)
            self._agc_excluded = self._resolve_excluded(pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        self._clip(trainer, optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        rules = {idx: rule.state_dict() for idx, rule in self._rules.items()}
        return {
            "skipped_steps": self._skipped_steps,
            "consecutive_skips": dict(self._consecutive_skips),
            "optimizer_steps": dict(self._optimizer_steps),
            "rules": {**self._pending_rules, **rules},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skipped_steps = int(state_dict.get("skipped_steps", 0))
        in_a_row = state_dict.get("consecutive_skips", {})
        in_a_row = {0: in_a_row} if isinstance(in_a_row, int) else in_a_row  # saved before it was per optimizer
        self._consecutive_skips = {int(k): int(v) for k, v in in_a_row.items()}
        self._optimizer_steps = {int(k): int(v) for k, v in state_dict.get("optimizer_steps", {}).items()}
        self._rules = {}
        self._pending_rules = {int(k): v for k, v in state_dict.get("rules", {}).items()}

    # -- internals -------------------------------------------------------------------------------------------

    def _check_trainer(self, trainer: pl.Trainer) -> None:
        if trainer.gradient_clip_val:
            raise ValueError(
                f"`Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and `GradientClipping` would clip twice. "
                "Remove `gradient_clip_val` from the Trainer (the callback replaces it)."
            )
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError(
                "`GradientClipping` cannot clip under DeepSpeed: DeepSpeed clips inside its engine. Remove the "
                "callback and set `DeepSpeedStrategy(config={..., 'gradient_clipping': 1.0})` "
                "(or `Trainer(gradient_clip_val=1.0)`, which Lightning passes to DeepSpeed)."
            )
        if isinstance(trainer.strategy, FSDPStrategy):
            if self.mode == "agc":
                raise ValueError("`mode='agc'` needs whole parameters; FSDP1 shards them. Use `mode='norm'`.")
            if len(trainer.optimizers) > 1:
                raise ValueError(
                    "Under `FSDPStrategy` the norm comes from the wrapped module's `clip_grad_norm_`, which covers "
                    f"all parameters, but there are {len(trainer.optimizers)} optimizers. Use one optimizer."
                )

    def _resolve_excluded(self, pl_module: pl.LightningModule) -> set[int]:
        named = dict(pl_module.named_parameters())
        excluded: set[int] = set()
        for pattern in self.agc_exclude:
            hits = [p for name, p in named.items() if fnmatch.fnmatchcase(name, pattern)]
            if not hits:
                examples = ", ".join(repr(n) for n in list(named)[:3])
                raise ValueError(
                    f"`agc_exclude` pattern {pattern!r} matched no parameter. Parameters look like: {examples}, ... "
                    "HINT: patterns are fnmatch globs over `named_parameters()` names, e.g. 'head.*'."
                )
            excluded.update(id(p) for p in hits)
        return excluded

    def _rule(self, idx: int) -> PercentileThreshold | ZScoreThreshold:
        rule = self._rules.get(idx)
        if rule is None:
            rule = (
                PercentileThreshold(self.percentile, self.window)
                if self.mode == "percentile"
                else ZScoreThreshold(self.z_threshold, self.ema_decay, self.warmup_steps)
            )
            if idx in self._pending_rules:
                rule.load_state_dict(self._pending_rules.pop(idx))
            self._rules[idx] = rule
        return rule

    def _clip(self, trainer: pl.Trainer, optimizer: Optimizer) -> None:
        idx = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)
        step = optimizer_step(trainer, idx, self._optimizer_steps)
        self._norms.pop(id(optimizer), None)  # never a previous step's norm
        grads = optimizer_grads(optimizer)
        flat = [g for gs in grads for g in gs]
        if not flat:  # `training_step` returned None (or an earlier callback skipped): nothing to measure
            return
        scaler: torch.amp.GradScaler | None = getattr(trainer.precision_plugin, "scaler", None)
        fp16 = scaler is not None
        grad_scale: Tensor | None = None  # the fp16 scale the gradients still carry, if any
        if scaler is not None and still_scaled(scaler, optimizer):
            if not getattr(optimizer, "_step_supports_amp_scaling", False):
                return  # Lightning did not unscale because `training_step` returned None: no step follows
            grad_scale = scaler._get_scale_async()  # a fused optimizer unscales inside its step: divide it out
        log = is_logging_step(trainer, self.log_every_n_steps, step)
        if isinstance(trainer.strategy, FSDPStrategy):
            model: Any = trainer.strategy.model
            total = model.clip_grad_norm_(math.inf, self.norm_type)  # measures only: the factor is 1
            per_group = None
        else:
            # per-group norms are only logged: on other steps measure the total alone (the same, torch-exact value)
            total, per_group = grouped_norms(grads if log else [flat], self.norm_type, self.foreach)
            per_group = per_group if log else None
        if grad_scale is not None:
            total = total / grad_scale
            per_group = None if per_group is None else per_group / grad_scale
        self._norms[id(optimizer)] = total
        metrics: dict[str, Tensor | float] = {"norm": total}  # only read on logging steps
        if per_group is not None:
            names = group_names(optimizer.param_groups)
            metrics.update({f"group_norm/{name}": v for name, v in zip(names, per_group.unbind(), strict=True)})
        if self.skip_nonfinite and not fp16:
            if not bool(torch.isfinite(total)):  # the documented host sync of skip_nonfinite
                self._skip(optimizer, idx, len(trainer.optimizers))
                if log:
                    self._log(trainer, idx, metrics)
                return
            self._consecutive_skips[idx] = 0
        if self.mode in _NORM_MODES:
            threshold = self.max_norm if self.mode == "norm" else self._rule(idx).update(total)
            coef = clip_coef(threshold, total)
            clip_by_coef_(flat, coef, self.foreach)
            if log:
                metrics.update(threshold=threshold, clip_coef=coef, clipped=(coef < 1).float())
        elif self.mode == "value":
            scale = self._bound_scale(scaler, grad_scale)
            if log:
                amax = grouped_norms([flat], math.inf, self.foreach)[0]
                metrics["clipped"] = (amax > self.clip_value * scale).float()
            clip_value_(flat, self.clip_value * scale, self.foreach)
        else:
            scale = self._bound_scale(scaler, grad_scale)
            params = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in self._agc_excluded]
            units = agc_(params, self.agc_clipping * scale, self.agc_eps)  # ||G||/s > c||W||  <=>  ||G|| > cs||W||
            if log:
                metrics.update(clipped_units=units.float(), clipped=(units > 0).float())
        if log:
            self._log(trainer, idx, metrics)

    @staticmethod
    def _bound_scale(scaler: torch.amp.GradScaler | None, grad_scale: Tensor | None) -> float:
        """The factor value/AGC bounds take in the gradients' units: the fp16 scale they still carry, else 1.

        Only a fused optimizer under fp16 gets here with scaled gradients; reading the scale then syncs.
        """
        return 1.0 if grad_scale is None or scaler is None else scaler.get_scale()

    def _skip(self, optimizer: Optimizer, idx: int, n_optimizers: int) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self._skipped_steps += 1
        in_a_row = self._consecutive_skips[idx] = self._consecutive_skips.get(idx, 0) + 1
        if in_a_row >= self.max_consecutive_skips:
            of_optimizer = f" of optimizer {idx}" if n_optimizers > 1 else ""
            raise RuntimeError(
                f"The global gradient norm{of_optimizer} was non-finite on {in_a_row} consecutive optimizer steps "
                f"(`max_consecutive_skips={self.max_consecutive_skips}`); every one was skipped. Training has "
                "diverged: lower the learning rate, check the data for inf/nan, or use `precision='bf16-mixed'`."
            )

    def _log(self, trainer: pl.Trainer, idx: int, metrics: dict[str, Tensor | float]) -> None:
        if self.skip_nonfinite:
            metrics["skipped_steps"] = float(self._skipped_steps)
        prefix = "grad_clip/" if len(trainer.optimizers) <= 1 else f"grad_clip/opt{idx}/"
        tensors = {k: v for k, v in metrics.items() if isinstance(v, Tensor)}
        device = next(iter(tensors.values())).device
        values = torch.stack([v.detach().to(device=device, dtype=torch.float32) for v in tensors.values()]).tolist()
        host = dict(zip(tensors, values, strict=True))  # one host sync for all tensors
        logged = {f"{prefix}{k}": float(host[k] if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        log_metrics(trainer, logged)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
