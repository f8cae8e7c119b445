"""GradientClipping's argument and Trainer checks, per-optimizer plans (plumbing of ``callbacks/clipping.py``)."""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor
from torch.optim import Optimizer

from lit_optim._logging import group_names, log_metrics
from lit_optim.callbacks.stepper import SchedulerStepper

__all__ = [
    "DOUBLE_CLIP_ERROR",
    "MODE_ARGS",
    "STATE_KEY_ARGS",
    "Plan",
    "StepNorms",
    "check_decay",
    "check_mode_args",
    "check_patterns",
    "check_percentile",
    "check_trainer",
    "divergence_error",
    "guard_lightning_clipping",
    "log_clipping",
    "release_lightning_clipping",
    "resolve_excluded",
    "to_host",
    "unheld_schedulers_message",
]

#: the arguments each mode reads (``norm_type``, ``skip_nonfinite``, ... apply to every mode)
MODE_ARGS: dict[str, tuple[str, ...]] = {
    "agc": ("agc_clipping", "agc_eps", "agc_exclude"),
    "norm": ("max_norm",),
    "percentile": ("percentile", "window"),
    "value": ("clip_value",),
    "zscore": ("ema_decay", "warmup_steps", "z_threshold"),
}
#: the settings that identify a clipper of each mode in its ``state_key``
STATE_KEY_ARGS: dict[str, tuple[str, ...]] = {
    "agc": ("agc_clipping",),
    "norm": ("max_norm",),
    "percentile": ("percentile", "window"),
    "value": ("clip_value",),
    "zscore": ("z_threshold", "ema_decay"),
}
_BOUND = {"agc": "agc_clipping", "norm": "max_norm", "value": "clip_value"}  # each mode's single bound, if any
_GUARD = "_lit_optim_clip_guard"
DOUBLE_CLIP_ERROR = (
    "`lit_optim.clip_gradients` was called on an optimizer that `GradientClipping` also clips, so its gradients "
    "would be clipped twice (and the second pre-clip norm logged would be the clipped one). Remove the "
    "`clip_gradients(...)` call from `training_step` (the callback clips in `on_before_optimizer_step`, under "
    "manual optimization too), or remove the callback."
)


def check_mode_args(mode: str, given: Mapping[str, object]) -> None:
    """Raise if an argument that ``mode`` does not read was passed (it would be silently ignored)."""
    for name, value in given.items():
        if value is None or name in MODE_ARGS[mode]:
            continue
        owner = next(m for m, names in MODE_ARGS.items() if name in names)
        bound = _BOUND.get(mode)
        if name in _BOUND.values() and bound is not None:
            fix = f"Pass the bound of mode {mode!r} as `{bound}={value!r}`, or set `mode={owner!r}`."
        else:
            fix = f"Remove it, or set `mode={owner!r}`."
        raise ValueError(
            f"`GradientClipping(mode={mode!r})` does not use `{name}` (an argument of mode {owner!r}), got "
            f"`{name}={value!r}`; it would be ignored. {fix} Mode {mode!r} reads {list(MODE_ARGS[mode])}."
        )


def check_patterns(value: object) -> tuple[str, ...]:
    """``agc_exclude`` as a tuple of patterns; a bare string is refused (it would be read letter by letter)."""
    if value is None:
        return ()
    if isinstance(value, str):
        raise TypeError(
            f"`agc_exclude` must be a list of name patterns, got the string {value!r}. "
            f"Wrap it in a list: `agc_exclude=[{value!r}]`."
        )
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"`agc_exclude` must be a list of name patterns (str), got {value!r}.")
    return tuple(value)


def check_decay(value: object) -> float:
    """``ema_decay`` in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"`ema_decay` must be in (0, 1), got {value!r}.")
    return float(value)


def divergence_error(index: int | None, in_a_row: int, limit: int) -> RuntimeError:
    """The error after ``limit`` non-finite steps in a row (``index``: the optimizer's, when there are several)."""
    of_optimizer = f" of optimizer {index}" if index is not None else ""
    return RuntimeError(
        f"The global gradient norm{of_optimizer} was non-finite on {in_a_row} consecutive optimizer steps "
        f"(`max_consecutive_skips={limit}`); every one was skipped. Training has "
        "diverged: lower the learning rate, check the data for inf/nan, or use `precision='bf16-mixed'`."
    )


def check_percentile(value: object) -> float:
    """``percentile`` is a percent in [1, 100]: a fraction such as ``0.9`` is refused as ambiguous."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`percentile` must be a number in [1, 100], got {value!r} ({type(value).__name__}).")
    if 0 < value < 1:
        raise ValueError(
            f"`percentile` is a percent in [1, 100] (numpy.percentile's scale), got {value!r}, which reads as a "
            f"fraction. For the {value * 100:g}th percentile pass `percentile={value * 100:g}`."
        )
    if not 1 <= value <= 100:
        raise ValueError(f"`percentile` must be a percent in [1, 100], got {value!r}.")
    return float(value)


def check_trainer(callback: Any, trainer: pl.Trainer, mode: str, clipping_type: type) -> None:
    """Refuse Trainer setups the callback cannot serve (at ``on_fit_start``)."""
    if trainer.gradient_clip_val:
        raise ValueError(
            f"`Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and `GradientClipping` would clip twice. "
            "Remove `gradient_clip_val` from the Trainer (the callback replaces it)."
        )
    others = [c for c in _callbacks(trainer) if isinstance(c, clipping_type) and c is not callback]
    if others:
        keys = sorted(c.state_key for c in [callback, *others])
        raise ValueError(
            f"The Trainer has {len(keys)} `GradientClipping` callbacks ({', '.join(keys)}); each would clip the "
            "same gradients and log the same keys. Keep one (one callback clips every optimizer)."
        )
    if isinstance(trainer.strategy, DeepSpeedStrategy):
        raise ValueError(
            "`GradientClipping` cannot clip under DeepSpeed: DeepSpeed clips inside its engine. Remove the "
            "callback and set `DeepSpeedStrategy(config={..., 'gradient_clipping': 1.0})` "
            "(or `Trainer(gradient_clip_val=1.0)`, which Lightning passes to DeepSpeed)."
        )
    if isinstance(trainer.strategy, FSDPStrategy):
        if mode == "agc":
            raise ValueError("`mode='agc'` needs whole parameters; FSDP1 shards them. Use `mode='norm'`.")
        if len(trainer.optimizers) > 1:
            raise ValueError(
                "Under `FSDPStrategy` the norm comes from the wrapped module's `clip_grad_norm_`, which covers "
                f"all parameters, but there are {len(trainer.optimizers)} optimizers. Use one optimizer."
            )
    for optimizer in trainer.optimizers:
        if isinstance(getattr(optimizer, "optimizer", optimizer), torch.optim.LBFGS):
            raise ValueError(
                "`GradientClipping` does not support `torch.optim.LBFGS`: LBFGS evaluates its closure up to "
                "`max_iter` times per optimizer step and Lightning calls `on_before_optimizer_step` for each "
                "evaluation, so there is no single gradient per step to measure, clip and log. Remove the callback "
                "(or clip inside your closure)."
            )


def guard_lightning_clipping(trainer: pl.Trainer) -> None:
    """Make Lightning's own clipping (``self.clip_gradients``, ``configure_gradient_clipping``) raise while fitting.

    Both end in ``trainer.precision_plugin.clip_gradients(optimizer, clip_val, ...)``, which does nothing for
    ``clip_val <= 0``; any positive value would clip gradients ``GradientClipping`` already clipped (or will).
    The guard is an instance attribute, removed by :func:`release_lightning_clipping`.
    """
    plugin = trainer.precision_plugin
    if _GUARD in vars(plugin):
        return
    original = plugin.clip_gradients

    def clip_gradients(optimizer: Any, clip_val: float = 0.0, *args: Any, **kwargs: Any) -> None:
        if clip_val and clip_val > 0:
            raise ValueError(
                f"Lightning was asked to clip gradients (`clip_val={clip_val!r}`: `self.clip_gradients(...)` in "
                "`training_step` or an overridden `configure_gradient_clipping`), but `GradientClipping` already "
                "clips every optimizer's gradients in `on_before_optimizer_step`: they would be clipped twice. "
                "Remove that call, or remove the callback."
            )
        original(optimizer, clip_val, *args, **kwargs)

    vars(plugin)["clip_gradients"] = clip_gradients
    vars(plugin)[_GUARD] = True


def release_lightning_clipping(trainer: pl.Trainer) -> None:
    """Undo :func:`guard_lightning_clipping`."""
    plugin = trainer.precision_plugin
    if vars(plugin).pop(_GUARD, False):
        vars(plugin).pop("clip_gradients", None)


def unheld_schedulers_message(trainer: pl.Trainer) -> str | None:
    """The warning for a skipped step when a per-step scheduler is not stepped by ``SchedulerStepper``."""
    if any(isinstance(c, SchedulerStepper) for c in _callbacks(trainer)):
        return None
    names = [
        config.name or type(config.scheduler).__name__
        for config in trainer.lr_scheduler_configs
        if config.interval == "step" and not config.reduce_on_plateau
    ]
    if not names:
        return None
    return (
        f"`GradientClipping(skip_nonfinite=True)` skipped a non-finite optimizer step, but the per-step LR "
        f"scheduler(s) {names} are stepped by Lightning (or by your `scheduler.step()` under manual optimization), "
        "which advances them on skipped steps too: the schedule now runs ahead of the optimizer. Add "
        "`lit_optim.SchedulerStepper()` to the Trainer's callbacks: it steps schedulers only after real optimizer "
        "steps. (Warned once.)"
    )


@dataclass
class Plan:
    """What one optimizer's parameters allow, worked out once (and again if param groups are added)."""

    optimizer: Optimizer
    index: int  # in trainer.optimizers
    n_groups: int
    plain: bool  # every parameter a non-empty plain tensor, all on one device with one dtype: no grouping needed

    @classmethod
    def of(cls, optimizer: Optimizer, index: int) -> Plan:
        """The plan of ``optimizer``, the ``index``-th of the Trainer's."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        kinds = {(p.device, p.dtype) for p in params}
        plain = len(kinds) == 1 and all(type(p) in (Tensor, torch.nn.Parameter) and p.numel() for p in params)
        return cls(optimizer, index, len(optimizer.param_groups), plain)


def resolve_excluded(pl_module: pl.LightningModule, patterns: tuple[str, ...]) -> set[int]:
    """The ids of the parameters ``agc_exclude`` names; a pattern that matches nothing raises."""
    named = dict(pl_module.named_parameters())
    excluded: set[int] = set()
    for pattern in patterns:
        hits = [p for name, p in named.items() if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            examples = ", ".join(repr(n) for n in list(named)[:3])
            raise ValueError(
                f"`agc_exclude` pattern {pattern!r} matched no parameter. Parameters look like: {examples}, ... "
                "HINT: patterns are fnmatch globs over `named_parameters()` names, e.g. 'head.*'."
            )
        excluded.update(id(p) for p in hits)
    return excluded


def to_host(metrics: Mapping[str, Tensor | float]) -> dict[str, float]:
    """``metrics`` as host floats, reading every tensor with one host sync."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, Tensor)}
    host: dict[str, float] = {}
    if tensors:
        device = next(iter(tensors.values())).device
        values = torch.stack([v.detach().to(device=device, dtype=torch.float32) for v in tensors.values()]).tolist()
        host = dict(zip(tensors, values, strict=True))
    return {k: float(host[k] if isinstance(v, Tensor) else v) for k, v in metrics.items()}


def _callbacks(trainer: pl.Trainer) -> list[Any]:
    return list(getattr(trainer, "callbacks", []))


def log_clipping(
    trainer: pl.Trainer,
    index: int,
    optimizer: Optimizer,
    metrics: dict[str, Tensor | float],
    per_group: Tensor | None,
    skipped_steps: int | None,
) -> None:
    """Log one optimizer's clipping metrics under ``grad_clip/`` (``grad_clip/opt{index}/`` with several)."""
    if per_group is not None:
        names = group_names(optimizer.param_groups)
        metrics.update({f"group_norm/{name}": v for name, v in zip(names, per_group.unbind(), strict=True)})
    if skipped_steps is not None:
        metrics["skipped_steps"] = float(skipped_steps)
    prefix = "grad_clip/" if len(trainer.optimizers) <= 1 else f"grad_clip/opt{index}/"
    log_metrics(trainer, {f"{prefix}{k}": v for k, v in to_host(metrics).items()})


class StepNorms:
    """Each optimizer's pre-clip norm of the current step: valid while ``trainer.global_step`` has not moved.

    Lightning advances ``global_step`` right after every optimizer step (also one the fp16 ``GradScaler``
    skipped, and per optimizer under manual optimization), so a norm is readable from the moment it is put until
    its optimizer step ends. The Trainer is held weakly and never pickled.
    """

    def __init__(self) -> None:
        self._trainer: weakref.ref[pl.Trainer] | None = None
        self._norms: dict[int, tuple[Tensor, int]] = {}

    def start(self, trainer: pl.Trainer) -> None:
        """Begin a run."""
        self._trainer, self._norms = weakref.ref(trainer), {}

    def stop(self) -> None:
        """End a run: forget the Trainer and the norms."""
        self._trainer, self._norms = None, {}

    def put(self, optimizer: Optimizer, norm: Tensor, step: int) -> None:
        """Record ``optimizer``'s pre-clip norm at global step ``step``."""
        self._norms[id(optimizer)] = (norm, step)

    def get(self, optimizer: object) -> Tensor | None:
        """The norm put for ``optimizer`` at the current global step, else ``None``."""
        trainer = self._trainer() if self._trainer is not None else None
        entry = self._norms.get(id(optimizer))
        return entry[0] if trainer is not None and entry is not None and entry[1] == trainer.global_step else None

    def __getstate__(self) -> dict[str, Any]:
        return {"_trainer": None, "_norms": {}}
