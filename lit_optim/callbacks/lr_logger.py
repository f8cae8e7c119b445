"""Log the learning rate, momentum, betas and weight decay of every optimizer and named param group."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from lit_optim._distributed import is_distributed
from lit_optim._logging import group_names, log_metrics, logging_step, skip_unused_hooks
from lit_optim._validation import check_choice, check_positive_int
from lit_optim.optim.schedule_free import schedule_free_lr
from lit_optim.schedules.scheduler import ScheduleLR

__all__ = ["LearningRateLogger"]

_INTERVALS = ("epoch", "step")
_ON_MISMATCH = ("raise", "warn")
_Keys = tuple[str, str, str, str]  # lr, momentum, beta2, weight_decay keys of one group
_LOGGED = frozenset({"momentum", "betas[0]", "betas[1]", "weight_decay"})  # scheduled fields the keys cover


class LearningRateLogger(Callback):
    r"""Log ``lr``, momentum, ``betas[1]`` and ``weight_decay`` of every param group at Lightning's logging step.

    The values are read from ``optimizer.param_groups`` (the truth the optimizer uses, whoever steps the
    schedule) and written with ``logger.log_metrics(metrics, step=s)`` to every logger of the Trainer, on global
    rank 0 only, where ``s`` is the step Lightning writes ``self.log`` rows at (the training batches that stepped
    so far): ``trainer.global_step`` with one optimizer; under manual optimization with several optimizers it
    advances once per batch (``global_step`` once per optimizer step), so every optimizer's row of a batch, and
    ``GradientClipping``'s, is that batch's row.

    **What a step means.** With ``logging_interval="step"`` the values are read right before a real optimizer
    step (the ``on_before_optimizer_step`` hook, which Lightning calls once per optimizer step, never per
    micro-batch under gradient accumulation), so the row at step ``s`` holds the hyper-parameters that optimizer
    step ``s`` (0-based, counted in optimizer steps, not batches) used. An optimizer is logged at its first step
    in each window ``[k * n - 1, (k + 1) * n - 1)`` of ``n = log_every_n_steps`` steps: that is steps
    ``0, n - 1, 2n - 1, ...``, the rows where Lightning logs ``self.log`` metrics (and ``GradientClipping`` its
    norms), plus the first step so a warmup's start is on record. With ``logging_interval="epoch"`` the values
    are logged once per training epoch, at its start, at the step of the epoch's first optimizer step. A change
    made outside the schedule (for example a plateau reduction after validation) shows up at the next logged step.

    No logged key is a path prefix of another (MLflow's file store cannot hold both ``lr/a`` and ``lr/a/b``):
    group names are made so (see below).

    **Keys.** With one optimizer (the usual case):

    - ``lr/{group}``: ``param_group["lr"]``;
    - ``momentum/{group}``: ``param_group["momentum"]`` (SGD, RMSprop) or else ``param_group["betas"][0]``
      (Adam family); absent when the group has neither;
    - ``beta2/{group}``: ``param_group["betas"][1]``, when the group has ``betas``;
    - ``weight_decay/{group}``: ``param_group["weight_decay"]``, when the group has it;
    - ``effective_lr/{group}``: for a ``schedulefree`` optimizer with its own ``warmup_steps``
      (``AdamWScheduleFree``, ``SGDScheduleFree``), the lr its next step uses, ``lr`` times its warmup factor;
    - ``{field}/{group}`` for every other field a ``ScheduleLR(params=...)`` of that optimizer schedules
      (``eps/{group}``, ``beta3/{group}`` for ``betas[2]``, ``key_1/{group}`` for ``key[1]``).

    ``{group}`` is ``param_group["name"]`` (as set by :func:`lit_optim.param_groups`, e.g. ``decay``,
    ``no_decay``, ``head/decay``), or ``group{i}`` with ``i`` the group's index in ``optimizer.param_groups``
    when it has no name. A name already used by an earlier group of the same optimizer, or a folder of one or
    inside one (``head`` next to ``head/decay``), gets ``-{i}`` appended (with ``/`` turned into ``-`` if needed).
    Groups added during training (``optimizer.add_param_group``, e.g. by Lightning's ``BaseFinetuning``) are
    named by the same rules when first seen, and a group keeps its key for the whole run.

    With several optimizers (manual optimization) every key is qualified with the optimizer's name:
    ``lr/{optimizer}/{group}``, where ``{optimizer}`` is the class name (``SGD``, ``AdamW``) and a repeated
    class gets ``-1``, ``-2``, ... in the order of ``trainer.optimizers`` (``Adam``, ``Adam-1``), as in
    Lightning's ``LearningRateMonitor``.

    **Distributed.** Only global rank 0 builds and writes the metrics. With ``check_consistency_every_n_steps``
    every rank gathers every rank's values (one ``trainer.strategy.all_gather`` of a small float64 tensor,
    which synchronises with the device on those steps only) and raises ``RuntimeError`` (or warns once, with
    ``on_mismatch="warn"``) naming the keys, ranks and values that differ.

    Args:
        logging_interval: ``"step"`` (every ``log_every_n_steps`` optimizer steps) or ``"epoch"`` (once per
            training epoch).
        log_every_n_steps: Logging period in global steps; ``None`` uses the Trainer's ``log_every_n_steps``
            (whose ``0`` disables step logging). Only used with ``logging_interval="step"``.
        log_momentum: Also log ``momentum/...`` and ``beta2/...``.
        log_weight_decay: Also log ``weight_decay/...``.
        strict: Raise instead of warning when the Trainer has no logger.
        check_consistency_every_n_steps: Under multi-process training, check every this many global steps that
            all ranks hold identical values; ``None`` disables the check.
        on_mismatch: ``"raise"`` or ``"warn"`` when the consistency check finds ranks that differ.

    Raises:
        ValueError: If ``logging_interval`` or ``on_mismatch`` is not a known option, or an interval is < 1.
        TypeError: If an interval is not an ``int`` or a flag is not a ``bool``.

    Examples:
        >>> import torch
        >>> from lit_optim import LearningRateLogger
        >>> net = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.AdamW(
        ...     [{"params": [net.weight], "name": "decay"}, {"params": [net.bias], "weight_decay": 0.0}], lr=1e-3
        ... )
        >>> for key, value in LearningRateLogger().optimizer_metrics(optimizer).items():
        ...     print(f"{key} = {value}")
        lr/decay = 0.001
        momentum/decay = 0.9
        beta2/decay = 0.999
        weight_decay/decay = 0.01
        lr/group1 = 0.001
        momentum/group1 = 0.9
        beta2/group1 = 0.999
        weight_decay/group1 = 0.0
        >>> trainer_callback = LearningRateLogger(log_every_n_steps=10)  # Trainer(callbacks=[trainer_callback])
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] = "step",
        log_every_n_steps: int | None = None,
        log_momentum: bool = True,
        log_weight_decay: bool = True,
        strict: bool = False,
        check_consistency_every_n_steps: int | None = None,
        on_mismatch: Literal["raise", "warn"] = "raise",
    ) -> None:
        self.logging_interval = check_choice("logging_interval", logging_interval, _INTERVALS)
        if log_every_n_steps is not None:
            check_positive_int("log_every_n_steps", log_every_n_steps)
        if check_consistency_every_n_steps is not None:
            check_positive_int("check_consistency_every_n_steps", check_consistency_every_n_steps)
        for flag, value in (("log_momentum", log_momentum), ("log_weight_decay", log_weight_decay), ("strict", strict)):
            if not isinstance(value, bool):
                raise TypeError(f"`{flag}` must be a bool, got {value!r} ({type(value).__name__}).")
        self.log_every_n_steps = log_every_n_steps
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.strict = strict
        self.check_consistency_every_n_steps = check_consistency_every_n_steps
        self.on_mismatch = check_choice("on_mismatch", on_mismatch, _ON_MISMATCH)

        self._log_window: dict[int, int] = {}  # optimizer index -> last window logged
        self._check_window: dict[int, int] = {}  # optimizer index -> last window checked
        self._optimizer_index: dict[int, int] = {}  # id(optimizer) -> index in trainer.optimizers
        self._optimizer_prefix: list[str] = []  # "" with one optimizer, "SGD/" with several
        self._group_names: dict[int, list[str]] = {}  # per optimizer: the name of each group, kept for the run
        self._group_keys: dict[int, list[_Keys]] = {}  # per optimizer: the keys of each group
        self._step_every = 0  # resolved logging period; 0 = no step logging
        self._has_logger = False
        self._mismatch_warned = False
        self._state_key: str | None = None
        skip_unused_hooks(self)

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it on every hook call; the settings never change after __init__, so build it once.
        if self._state_key is None:
            self._state_key = self._generate_state_key(
                logging_interval=self.logging_interval, log_every_n_steps=self.log_every_n_steps
            )
        return self._state_key

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # before a checkpoint's state is loaded into this callback
            self._log_window, self._check_window = {}, {}
            self._mismatch_warned = False

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._has_logger = bool(trainer.loggers)
        if not self._has_logger:
            message = (
                "LearningRateLogger found no logger on the Trainer, so nothing will be logged. "
                "Pass `logger=...` to the Trainer (e.g. `CSVLogger` or `TensorBoardLogger`)"
            )
            if self.strict:
                raise ValueError(f"{message}, or remove the callback.")
            rank_zero_warn(f"{message}, or pass `strict=True` to make this an error.", category=UserWarning)
        self._step_every = self._resolve_step_every(trainer)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._index_optimizers(trainer.optimizers)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.logging_interval == "epoch" and self._has_logger and trainer.is_global_zero:
            metrics: dict[str, float] = {}
            for index, optimizer in enumerate(trainer.optimizers):
                metrics.update(self._metrics(index, _unwrap(optimizer)))
                metrics.update(_scheduled_extras(trainer, optimizer, self._group_keys[index]))
            log_metrics(trainer, metrics)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self._step_every or self.check_consistency_every_n_steps is not None:
            self._on_step(trainer, optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"log_window": dict(self._log_window), "check_window": dict(self._check_window)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._log_window = {int(k): int(v) for k, v in state_dict.get("log_window", {}).items()}
        self._check_window = {int(k): int(v) for k, v in state_dict.get("check_window", {}).items()}

    def optimizer_metrics(self, optimizer: Optimizer, prefix: str = "") -> dict[str, float]:
        """Return the metrics this callback would log for ``optimizer``, keyed as documented above.

        Args:
            optimizer: Any torch optimizer.
            prefix: The optimizer qualifier, ``""`` for the short form or e.g. ``"SGD/"``.
        """
        names = group_names(optimizer.param_groups)
        return _read(optimizer.param_groups, [_keys(prefix, name) for name in names], self._flags)

    @property
    def _flags(self) -> tuple[bool, bool]:
        return self.log_momentum, self.log_weight_decay

    def _resolve_step_every(self, trainer: Trainer) -> int:
        if self.logging_interval != "step":
            return 0
        if self.log_every_n_steps is not None:
            return self.log_every_n_steps
        trainer_every = int(getattr(trainer, "log_every_n_steps", 50))
        if trainer_every == 0 and self._has_logger:
            rank_zero_warn(
                "LearningRateLogger follows `Trainer(log_every_n_steps=0)` and logs no steps. "
                "Pass `LearningRateLogger(log_every_n_steps=...)` to log anyway.",
                category=UserWarning,
            )
        return trainer_every

    def _index_optimizers(self, optimizers: Sequence[Any]) -> None:
        raw = [_unwrap(optimizer) for optimizer in optimizers]
        self._optimizer_index = {id(optimizer): i for i, optimizer in enumerate(raw)}
        for i, optimizer in enumerate(optimizers):
            self._optimizer_index.setdefault(id(optimizer), i)
        names = _optimizer_names(raw)
        self._optimizer_prefix = [f"{name}/" for name in names] if len(names) > 1 else [""] * len(names)
        self._group_names, self._group_keys = {}, {}

    def _on_step(self, trainer: Trainer, optimizer: Optimizer) -> None:
        index = self._optimizer_index.get(id(optimizer))
        if index is None:
            self._index_optimizers(trainer.optimizers)
            index = self._optimizer_index.get(id(optimizer))
            if index is None:  # not one of the Trainer's optimizers
                return
        step = logging_step(trainer)  # the rows of `self.log`: once per batch, however many optimizers step in it
        metrics: dict[str, float] | None = None
        window = (step + 1) // self._step_every if self._step_every else 0
        if self._step_every and self._log_window.get(index, -1) != window:
            self._log_window[index] = window
            if self._has_logger and trainer.is_global_zero:
                metrics = self._metrics(index, optimizer)
                extras = _scheduled_extras(trainer, optimizer, self._group_keys[index])
                log_metrics(trainer, {**metrics, **extras})
        every = self.check_consistency_every_n_steps
        step = trainer.global_step
        if every is not None and is_distributed(trainer) and self._check_window.get(index, -1) != step // every:
            self._check_window[index] = step // every
            self._check_consistency(trainer, metrics if metrics is not None else self._metrics(index, optimizer))

    def _metrics(self, index: int, optimizer: Optimizer) -> dict[str, float]:
        groups = optimizer.param_groups
        keys = self._group_keys.get(index)
        if keys is None or len(keys) != len(groups):  # first read, or groups were added
            prefix = self._optimizer_prefix[index] if index < len(self._optimizer_prefix) else ""
            names = group_names(groups, known=self._group_names.get(index, ()))
            keys = [_keys(prefix, name) for name in names]
            self._group_names[index], self._group_keys[index] = names, keys
        return _read(groups, keys, self._flags)

    def _check_consistency(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        device = trainer.strategy.root_device
        count = torch.tensor([len(metrics)], dtype=torch.float64, device=device)
        counts = trainer.strategy.all_gather(count).reshape(-1).tolist()
        message: str | None
        if len(set(counts)) > 1:
            message = (
                f"LearningRateLogger: ranks hold different numbers of logged values at global step "
                f"{trainer.global_step}: " + ", ".join(f"rank {r}: {int(c)}" for r, c in enumerate(counts)) + "."
            )
        else:
            values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
            gathered = trainer.strategy.all_gather(values).reshape(len(counts), -1).tolist()
            message = _mismatch_message(list(metrics), gathered, trainer.global_step)
        if message is None:
            return
        message += " Every rank must build the same optimizer, param groups and schedule."
        if self.on_mismatch == "raise":
            raise RuntimeError(message)
        if not self._mismatch_warned:
            self._mismatch_warned = True
            rank_zero_warn(message + " Later mismatches are not reported.", category=UserWarning)


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper that keeps it as ``.optimizer`` (DeepSpeed, LightningOptimizer)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, Optimizer) else optimizer


def _optimizer_names(optimizers: Sequence[Any]) -> list[str]:
    """``SGD``, ``Adam``, ``Adam-1``: class names, a repeated class numbered in order."""
    seen: dict[str, int] = {}
    names = []
    for optimizer in optimizers:
        cls = type(optimizer).__name__
        count = seen.get(cls, 0)
        seen[cls] = count + 1
        names.append(f"{cls}-{count}" if count else cls)
    return names


def _keys(prefix: str, name: str) -> _Keys:
    qualified = f"{prefix}{name}"
    return f"lr/{qualified}", f"momentum/{qualified}", f"beta2/{qualified}", f"weight_decay/{qualified}"


def _scheduled_extras(trainer: Trainer, optimizer: Optimizer, keys: Sequence[_Keys]) -> dict[str, float]:
    """``{field}/{group}`` of the fields a ``ScheduleLR(params=...)`` schedules that the keys above do not cover."""
    raw, names = _unwrap(optimizer), [lr_key.partition("/")[2] for lr_key, *_ in keys]  # as in `lr/{name}`
    metrics: dict[str, float] = {}
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, ScheduleLR) and scheduler.params is not None and scheduler.optimizer is raw:
            metrics.update(scheduler.params.metrics(raw.param_groups, names, skip=_LOGGED))
    return metrics


def _read(groups: Sequence[Mapping[str, Any]], keys: Sequence[_Keys], flags: tuple[bool, bool]) -> dict[str, float]:
    log_momentum, log_weight_decay = flags
    metrics: dict[str, float] = {}
    for group, (lr_key, momentum_key, beta2_key, weight_decay_key) in zip(groups, keys, strict=False):
        metrics[lr_key] = float(group["lr"])
        effective = schedule_free_lr(group)  # a schedulefree group scales lr by its own warmup inside step()
        if effective is not None:
            metrics[f"effective_{lr_key}"] = effective
        if log_momentum:
            betas = group.get("betas")
            if "momentum" in group:
                metrics[momentum_key] = float(group["momentum"])
            elif betas is not None:
                metrics[momentum_key] = float(betas[0])
            if betas is not None:
                metrics[beta2_key] = float(betas[1])
        if log_weight_decay and "weight_decay" in group:
            metrics[weight_decay_key] = float(group["weight_decay"])
    return metrics


def _same(a: float, b: float) -> bool:
    """Equal, counting NaN on both sides as equal (the same broken value on every rank is not a mismatch)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def _mismatch_message(keys: Sequence[str], gathered: Sequence[Sequence[float]], step: int) -> str | None:
    """Describe the keys whose values differ between ranks (rows of ``gathered``), or ``None``."""
    parts = []
    ranks: set[int] = set()
    for j, key in enumerate(keys):
        column = [row[j] for row in gathered]
        differ = [r for r, value in enumerate(column) if not _same(value, column[0])]
        if differ:
            ranks.update(differ)
            parts.append(f"{key}: " + ", ".join(f"rank {r}: {value!r}" for r, value in enumerate(column)))
    if not parts:
        return None
    return (
        f"LearningRateLogger: ranks {sorted(ranks)} hold values different from rank 0 at global step {step}: "
        + "; ".join(parts)
        + "."
    )
