"""Optimizer settings as plain data and back, so checkpoints load with ``torch.load(weights_only=True)``.

An optimizer class becomes its dotted import path (which :func:`~lit_optim.build_optimizer` accepts as is), a
``layer_id_fn`` function its dotted path, and a module class in ``no_decay`` ``{"class_path": "..."}`` (a plain
string there would be read as a glob).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

__all__ = ["dotted_path", "import_dotted", "plain_settings", "resolve_settings"]


def import_dotted(path: str, what: str) -> Any:
    """The object at ``package.module.Name`` (nested qualnames such as ``module.Outer.Inner`` too)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError:
            break
        return found
    raise ValueError(f"Cannot import {what} {path!r}. HINT: use 'package.module.Name' of an importable object.")


def dotted_path(obj: Any, what: str) -> str:
    """``module.qualname`` of a class or function, checked to import back to the same object.

    Raises:
        ValueError: for a lambda, a local function or class, or anything else that does not import back.
    """
    path = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    try:
        same = "<" not in path and import_dotted(path, what) is obj
    except ValueError:
        same = False
    if not same:
        raise ValueError(
            f"The {what} {obj!r} cannot be stored in a checkpoint as plain data (it does not import back from "
            f"{path!r}), so the checkpoint would not load with weights_only=True. HINT: define it at module level, "
            "or pass its dotted path as a string."
        )
    return path


def plain_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with the optimizer class, ``layer_id_fn`` and ``no_decay`` classes as plain data."""
    out = dict(hparams)
    optimizer = out.get("optimizer")
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        out["optimizer"] = dotted_path(optimizer, "optimizer class")
    layer_id_fn = out.get("layer_id_fn")
    if layer_id_fn is not None and not isinstance(layer_id_fn, str):
        out["layer_id_fn"] = dotted_path(layer_id_fn, "`layer_id_fn`")
    rules = out.get("no_decay")
    if isinstance(rules, (list, tuple)):
        out["no_decay"] = [_plain_rule(rule) for rule in rules]
    return out


def _plain_rule(rule: Any) -> Any:
    if isinstance(rule, type) and issubclass(rule, nn.Module):
        return {"class_path": dotted_path(rule, "`no_decay` module class")}
    if isinstance(rule, re.Pattern):
        return {"regex": rule.pattern}
    if isinstance(rule, str) or (isinstance(rule, Mapping) and set(rule) in ({"class_path"}, {"regex"})):
        return rule  # already plain
    raise ValueError(
        f"The `no_decay` rule {rule!r} in hparams cannot be stored in a checkpoint as plain data. HINT: use globs, "
        "compiled regexes or module classes in hparams, or pass the rule to configure_optimizers yourself."
    )


def resolve_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`plain_settings` for ``layer_id_fn`` and ``no_decay`` (optimizer paths build as is)."""
    out = dict(settings)
    if isinstance(out.get("layer_id_fn"), str):
        out["layer_id_fn"] = import_dotted(out["layer_id_fn"], "`layer_id_fn`")
    rules = out.get("no_decay")
    if isinstance(rules, (list, tuple)):
        out["no_decay"] = [_resolve_rule(rule) for rule in rules]
    return out


def _resolve_rule(rule: Any) -> Any:
    if isinstance(rule, Mapping) and set(rule) == {"class_path"}:
        return import_dotted(rule["class_path"], "`no_decay` module class")
    if isinstance(rule, Mapping) and set(rule) == {"regex"}:
        return re.compile(rule["regex"])
    return rule
