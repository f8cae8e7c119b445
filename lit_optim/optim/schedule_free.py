"""Schedule-free optimizers (Defazio et al. 2024): names, train/eval-mode detection and batch-norm recomputation.

A schedule-free optimizer keeps two points of the model: training steps evaluate gradients at ``y`` (its *train
mode*) while the point to evaluate, save and deploy is the average ``x`` (its *eval mode*). ``optimizer.train()``
and ``optimizer.eval()`` move the parameters between the two; the ``schedulefree`` package's optimizers record the
mode in every param group as ``train_mode``. :class:`lit_optim.callbacks.ScheduleFreeMode` switches the modes
during a Lightning run; this module only knows optimizers and modules, not the Trainer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lit_optim.schedules.plateau import Plateau
from lit_optim.schedules.specs import Constant

__all__ = [
    "SCHEDULE_FREE_OPTIMIZERS",
    "check_schedule_free_groups",
    "has_train_eval_modes",
    "recompute_batchnorm",
    "schedule_free_class",
    "schedule_free_lr",
    "schedule_warning",
    "set_mode",
    "train_mode",
]

#: lit_optim's names of the ``schedulefree`` package's optimizers (``pip install "lit_optim[schedulefree]"``).
SCHEDULE_FREE_OPTIMIZERS: dict[str, str] = {
    "adamw_schedulefree": "AdamWScheduleFree",
    "radam_schedulefree": "RAdamScheduleFree",
    "sgd_schedulefree": "SGDScheduleFree",
}
# The class names, case-insensitive, resolve too ("AdamWScheduleFree").
_BY_CLASS_NAME = {cls.lower(): cls for cls in SCHEDULE_FREE_OPTIMIZERS.values()}


def schedule_free_class(name: str) -> type[Optimizer] | None:
    """The ``schedulefree`` optimizer class for one of :data:`SCHEDULE_FREE_OPTIMIZERS`, or ``None`` for other names.

    Names are case-insensitive; the class names (``"AdamWScheduleFree"``) work as well.

    Raises:
        ImportError: the name is a schedule-free optimizer but the ``schedulefree`` package is not installed
            (the message names the extra to install).

    Examples:
        >>> schedule_free_class("adamw") is None
        True
        >>> schedule_free_class("AdamW_ScheduleFree").__name__  # doctest: +SKIP
        'AdamWScheduleFree'
    """
    key = name.lower()
    cls_name = SCHEDULE_FREE_OPTIMIZERS.get(key) or _BY_CLASS_NAME.get(key)
    if cls_name is None:
        return None
    try:
        module = importlib.import_module("schedulefree")
    except ImportError:
        raise ImportError(
            f"Optimizer {name!r} is schedulefree.{cls_name}, from the optional `schedulefree` package, which is not "
            'installed. Install it with `pip install "lit_optim[schedulefree]"` (or `pip install schedulefree`).'
        ) from None
    cls: type[Optimizer] = getattr(module, cls_name)
    return cls


def has_train_eval_modes(optimizer: Optimizer | type[Optimizer]) -> bool:
    """Whether an optimizer (or its class) has ``train()`` and ``eval()`` modes, as schedule-free optimizers do.

    Raises:
        TypeError: it has only one of the two methods: the mode could be entered but never left, so the weights
            used for evaluation and saved in checkpoints would be wrong.

    Examples:
        >>> import torch
        >>> has_train_eval_modes(torch.optim.AdamW)
        False
    """
    has_train = callable(getattr(optimizer, "train", None))
    has_eval = callable(getattr(optimizer, "eval", None))
    if has_train != has_eval:
        name = optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__
        present, missing = ("train", "eval") if has_train else ("eval", "train")
        raise TypeError(
            f"{name} has a `{present}()` method but no `{missing}()`: lit_optim treats an optimizer with "
            "`train()`/`eval()` as schedule-free and switches it to eval mode for validation and checkpoints and back "
            f"to train mode for training steps, which needs both. Give {name} a `{missing}()` method, or rename "
            f"`{present}()` if it is not a mode switch."
        )
    return has_train


def train_mode(optimizer: Optimizer) -> bool | None:
    """The optimizer's mode: ``True`` in train mode, ``False`` in eval mode, ``None`` when it does not say.

    Reads ``param_groups[0]["train_mode"]`` (the ``schedulefree`` optimizers) or an attribute ``train_mode``
    (``schedulefree.ScheduleFreeWrapper``).

    Examples:
        >>> import torch
        >>> train_mode(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)) is None
        True
    """
    groups = getattr(optimizer, "param_groups", None)
    if groups and "train_mode" in groups[0]:
        return bool(groups[0]["train_mode"])
    mode = getattr(optimizer, "train_mode", None)
    return mode if isinstance(mode, bool) else None


def check_schedule_free_groups(optimizer: Optimizer) -> None:
    """Refuse settings a ``schedulefree`` optimizer accepts but its ``eval()`` or warmup cannot use.

    Raises:
        ValueError: ``betas[0]`` outside (0, 1] (``eval()`` recovers the averaged weights as
            ``y + (1 - 1/beta1)(z - y)``, so 0 divides by zero at the first validation), or ``warmup_steps``
            not an int >= 0 (a negative one was silently no warmup).

    Examples:
        >>> import torch
        >>> check_schedule_free_groups(torch.optim.AdamW([torch.zeros(1, requires_grad=True)], betas=(0.0, 0.9)))
        Traceback (most recent call last):
        ...
        ValueError: `betas[0]` of AdamW must be in (0, 1], got 0.0: ... HINT: the default 0.9.
    """
    name = type(optimizer).__name__
    for group in optimizer.param_groups:
        betas = group.get("betas")
        if isinstance(betas, (tuple, list)) and betas and not 0 < float(betas[0]) <= 1:
            raise ValueError(
                f"`betas[0]` of {name} must be in (0, 1], got {betas[0]!r}: `eval()` recovers the averaged weights "
                "as y + (1 - 1/beta1)(z - y), dividing by it. HINT: the default 0.9."
            )
        warmup = group.get("warmup_steps", 0)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"`warmup_steps` must be an int >= 0, got {warmup!r}. HINT: 0 for no warmup.")


def set_mode(optimizers: Iterable[Optimizer], train: bool) -> None:
    """Put every optimizer with ``train()``/``eval()`` modes in train (``True``) or eval mode; leave the others.

    A mode the optimizer already reports is not entered again (the switch moves the parameters).

    Examples:
        >>> import torch
        >>> set_mode([torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)], train=True)  # no modes: no-op
    """
    for optimizer in optimizers:
        if has_train_eval_modes(optimizer) and train_mode(optimizer) is not train:
            getattr(optimizer, "train" if train else "eval")()


def schedule_free_lr(group: Mapping[str, Any]) -> float | None:
    r"""The lr the next step of a ``schedulefree`` param group uses: ``lr`` times its own linear warmup factor.

    With ``k`` steps done and ``warmup_steps`` :math:`W`, the factor is :math:`\min(1, (k + 1) / W)`
    (``schedulefree``'s formula). ``None`` for a group without ``warmup_steps`` (not schedule-free, or
    ``RAdamScheduleFree``, which has no warmup of its own).

    Examples:
        >>> schedule_free_lr({"lr": 0.1, "k": 1, "warmup_steps": 4, "train_mode": True})
        0.05
        >>> schedule_free_lr({"lr": 0.1}) is None
        True
    """
    if not {"train_mode", "warmup_steps", "k"} <= group.keys():
        return None
    k, warmup = int(group["k"]), int(group["warmup_steps"])
    factor = (k + 1) / warmup if k < warmup else 1.0
    return float(group["lr"]) * factor


def schedule_warning(schedule: Any, optimizer: type[Optimizer]) -> str | None:
    """Why ``schedule`` is out of place with a schedule-free ``optimizer``, or ``None`` when it fits.

    Schedule-free optimizers replace the decay of the learning rate by averaging iterates, so ``None``,
    :class:`~lit_optim.schedules.Constant` and a warmup (``Constant(warmup=...)``) fit; any decaying schedule or a
    plateau reduction works against the averaging (the authors tune without one).

    Examples:
        >>> import torch
        >>> from lit_optim.schedules import Constant, Cosine
        >>> schedule_warning(Constant(warmup=100), torch.optim.AdamW) is None
        True
        >>> print(schedule_warning(Cosine(), torch.optim.AdamW))  # doctest: +ELLIPSIS
        AdamW is schedule-free, ... `scheduler=Constant(warmup=...)` ...
    """
    if schedule is None or isinstance(schedule, Constant):
        return None
    kind = "plateau reductions" if isinstance(schedule, Plateau) else "a decaying schedule"
    return (
        f"{optimizer.__name__} is schedule-free, but the scheduler {schedule!r} adds {kind}: schedule-free "
        "optimizers replace the decay by averaging iterates and are tuned without one. Use `scheduler=None`, "
        "`scheduler=Constant(warmup=...)` for a warmup (or the optimizer's own `warmup_steps`), or a non-schedule-free "
        "optimizer if you want this schedule."
    )


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(batch[0] if isinstance(batch, (list, tuple)) else batch)


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    *,
    precise: bool = False,
) -> int:
    """Recompute batch-norm running statistics at the current weights (call it in eval mode, on training batches).

    In train mode a schedule-free optimizer's parameters are ``y``, so the running statistics that batch norm
    gathers during training belong to ``y``, not to the evaluation point ``x``. The ``schedulefree`` authors'
    remedy: right after ``optimizer.eval()``, run some training batches through the model in ``model.train()`` mode
    without gradients. With ``precise=True`` the statistics are reset and replaced by the exact average over
    ``batches`` (PreciseBN, as ``torch.optim.swa_utils.update_bn``). The model's train/eval mode and every batch
    norm's ``momentum`` are restored afterwards.

    Args:
        model: the module (its batch-norm layers are updated in place).
        batches: the batches to run, e.g. ``itertools.islice(train_loader, 50)``.
        forward: ``forward(model, batch)``; by default ``model(batch[0])`` for a tuple/list batch, else
            ``model(batch)``. Move batches to the model's device here if needed.
        precise: reset the statistics and average them over ``batches`` exactly, instead of the usual momentum.

    Returns:
        The number of batches run (0 when the model has no batch norm: nothing is run).

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
        >>> recompute_batchnorm(model, [torch.randn(8, 2) for _ in range(5)], precise=True)
        5
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    run = forward or _default_forward
    was_training = model.training
    momenta = [m.momentum for m in norms]
    if precise:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative moving average: the exact mean over the batches run
    model.train()
    count = 0
    try:
        for batch in batches:
            run(model, batch)
            count += 1
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return count
