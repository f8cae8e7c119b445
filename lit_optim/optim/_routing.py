"""Which inner optimizer owns each parameter of a hybrid optimizer: the default rule, overrides, checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lit_optim._validation import unknown_key_error
from lit_optim.optim.optimizers import GROUP_KEYS, hyperparameter_names, resolve_optimizer

__all__ = [
    "MATRIX_ONLY",
    "OPTIMIZER_KEY",
    "check_group_keys",
    "check_matrices",
    "hidden_matrices",
    "label_of",
    "resolve_routes",
]

#: The group key (and override key) naming the inner optimizer that owns a group.
OPTIMIZER_KEY = "optimizer"

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def _matrix_only() -> tuple[type[Optimizer], ...]:
    muon = getattr(torch.optim, "Muon", None)
    return (muon,) if muon is not None else ()


#: Optimizers that take only 2-D parameters: as the main optimizer, they get the hidden matrices by default and
#: the rest goes to the fallback.
MATRIX_ONLY: tuple[type[Optimizer], ...] = _matrix_only()


def label_of(cls: type[Optimizer]) -> str:
    """The label of an inner optimizer class in group names: its lower-case class name (``"muon"``)."""
    return cls.__name__.lower()


def resolve_routes(overrides: Any) -> tuple[Any, dict[str, type[Optimizer]]]:
    """Resolve every override's ``"optimizer"`` to a class; return the overrides with labels, and label -> class.

    Raises:
        ValueError: for an unknown optimizer name (naming the override), or two classes with one label.
    """
    if not overrides or not isinstance(overrides, Mapping):
        return overrides, {}  # param_groups checks the type
    classes: dict[str, type[Optimizer]] = {}
    resolved: dict[Any, dict[str, Any]] = {}
    for pattern, settings in overrides.items():
        if isinstance(settings, Mapping) and OPTIMIZER_KEY in settings:
            shown = repr(pattern) if isinstance(pattern, str) else type(pattern).__name__
            try:
                cls = resolve_optimizer(settings[OPTIMIZER_KEY])
            except (ValueError, TypeError) as error:
                raise type(error)(f"In override {shown}: {error}") from None
            add_class(classes, cls)
            resolved[pattern] = {**settings, OPTIMIZER_KEY: label_of(cls)}
        else:
            resolved[pattern] = settings
    return resolved, classes


def add_class(classes: dict[str, type[Optimizer]], cls: type[Optimizer]) -> str:
    """Register ``cls`` under its label; raise when another class already has that label."""
    label = label_of(cls)
    other = classes.setdefault(label, cls)
    if other is not cls:
        raise ValueError(
            f"Two optimizer classes share the label {label!r}: {other.__module__}.{other.__qualname__} and "
            f"{cls.__module__}.{cls.__qualname__}. HINT: use one of them."
        )
    return label


def hidden_matrices(module: nn.Module) -> set[int]:
    """``id`` s of the hidden matrices: 2-D, not an embedding, inside the blocks.

    The blocks are the largest ``nn.ModuleList`` (by parameter count, as layer-wise decay counts them); a model
    without one counts every 2-D parameter but the first and the last in module order (the input and output
    layers). Embeddings are ``nn.Embedding``/``nn.EmbeddingBag`` weights (and whatever is tied to them) and
    parameters with a name part containing ``embed``.
    """
    embeddings = {id(p) for m in module.modules() if isinstance(m, _EMBEDDING_TYPES) for p in m.parameters()}
    embeddings |= {
        id(p) for name, p in module.named_parameters() if any("embed" in part.lower() for part in name.split("."))
    }
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if lists:
        blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
        candidates = list(blocks.parameters())
    else:
        candidates = [p for p in module.parameters() if p.ndim == 2][1:-1]
    return {id(p) for p in candidates if p.ndim == 2 and id(p) not in embeddings}


def check_matrices(cls: type[Optimizer], label: str, groups: list[dict[str, Any]], names: Mapping[int, str]) -> None:
    """A matrix-only optimizer (Muon) must get only 2-D parameters: name the first one that is not."""
    if not issubclass(cls, MATRIX_ONLY):
        return
    for group in groups:
        for param in group["params"]:
            if param.ndim != 2:
                raise ValueError(
                    f"Parameter {names.get(id(param), '?')!r} (shape {tuple(param.shape)}) is routed to {cls.__name__} "
                    f"(group {label + '/' + group['name']!r}), but {cls.__name__} only takes 2-D matrices. "
                    "HINT: an override {'optimizer': " + repr(label) + "} must match only matrices (e.g. "
                    "'blocks.*.mlp.*.weight'); route biases, norms and conv kernels to AdamW."
                )


def check_group_keys(cls: type[Optimizer], label: str, group: Mapping[str, Any]) -> None:
    """Every key of ``group`` must be a hyper-parameter of ``cls``, the inner optimizer that will own it."""
    names = hyperparameter_names(cls)
    if names is None:
        return
    allowed = names | GROUP_KEYS | {OPTIMIZER_KEY}
    where = f"group {label + '/' + group['name']!r}"
    for key, value in group.items():
        if key in allowed:
            continue
        if key == "weight_decay":
            if value == 0:
                continue
            raise ValueError(
                f"The {where} goes to {cls.__name__}, which has no weight decay, but sets weight_decay={value!r}. "
                "HINT: add 'weight_decay': 0 to the override that routes it there."
            )
        raise unknown_key_error(
            f"{cls.__name__} hyper-parameter",
            key,
            names,
            hint=f"It is set on the {where}, which {cls.__name__} owns. HINT: limit the override that sets "
            f"{key!r} to the parameters of an optimizer that takes it, or route them with {{'optimizer': ...}}.",
        )
