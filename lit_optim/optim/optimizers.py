"""Build any ``torch.optim`` optimizer by name or class, with every hyper-parameter key checked.

torch optimizers keep unknown keys of a parameter group without complaint, so a misspelled
``{"weight_decy": 0.1}`` silently trains with the default weight decay. :func:`build_optimizer` checks every key,
at the top level and inside every group, against the optimizer's own ``__init__`` signature.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from lit_optim._validation import check_non_negative, unknown_key_error
from lit_optim.optim.schedule_free import SCHEDULE_FREE_OPTIMIZERS, schedule_free_class

__all__ = ["GROUP_KEYS", "build_optimizer", "hyperparameter_names", "resolve_optimizer"]

#: Keys lit_optim adds to each parameter group besides the optimizer's hyper-parameters.
GROUP_KEYS = frozenset({"params", "name", "lr_scale"})

OptimizerLike = str | type[Optimizer]


def _import_optimizer(path: str) -> type[Optimizer]:
    module_name, _, attribute = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import optimizer {path!r}: {error}. HINT: use 'package.module.ClassName'.") from None
    if not (isinstance(found, type) and issubclass(found, Optimizer)):
        raise TypeError(f"{path!r} is not a torch.optim.Optimizer subclass, got {found!r}.")
    return found


@functools.cache
def _torch_optimizers() -> dict[str, type[Optimizer]]:
    """Every concrete ``torch.optim.Optimizer`` subclass exported by ``torch.optim``, by lower-case name."""
    found: dict[str, type[Optimizer]] = {}
    for name, obj in vars(torch.optim).items():
        if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer:
            found[name.lower()] = obj
    return found


def resolve_optimizer(optimizer: OptimizerLike) -> type[Optimizer]:
    """Return the optimizer class for a case-insensitive ``torch.optim`` name, or check a class.

    Args:
        optimizer: a name such as ``"adamw"``, ``"AdamW"``, ``"sgd"`` (any optimizer in ``torch.optim``, and the
            schedule-free ``"adamw_schedulefree"``, ``"radam_schedulefree"``, ``"sgd_schedulefree"``), a
            dotted import path such as ``"my_package.Lion"`` (handy in YAML/LightningCLI configs), or a
            ``torch.optim.Optimizer`` subclass (third-party classes too).

    Raises:
        ValueError: for an unknown name (the message lists the valid names and the closest one).
        TypeError: for anything that is neither a string nor an ``Optimizer`` subclass.
        ImportError: for a schedule-free name without the ``schedulefree`` package (names the extra).

    Example:
        >>> resolve_optimizer("adamw")
        <class 'torch.optim.adamw.AdamW'>
    """
    if isinstance(optimizer, str) and "." in optimizer:
        return _import_optimizer(optimizer)
    if isinstance(optimizer, str):
        classes = _torch_optimizers()
        found = classes.get(optimizer.lower()) or schedule_free_class(optimizer)
        if found is None:
            names = [cls.__name__ for cls in classes.values()] + list(SCHEDULE_FREE_OPTIMIZERS)
            raise unknown_key_error(
                "optimizer", optimizer, names, hint="HINT: names are case-insensitive; or pass the class itself."
            )
        return found
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        return optimizer
    raise TypeError(
        f"`optimizer` must be a torch.optim name (e.g. 'adamw') or a torch.optim.Optimizer subclass, "
        f"got {optimizer!r} ({type(optimizer).__name__})."
    )


_names_cache: dict[type[Optimizer], frozenset[str] | None] = {}


def hyperparameter_names(optimizer: type[Optimizer]) -> frozenset[str] | None:
    """The hyper-parameter names ``optimizer.__init__`` accepts, or ``None`` if it takes ``**kwargs``.

    Example:
        >>> sorted(hyperparameter_names(torch.optim.SGD))[:4]
        ['dampening', 'differentiable', 'foreach', 'fused']
    """
    if optimizer in _names_cache:
        return _names_cache[optimizer]
    parameters = list(inspect.signature(optimizer.__init__).parameters.values())[1:]  # drop `self`
    names: frozenset[str] | None = frozenset(
        p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name != "params"
    )
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        names = None
    _names_cache[optimizer] = names
    return names


def _check_values(settings: Mapping[str, Any], where: str = "") -> None:
    for key in ("lr", "weight_decay"):
        value = settings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                check_non_negative(key, value)
            except ValueError as error:
                if not where:
                    raise
                raise ValueError(f"In the {where}: {error}") from None


def _check_group(index: int, group: Mapping[str, Any], cls: type[Optimizer], names: frozenset[str] | None) -> None:
    label = f"parameter group {group['name']!r} (index {index})" if "name" in group else f"parameter group {index}"
    if "params" not in group:
        raise ValueError(f"The {label} has no 'params' key; every group dict needs one.")
    if names is not None:
        allowed = names | GROUP_KEYS
        for key in group:
            if key in allowed:
                continue
            if key == "weight_decay":
                if group[key] == 0:
                    continue  # lit_optim's groups always record weight_decay; 0 is true for any optimizer
                raise ValueError(
                    f"{cls.__name__} has no weight decay, but the {label} sets weight_decay={group[key]!r}. "
                    "HINT: build the groups with weight_decay=0 for this optimizer."
                )
            raise unknown_key_error(
                "key",
                key,
                allowed,
                hint=f"It appears in the {label}; group keys are the hyper-parameters of {cls.__name__} plus "
                f"lit_optim's {sorted(GROUP_KEYS)}.",
            )
    _check_values(group, label)


def build_optimizer(
    optimizer: OptimizerLike,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    **hyperparameters: Any,
) -> Optimizer:
    """Build an optimizer after checking every hyper-parameter key against its signature.

    Unknown keys raise instead of being silently kept by torch: top-level keyword arguments, and every key of
    every group dict except lit_optim's own ``name`` and ``lr_scale`` (which torch carries along in the group and
    its ``state_dict``). A group's ``weight_decay`` of ``0`` is accepted for optimizers without weight decay. An
    optimizer class that takes ``**kwargs`` is not checked.

    Args:
        optimizer: a case-insensitive ``torch.optim`` name (``"adamw"``, ``"sgd"``, ...) or an ``Optimizer``
            subclass.
        params: tensors, or group dicts such as those returned by :func:`lit_optim.param_groups`.
        **hyperparameters: the optimizer's defaults, e.g. ``lr=1e-3``, ``betas=(0.9, 0.95)``.

    Raises:
        ValueError: for an unknown optimizer name or key, or a negative ``lr`` / ``weight_decay``.
        TypeError: for an ``optimizer`` that is neither a name nor an ``Optimizer`` subclass.

    Example:
        >>> from torch import nn
        >>> opt = build_optimizer("AdamW", nn.Linear(2, 1).parameters(), lr=0.01, betas=(0.9, 0.95))
        >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]
        ('AdamW', 0.01, (0.9, 0.95))
        >>> build_optimizer("adamw", nn.Linear(2, 1).parameters(), weight_decy=0.1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Unknown AdamW hyper-parameter 'weight_decy'. Valid: [...]. Did you mean 'weight_decay'?
    """
    cls = resolve_optimizer(optimizer)
    names = hyperparameter_names(cls)
    if names is not None:
        for key in hyperparameters:
            if key not in names:
                raise unknown_key_error(f"{cls.__name__} hyper-parameter", key, names)
    _check_values(hyperparameters)
    materialised: list[Any] = list(params)
    for index, item in enumerate(materialised):
        if isinstance(item, Mapping):
            _check_group(index, item, cls, names)
    return cls(materialised, **hyperparameters)
