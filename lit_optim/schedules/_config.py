"""Schedule specs as plain config data and back: ``{"class_path": ..., "init_args": {...}}``.

This is the form LightningCLI/jsonargparse writes into a model's hparams, and the form
:class:`~lit_optim.OptimizerMixin` stores in checkpoints, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from lit_optim._validation import unknown_key_error
from lit_optim.schedules._anneal import AnnealedSchedule, DecaySchedule
from lit_optim.schedules.base import Schedule, WarmedSchedule, shown_fields
from lit_optim.schedules.durations import Duration, parse_duration
from lit_optim.schedules.params import ParamSchedule
from lit_optim.schedules.plateau import Plateau

__all__ = ["build_spec", "plain_config", "spec_from_config", "spec_to_config"]

_SPEC_TYPES = (Schedule, Plateau, ParamSchedule)
_BASES = (Schedule, WarmedSchedule, AnnealedSchedule, DecaySchedule)  # abstract: never built from a config


def spec_to_config(spec: Schedule | Plateau | ParamSchedule) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a spec, with plain values only (durations as strings).

    Examples:
        >>> from lit_optim import Cosine
        >>> spec_to_config(Cosine(warmup="5%", min_lr=0.1))["init_args"]
        {'warmup': {'duration': '5%', 'shape': 'linear', 'start_factor': 0.0}, 'min_lr': 0.1}
    """
    cls = type(spec)
    init_args = {f.name: _plain(getattr(spec, f.name)) for f in shown_fields(spec)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def spec_from_config(value: Any) -> Any:
    """Build the spec a ``{"class_path": ..., "init_args": {...}}`` mapping names; return anything else as is.

    Only lit_optim's own spec classes (:class:`~lit_optim.schedules.Schedule` subclasses and
    :class:`~lit_optim.schedules.Plateau`) are built, so a config cannot import and call arbitrary code.

    Raises:
        ValueError: ``class_path`` cannot be imported.
        TypeError: it names something that is not a lit_optim schedule spec.

    Examples:
        >>> spec_from_config({"class_path": "lit_optim.Cosine", "init_args": {"min_lr": 0.1}})
        Cosine(warmup=None, min_lr=0.1)
    """
    if not isinstance(value, Mapping) or "class_path" not in value:
        return value
    path = str(value["class_path"])
    module_name, _, name = path.rpartition(".")
    if module_name != "lit_optim" and not module_name.startswith("lit_optim."):
        # refuse before importing: a config (or a checkpoint's hparams) must not run another module's import code
        raise TypeError(
            f"`class_path` {path!r} is not a lit_optim schedule spec; use one of lit_optim's schedules "
            "(e.g. 'lit_optim.Cosine', 'lit_optim.Plateau')."
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"Cannot import schedule `class_path` {path!r}: {err}.") from None
    if not (isinstance(cls, type) and issubclass(cls, _SPEC_TYPES)) or cls in _BASES:
        raise TypeError(
            f"`class_path` {path!r} is not a lit_optim schedule spec; use one of lit_optim's schedules "
            "(e.g. 'lit_optim.Cosine', 'lit_optim.Plateau')."
        )
    return build_spec(cls, value.get("init_args") or {})


def build_spec(cls: type[Any], args: Mapping[str, Any]) -> Any:
    """``cls(**args)`` for a spec dataclass, after checking every key is one of its arguments.

    Examples:
        >>> from lit_optim import Cosine
        >>> build_spec(Cosine, {"min_lr_ab": 0.1})
        Traceback (most recent call last):
        ...
        ValueError: Unknown parameter of Cosine 'min_lr_ab'. Valid: [...]. Did you mean 'min_lr_abs'?
    """
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in args:
        if key not in valid:
            raise unknown_key_error(f"parameter of {cls.__name__}", str(key), valid)
    return cls(**dict(args))


def plain_config(value: Any) -> Any:
    """``value`` with every spec, warmup and duration in it replaced by plain data that parses back exactly.

    Examples:
        >>> plain_config({"name": "cosine", "warmup": 1 / 3})
        {'name': 'cosine', 'warmup': 0.3333333333333333}
    """
    if isinstance(value, _SPEC_TYPES):
        return spec_to_config(value)
    if isinstance(value, Mapping):
        return {k: plain_config(v) for k, v in value.items()}
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, _SPEC_TYPES):  # a spec inside a spec (a ParamSchedule's shape): keep its class
        return spec_to_config(value)
    if isinstance(value, Duration):
        text = str(value)  # '5%', '2ep', '500steps': readable, and exact when it parses back to the same
        if parse_duration(text) == value:
            return text
        return value.value if value.unit == "fraction" else f"{value.value!r}ep"  # e.g. 1/3 of the run
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a Warmup: its arguments
        return {f.name: _plain(getattr(value, f.name)) for f in shown_fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
