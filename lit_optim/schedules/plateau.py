"""Metric-driven learning-rate reduction with ``torch.optim.lr_scheduler.ReduceLROnPlateau`` semantics.

:class:`Plateau` is a frozen spec; :class:`PlateauLR` is the ``LRScheduler`` that applies it to one
optimizer. Unlike torch's class, :class:`PlateauLR` composes with a warmup, keeps its whole state
(best value, bad-evaluation count, cooldown counter, reductions so far) in ``state_dict`` and is stepped by
:class:`~lit_optim.callbacks.stepper.SchedulerStepper`: once per optimizer step (the warmup) and once per
validation run with a fresh, rank-averaged metric (:meth:`PlateauLR.step_metric`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import Metric

from lit_optim._validation import check_choice, check_non_negative, check_ratio
from lit_optim.schedules.base import Warmup, as_warmup
from lit_optim.schedules.durations import Duration, DurationLike, TrainingLength

__all__ = ["Plateau", "PlateauLR"]

Mode = Literal["min", "max"]
ThresholdMode = Literal["rel", "abs"]
MinLrMode = Literal["ratio", "absolute"]
OnMissing = Literal["raise", "warn"]


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 0, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
    return value


@dataclass(frozen=True)
class Plateau:
    r"""Reduce the learning rate when a monitored metric stops improving, after an optional warmup.

    The LR of group *g* at optimizer step *s*, after *k* reductions, is

    .. math::
        \mathrm{lr}_g(s) = p_g \cdot w(s), \qquad p_g = \max(p_g^{\text{prev}} \cdot \text{factor},\ \text{floor}_g),
        \qquad w(s) = \text{warmup.factor}(s, W) \text{ for } s < W, \quad w(s) = 1 \text{ after}

    with :math:`p_g` starting at the group's initial lr, updated only when the decrease exceeds ``eps``
    (exactly ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s rule, as are ``mode``, ``patience``,
    ``threshold``/``threshold_mode`` and ``cooldown``). :math:`w \equiv 1` without a warmup. :math:`W` is the
    warmup's duration in optimizer steps: a duration in epochs or as a fraction of the run is resolved against
    the Trainer by :func:`plateau_scheduler_config` (or the ``length`` given to :class:`PlateauLR`).

    A non-finite metric (NaN, +inf or -inf) counts as "no improvement" and is warned about once; torch's
    class agrees for NaN and +inf but would treat -inf as an improvement in ``"min"`` mode.

    Args:
        monitor: name of the logged metric, e.g. ``"val_loss"``.
        mode: ``"min"`` or ``"max"``; or a torchmetrics ``Metric`` whose ``higher_is_better`` decides it.
        factor: multiplier applied at each reduction, in (0, 1).
        patience: evaluations without improvement tolerated before reducing.
        threshold: minimal change that counts as an improvement.
        threshold_mode: ``"rel"`` (relative to the best value) or ``"abs"``.
        cooldown: evaluations to wait after a reduction before counting bad evaluations again.
        min_lr: floor, one value or one per parameter group.
        min_lr_mode: ``"ratio"`` (floor = ``min_lr`` x the group's initial lr) or ``"absolute"``.
        eps: a reduction smaller than this is ignored.
        warmup: a :class:`~lit_optim.schedules.Warmup` (linear, cosine or exponential, with a start factor) or
            its duration (``int`` steps, ``"1ep"``, ``"5%"``; linear from 0), or ``None``.
        on_missing_monitor: ``"raise"`` (default) when ``monitor`` is not logged at the first validation,
            or ``"warn"`` and skip the reduction step.

    Raises:
        ValueError: on an option outside its allowed values.

    Examples:
        >>> Plateau("val_loss", factor=0.5, patience=2)
        Plateau(monitor='val_loss', mode='min', factor=0.5, patience=2, threshold=0.0001, ...)
    """

    monitor: str
    mode: Mode | Metric = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: ThresholdMode = "rel"
    cooldown: int = 0
    min_lr: float | tuple[float, ...] = 0.0
    min_lr_mode: MinLrMode = "ratio"
    eps: float = 1e-8
    warmup: Warmup | DurationLike | Mapping[str, Any] | None = None
    on_missing_monitor: OnMissing = "raise"

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise TypeError(f"`monitor` must be a non-empty metric name, got {self.monitor!r}.")
        mode = self.mode
        higher = getattr(mode, "higher_is_better", None)
        if not isinstance(mode, str):
            if higher is None:
                raise ValueError(
                    f"`mode` must be one of ['max', 'min'] or a torchmetrics Metric with `higher_is_better` set, "
                    f"got {mode!r}."
                )
            object.__setattr__(self, "mode", "max" if higher else "min")
        check_choice("mode", self.mode, ["min", "max"])
        factor = check_ratio("factor", self.factor)
        if factor >= 1.0:
            raise ValueError(f"`factor` must be in (0, 1), got {self.factor!r}.")
        _check_count("patience", self.patience)
        check_non_negative("threshold", self.threshold)
        check_choice("threshold_mode", self.threshold_mode, ["rel", "abs"])
        _check_count("cooldown", self.cooldown)
        min_lr: object = self.min_lr
        if isinstance(min_lr, list):  # a YAML/JSON config gives a list
            object.__setattr__(self, "min_lr", tuple(min_lr))
        floors = self.min_lr if isinstance(self.min_lr, tuple) else (self.min_lr,)
        for value in floors:
            check_non_negative("min_lr", value)
        check_choice("min_lr_mode", self.min_lr_mode, ["absolute", "ratio"])
        check_non_negative("eps", self.eps)
        object.__setattr__(self, "warmup", as_warmup(self.warmup))
        if isinstance(self.warmup, Warmup) and self.warmup.start_lr is not None:
            raise ValueError(
                "A Plateau warmup scales each group's lr: use `start_factor`, not the absolute `start_lr`."
            )
        check_choice("on_missing_monitor", self.on_missing_monitor, ["raise", "warn"])

    def warmup_factor(self, step: int, warmup_steps: int) -> float:
        """Warmup multiplier at optimizer step ``step`` of a ``warmup_steps``-long warmup (1.0 once it is over).

        Examples:
            >>> Plateau("val_loss", warmup=4).warmup_factor(1, 4)
            0.25
        """
        if not isinstance(self.warmup, Warmup) or step >= warmup_steps:
            return 1.0
        return self.warmup.factor(step, warmup_steps)

    def is_better(self, value: float, best: float) -> bool:
        """Torch's improvement test; a non-finite ``value`` is never better.

        Examples:
            >>> Plateau("val_loss", threshold=0.1).is_better(0.85, 1.0)
            True
        """
        if not math.isfinite(value):
            return False
        if self.threshold_mode == "rel":
            if self.mode == "min":
                return value < best * (1.0 - self.threshold)
            return value > best * (self.threshold + 1.0)
        if self.mode == "min":
            return value < best - self.threshold
        return value > best + self.threshold


@dataclass
class _State:
    best: float
    num_bad_epochs: int = 0
    cooldown_counter: int = 0
    reductions: int = 0
    evaluations: int = 0
    plateau_lrs: list[float] = field(default_factory=list)


class PlateauLR(LRScheduler):
    """Drive one optimizer with a :class:`Plateau` spec.

    ``step()`` advances the warmup by one optimizer step (``last_epoch`` counts optimizer steps);
    ``step_metric(value)`` applies one evaluation of the monitored metric. Normally both are called by
    :class:`~lit_optim.callbacks.stepper.SchedulerStepper`.

    A parameter group added during training (``BaseFinetuning.unfreeze_and_add_param_group``) joins at the lr
    it was given and is reduced with the others from then on; its ``min_lr`` ratio applies to that lr.

    Args:
        optimizer: the wrapped optimizer; each group's current ``lr`` is its initial lr.
        plateau: the spec.
        length: the run's length, needed only for a warmup given in epochs or as a fraction of the run.
        last_epoch: torch's resume index; keep the default and restore with ``load_state_dict``.

    Raises:
        ValueError: ``min_lr`` per group does not match the groups, or a warmup that cannot be resolved.

    Examples:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = PlateauLR(opt, Plateau("val_loss", factor=0.5, patience=0))
        >>> sched.step_metric(1.0), sched.step_metric(2.0), opt.param_groups[0]["lr"]
        (False, True, 0.5)
    """

    def __init__(
        self, optimizer: Optimizer, plateau: Plateau, length: TrainingLength | None = None, last_epoch: int = -1
    ) -> None:
        if not isinstance(plateau, Plateau):
            raise TypeError(f"`plateau` must be a lit_optim.Plateau, got {plateau!r}.")
        self.warmup_steps = _warmup_steps(plateau, length)
        n_groups = len(optimizer.param_groups)
        if isinstance(plateau.min_lr, tuple) and len(plateau.min_lr) != n_groups:
            raise ValueError(
                f"`min_lr` has {len(plateau.min_lr)} values but the optimizer has {n_groups} parameter groups; "
                "pass one value or one per group."
            )
        self.plateau = plateau
        initial = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        self._state = _State(best=math.inf if plateau.mode == "min" else -math.inf, plateau_lrs=list(initial))
        self._warned_nonfinite = False
        super().__init__(optimizer, last_epoch)

    @property
    def reductions(self) -> int:
        """How many evaluations reduced at least one group's lr."""
        return self._state.reductions

    @property
    def best(self) -> float:
        """Best metric value seen so far."""
        return self._state.best

    def min_lrs(self) -> list[float]:
        """The absolute floor of each group."""
        floor = self.plateau.min_lr
        values = list(floor) if isinstance(floor, tuple) else [float(floor)] * len(self.base_lrs)
        if self.plateau.min_lr_mode == "ratio":
            return [v * float(base) for v, base in zip(values, self.base_lrs, strict=True)]
        return [float(v) for v in values]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """LR of each group at the current optimizer step."""
        self._adopt_new_groups(self.last_epoch - 1)  # torch has just advanced `last_epoch`
        factor = self.plateau.warmup_factor(max(self.last_epoch, 0), self.warmup_steps)
        return [p * factor for p in self._state.plateau_lrs]

    def _adopt_new_groups(self, given_at: int) -> None:
        """Groups added after construction (``BaseFinetuning``) join at the lr given them at step ``given_at``."""
        groups = self.optimizer.param_groups
        if len(groups) <= len(self._state.plateau_lrs):
            return
        if isinstance(self.plateau.min_lr, tuple):
            raise ValueError(
                f"`min_lr` has {len(self.plateau.min_lr)} value(s) but the optimizer now has {len(groups)} parameter "
                "groups (one was added during training, e.g. by BaseFinetuning); pass a single `min_lr`."
            )
        now = self.plateau.warmup_factor(max(given_at, 0), self.warmup_steps)
        for group in groups[len(self._state.plateau_lrs) :]:
            lr = float(group["lr"])
            start = lr / now if now > 0 else lr
            group.setdefault("initial_lr", start)
            self.base_lrs.append(float(group["initial_lr"]))
            self._state.plateau_lrs.append(start)

    def step_metric(self, value: float) -> bool:
        """Apply one evaluation of the monitored metric; return whether it reduced the learning rate.

        Args:
            value: the metric of this validation run (already averaged over ranks by the stepper).
        """
        self._adopt_new_groups(self.last_epoch)
        state, spec = self._state, self.plateau
        current = float(value)
        if not math.isfinite(current) and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"Plateau: monitored metric {spec.monitor!r} is {current!r}; it counts as no improvement "
                "(warned once).",
                category=RuntimeWarning,
            )
        state.evaluations += 1
        if spec.is_better(current, state.best):
            state.best = current
            state.num_bad_epochs = 0
        else:
            state.num_bad_epochs += 1
        if state.cooldown_counter > 0:
            state.cooldown_counter -= 1
            state.num_bad_epochs = 0
        reduced = False
        if state.num_bad_epochs > spec.patience:
            for i, (old, floor) in enumerate(zip(state.plateau_lrs, self.min_lrs(), strict=True)):
                new = max(old * spec.factor, floor)
                if old - new > spec.eps:
                    state.plateau_lrs[i] = new
                    reduced = True
            state.cooldown_counter = spec.cooldown
            state.num_bad_epochs = 0
        if reduced:
            state.reductions += 1
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                group["lr"] = lr
            self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]
        return reduced

    def state_dict(self) -> dict[str, Any]:
        """Plain values only: step count, base lrs and the plateau state."""
        s = self._state
        return {
            "last_epoch": self.last_epoch,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
            "best": s.best,
            "num_bad_epochs": s.num_bad_epochs,
            "cooldown_counter": s.cooldown_counter,
            "reductions": s.reductions,
            "evaluations": s.evaluations,
            "plateau_lrs": list(s.plateau_lrs),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._last_lr = list(state_dict.get("_last_lr", self.base_lrs))
        self._state = _State(
            best=float(state_dict["best"]),
            num_bad_epochs=int(state_dict["num_bad_epochs"]),
            cooldown_counter=int(state_dict["cooldown_counter"]),
            reductions=int(state_dict.get("reductions", 0)),
            evaluations=int(state_dict.get("evaluations", 0)),
            plateau_lrs=list(state_dict["plateau_lrs"]),
        )


def _warmup_steps(plateau: Plateau, length: TrainingLength | None) -> int:
    warmup = plateau.warmup
    if not isinstance(warmup, Warmup):
        return 0
    duration = warmup.duration
    assert isinstance(duration, Duration)  # parsed by Warmup
    if duration.unit == "step":
        return int(duration.value)
    if length is None:
        raise ValueError(
            f"Plateau warmup {duration} is relative to the run, whose length is unknown here. Pass the trainer: "
            "`plateau_scheduler_config(opt, plateau, self.trainer)` (or `PlateauLR(..., length=TrainingLength(...))`), "
            "or give the warmup in optimizer steps (an int)."
        )
    steps = duration.to_steps(length)
    if steps >= length.total_steps:
        raise ValueError(
            f"Plateau warmup {duration} resolves to {steps} optimizer steps, not shorter than the run "
            f"({length.total_steps} steps). Use a shorter warmup."
        )
    return steps
