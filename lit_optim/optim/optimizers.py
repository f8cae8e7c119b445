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
from typing import Any, cast

import torch
from torch.optim import Optimizer

from lit_optim._validation import unknown_key_error
from lit_optim.optim._optimizer_checks import check_hyperparameter_values, check_params_fit
from lit_optim.optim.schedule_free import SCHEDULE_FREE_OPTIMIZERS, schedule_free_class

__all__ = ["GROUP_KEYS", "TORCH_GROUP_KEYS", "build_optimizer", "hyperparameter_names", "resolve_optimizer"]

#: Keys lit_optim adds to each parameter group besides the optimizer's hyper-parameters.
GROUP_KEYS = frozenset({"params", "name", "applied_lr_scale"})
#: Keys torch itself writes into groups (schedulers, SWA, named parameters), accepted so that an optimizer can be
#: rebuilt from another one's ``param_groups``.
TORCH_GROUP_KEYS = frozenset(
    {"base_momentum", "initial_lr", "max_lr", "max_momentum", "min_lr", "param_names", "swa_lr"}
)

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

    Examples:
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

    Examples:
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


_fixed_cache: dict[type[Optimizer], dict[str, Any]] = {}


def _fixed_defaults(cls: type[Optimizer]) -> dict[str, Any]:
    """Group keys a torch optimizer sets itself but does not take (``AdamW``'s ``decoupled_weight_decay=True``)."""
    if cls not in _fixed_cache:
        fixed: dict[str, Any] = {}
        if cls.__module__.split(".")[0] == "torch":
            try:
                built = cast(Any, cls)([torch.zeros(2, 2, requires_grad=True)])
            except Exception:  # an optimizer that needs arguments: nothing to learn from it
                built = None
            names = hyperparameter_names(cls) or frozenset()
            if built is not None:
                fixed = {k: v for k, v in built.defaults.items() if k not in names}
        _fixed_cache[cls] = fixed
    return _fixed_cache[cls]


_TIMM_LR_SCALE = (
    "timm's convention: timm's schedulers multiply the lr by it, torch's and lit_optim's never do, so under any "
    "other scheduler it would be silently ignored. HINT: build the groups with lit_optim.param_groups (their lr "
    "already includes every scale, recorded as 'applied_lr_scale'), or multiply the group's lr by its lr_scale "
    "and drop the key."
)


def _check_group(index: int, group: Mapping[str, Any], cls: type[Optimizer], names: frozenset[str] | None) -> None:
    label = f"parameter group {group['name']!r} (index {index})" if "name" in group else f"parameter group {index}"
    if "params" not in group:
        raise ValueError(f"The {label} has no 'params' key; every group dict needs one.")
    if "lr_scale" in group:
        raise ValueError(f"The {label} has an 'lr_scale' key: {_TIMM_LR_SCALE}")
    if "applied_lr_scale" in group and "lr" not in group:
        raise ValueError(
            f"The {label} has 'applied_lr_scale' ({group['applied_lr_scale']!r}) but no 'lr': the key records a scale "
            "already multiplied into a group's lr, nothing applies it. HINT: set the group's 'lr' to base lr x scale, "
            "or build the groups with lit_optim.param_groups(model, overrides={...: {'lr_scale': ...}})."
        )
    if names is not None:
        fixed = _fixed_defaults(cls)
        allowed = names | GROUP_KEYS | TORCH_GROUP_KEYS
        for key in group:
            if key in allowed:
                continue
            if key in fixed:
                if group[key] == fixed[key]:
                    continue  # a key torch put there itself (rebuilding from another optimizer's groups)
                raise ValueError(
                    f"{cls.__name__} always uses {key}={fixed[key]!r}, but the {label} sets {key}={group[key]!r}. "
                    "HINT: drop the key, or choose the optimizer that does what you want."
                )
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
                allowed | fixed.keys(),
                hint=f"It appears in the {label}; group keys are the hyper-parameters of {cls.__name__} plus "
                f"lit_optim's {sorted(GROUP_KEYS)} and the keys torch writes itself.",
            )
    check_hyperparameter_values(cls, group, label)


def _check_precedence(
    groups: list[Mapping[str, Any]], hyperparameters: Mapping[str, Any], cls: type[Optimizer]
) -> None:
    """A top-level value is a default for groups without the key; refuse one that no group would use."""
    if not groups:
        return
    for key, value in hyperparameters.items():
        if all(key in g for g in groups) and any(not _same(g[key], value) for g in groups):
            shown = sorted({repr(g[key]) for g in groups})[:4]
            raise ValueError(
                f"build_optimizer({cls.__name__!r}, ..., {key}={value!r}) would be ignored: every parameter group "
                f"sets its own {key!r} ({', '.join(shown)}), and a group's value wins over the top-level default. "
                f"HINT: set it when building the groups (param_groups(model, {key}=...)), or drop it here."
            )


def _is_named(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], torch.Tensor)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return bool(a == b) or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b))


def build_optimizer(
    optimizer: OptimizerLike,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    **hyperparameters: Any,
) -> Optimizer:
    """Build an optimizer after checking every hyper-parameter key against its signature.

    Unknown keys raise instead of being silently kept by torch: top-level keyword arguments, and every key of
    every group dict except lit_optim's own ``name`` and ``applied_lr_scale`` and the keys torch writes into
    groups itself (``initial_lr``, ``param_names``, OneCycleLR's and SWA's), so an optimizer can be rebuilt from
    another's ``param_groups``. A group's ``weight_decay`` of ``0`` is accepted for optimizers without weight
    decay. Values are checked against the signature's defaults (bools, numbers, tuples of the right length). An
    optimizer class that takes ``**kwargs`` is not checked.

    **Precedence** (torch's): a top-level hyper-parameter is the default for the groups that do not set that key;
    a group's own value wins. A top-level value that every group overrides with a different one would be
    ignored, so it raises (``build_optimizer("adamw", param_groups(model), lr=3e-4)``: set ``lr`` in
    ``param_groups`` instead). A group with timm's ``lr_scale`` key raises: only timm's schedulers apply it.

    Args:
        optimizer: a case-insensitive ``torch.optim`` name (``"adamw"``, ``"sgd"``, ...) or an ``Optimizer``
            subclass.
        params: tensors, or group dicts such as those returned by :func:`lit_optim.param_groups`.
        **hyperparameters: the optimizer's defaults, e.g. ``lr=1e-3``, ``betas=(0.9, 0.95)``.

    Raises:
        ValueError: for an unknown optimizer name or key, a negative ``lr`` / ``weight_decay``, a top-level value
            every group overrides, or parameters the optimizer cannot take (Muon: 2-D only; LBFGS: one group).
        TypeError: for an ``optimizer`` that is neither a name nor an ``Optimizer`` subclass, ``params`` that are
            a module or not tensors/dicts, or a value of the wrong type.

    Examples:
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
    check_hyperparameter_values(cls, hyperparameters)
    given: object = params
    if isinstance(given, (torch.nn.Module, str, bytes)) or not isinstance(given, Iterable):
        raise TypeError(
            f"`params` must be an iterable of tensors or of group dicts, got {type(params).__name__}. HINT: pass "
            "lit_optim.param_groups(model) or model.parameters(), not the model."
        )
    materialised: list[Any] = list(params)
    groups: list[Mapping[str, Any]] = []
    for index, item in enumerate(materialised):
        if isinstance(item, Mapping):
            _check_group(index, item, cls, names)
            groups.append(item)
        elif not isinstance(item, torch.Tensor) and not _is_named(item):
            raise TypeError(
                f"`params` must hold tensors, (name, tensor) pairs or group dicts, got {type(item).__name__} at "
                f"index {index}. HINT: pass model.parameters() or lit_optim.param_groups(model)."
            )
    if groups and len(groups) != len(materialised):
        raise TypeError("`params` mixes tensors and group dicts; pass one kind (wrap the tensors in a group dict).")
    _check_precedence(groups, hyperparameters, cls)
    tensors = [item[1] if _is_named(item) else item for item in materialised]
    named = {id(item[1]): item[0] for item in materialised if _is_named(item)}
    check_params_fit(cls, groups or [{"params": tensors}], named or None)
    return cls(materialised, **hyperparameters)
