"""Checks that make an optimizer fail at build time, naming the value or parameter, instead of deep in torch."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from lit_optim._validation import check_non_negative

__all__ = ["check_hyperparameter_values", "check_params_fit", "check_rate"]


_defaults_cache: dict[type[Optimizer], dict[str, Any]] = {}


def _defaults(cls: type[Optimizer]) -> dict[str, Any]:
    if cls not in _defaults_cache:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        _defaults_cache[cls] = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return _defaults_cache[cls]


def _is_number(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expected(default: Any) -> str | None:
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, tuple):
        return f"a tuple of {len(default)} like its default {default!r}"
    return None


def _fits(value: object, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return _is_number(value)
    if isinstance(default, tuple):
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(default)
            and all((v is None and d is None) or _is_number(v) for v, d in zip(value, default, strict=True))
        )
    return True


def check_rate(name: str, value: object) -> float:
    """Check an ``lr``/``lr_scale``/``weight_decay``: a finite number >= 0, or a tensor holding one such float.

    torch accepts a tensor ``lr``; it is checked like a number (once, when grouping), never silently kept.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(f"A tensor `{name}` must hold one float, got {value!r}.")
        value = float(value.detach().reshape(()).item())
    try:
        return check_non_negative(name, value)
    except TypeError as error:
        raise TypeError(f"{error}{_hint(value)}") from None


def _hint(value: object) -> str:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        return f" HINT: pass the number {number!r}; YAML 1.1 reads a float without a dot ('1e-3') as a string."
    return ""


def check_hyperparameter_values(cls: type[Optimizer], settings: Mapping[str, Any], where: str = "") -> None:
    """Check the types the optimizer's signature implies (bools, numbers, tuples of the default's length).

    Raises:
        TypeError: for a value of the wrong kind (``lr="1e-3"``, ``betas=(0.9,)``, ``nesterov="yes"``).
        ValueError: for a negative ``lr`` or ``weight_decay``.
    """
    defaults = _defaults(cls)
    suffix = f" in the {where}" if where else ""
    for key, value in settings.items():
        if key not in defaults or _fits(value, defaults[key]):
            continue
        expected = _expected(defaults[key])
        if expected is not None:
            raise TypeError(
                f"`{key}` of {cls.__name__} must be {expected}, got {value!r} ({type(value).__name__}){suffix}."
                + _hint(value)
            )
    for key in ("lr", "weight_decay"):
        value = settings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                check_non_negative(key, value)
            except ValueError as error:
                if not where:
                    raise
                raise ValueError(f"In the {where}: {error}") from None


def _label(param: torch.Tensor, group: Mapping[str, Any], index: int, names: Mapping[int, str] | None) -> str:
    if names is not None and id(param) in names:
        return f"parameter {names[id(param)]!r}"
    param_names = group.get("param_names")  # torch's named-parameter groups
    if isinstance(param_names, (list, tuple)) and index < len(param_names):
        return f"parameter {param_names[index]!r}"
    where = f"group {group['name']!r}" if "name" in group else "its group"
    return f"parameter #{index} of {where}"


def check_params_fit(
    cls: type[Optimizer],
    groups: Sequence[Mapping[str, Any]],
    names: Mapping[int, str] | None = None,
    sparse_ok: set[int] | None = None,
) -> None:
    """Raise for parameters or groups the optimizer cannot take (torch fails later or without the name).

    ``names`` maps ``id(param)`` to its name, ``sparse_ok`` holds the ids of sparse embeddings' weights (known
    when grouping a module; ``None`` skips the SparseAdam check).
    """
    muon = getattr(torch.optim, "Muon", None)
    if muon is not None and issubclass(cls, muon):
        for group in groups:
            for index, param in enumerate(group["params"]):
                if isinstance(param, torch.Tensor) and param.ndim != 2:
                    raise ValueError(
                        f"{cls.__name__} only optimizes 2-D parameters (weight matrices), but "
                        f"{_label(param, group, index, names)} has shape {tuple(param.shape)}. HINT: give Muon the "
                        "2-D weights of the hidden layers and AdamW the rest (biases, norms, embeddings, the head)."
                    )
    if issubclass(cls, torch.optim.LBFGS) and len(groups) > 1:
        shown = [g.get("name", i) for i, g in enumerate(groups)]
        raise ValueError(
            f"{cls.__name__} takes a single parameter group, got {len(groups)}: {shown}. HINT: use weight_decay=0 "
            "and no overrides (LBFGS has no weight decay, so the decay and no-decay groups then merge), or pass "
            "model.parameters()."
        )
    if sparse_ok is not None and issubclass(cls, torch.optim.SparseAdam):
        for group in groups:
            for index, param in enumerate(group["params"]):
                if id(param) not in sparse_ok:
                    raise ValueError(
                        f"{cls.__name__} needs sparse gradients, but {_label(param, group, index, names)} is not the "
                        "weight of an nn.Embedding/nn.EmbeddingBag with sparse=True (torch would fail at the first "
                        "step). HINT: optimize sparse embeddings with SparseAdam and the rest with Adam."
                    )
