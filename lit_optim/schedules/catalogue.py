"""The schedule catalogue by name, for YAML/CLI configs: ``build_schedule("cosine", warmup="5%")``."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from lit_optim._validation import unknown_key_error
from lit_optim.schedules.base import Schedule
from lit_optim.schedules.cyclic import Cyclic
from lit_optim.schedules.one_cycle import OneCycle
from lit_optim.schedules.restarts import CosineRestarts
from lit_optim.schedules.specs import (
    Constant,
    Cosine,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    Polynomial,
    Step,
)
from lit_optim.schedules.wsd import WarmupStableDecay

__all__ = ["SCHEDULES", "ScheduleName", "build_schedule"]

ScheduleName = Literal[
    "constant",
    "cosine",
    "cosine_restarts",
    "cyclic",
    "exponential",
    "inverse_sqrt",
    "linear",
    "multistep",
    "one_cycle",
    "polynomial",
    "step",
    "wsd",
]
"""A catalogue name, as a type: annotate a LightningCLI argument ``scheduler: Schedule | ScheduleName | dict[str, Any]
| None`` and the parser accepts ``scheduler: cosine`` (checked against these names), a ``{name: ..., ...}`` mapping
and a ``class_path`` spec."""


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "cosine": Cosine,
    "cosine_restarts": CosineRestarts,
    "cyclic": Cyclic,
    "exponential": Exponential,
    "inverse_sqrt": InverseSqrt,
    "linear": Linear,
    "multistep": MultiStep,
    "one_cycle": OneCycle,
    "polynomial": Polynomial,
    "step": Step,
    "wsd": WarmupStableDecay,
}
"""The catalogue by name, for configs: ``build_schedule(name, **params)``."""


def build_schedule(name: str, **params: Any) -> Schedule:
    """Build the catalogue schedule called ``name`` with ``params`` (for YAML/CLI configs).

    Args:
        name: a key of :data:`SCHEDULES` (``"cosine"``, ``"linear"``, ...).
        **params: the schedule's keyword arguments.

    Raises:
        ValueError: an unknown name or parameter (the message lists the valid ones).

    Examples:
        >>> build_schedule("cosine", warmup="5%", min_lr=0.1)
        Cosine(warmup=Warmup(duration=Duration('5%'), shape='linear', start_factor=0.0), min_lr=0.1)
    """
    if not isinstance(name, str) or name not in SCHEDULES:
        raise unknown_key_error("schedule", str(name), SCHEDULES)
    cls = SCHEDULES[name]
    valid = [f.name for f in fields(cls)]
    for key in params:
        if key not in valid:
            raise unknown_key_error(f"parameter of {cls.__name__}", key, valid)
    return cls(**params)
