"""Checks and small helpers of :mod:`lit_optim.schedules.params`: refusals with their messages, resume messages.

Kept apart so that ``params`` holds the two classes; nothing here is public API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from lit_optim.schedules.params import ParamSchedule

__all__ = [
    "absolute_lr_option",
    "assigned",
    "changed_param_schedules",
    "check_not_flattened",
    "field_hint",
    "glob_list",
    "own_number",
]

_NEGATIVE_HINTS = {"momentum": "betas[0]", "beta1": "betas[0]", "beta2": "betas[1]"}


def field_hint(key: str, group: Mapping[str, Any]) -> str | None:
    """The field to write instead of ``key`` for this group: ``'betas[0]'`` for ``momentum`` on Adam, and back."""
    return _NEGATIVE_HINTS.get(key) if "betas" in group else ("momentum" if key == "betas" else None)


def own_number(value: Any, label: str, group: str) -> float:
    """A group's own value as a float; an on/off switch (``amsgrad``) or ``None`` (``foreach``) is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(
            f"{label!r} of group {group!r} is {value!r}, not a number: it cannot be scheduled. Schedule a numeric "
            "hyper-parameter (`weight_decay`, `momentum`, `betas[0]`, `eps`, ...)."
        )
    return float(value)


def absolute_lr_option(shape: object) -> str | None:
    """The option of ``shape`` that adds an absolute lr (``min_lr_abs=...``, ``Warmup(start_lr=...)``), if any."""
    min_lr_abs = getattr(shape, "min_lr_abs", None)
    if min_lr_abs is not None:
        return f"min_lr_abs={min_lr_abs!r}"
    start_lr = getattr(getattr(shape, "warmup", None), "start_lr", None)
    return None if start_lr is None else f"Warmup(start_lr={start_lr!r})"


def glob_list(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(
            f"ParamSchedule `{name}` must be a list of group-name globs, got the string {value!r}; write [{value!r}]."
        )
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"ParamSchedule `{name}` must be a list of group-name globs, got {value!r}.")
    return tuple(value)


def check_not_flattened(label: str, spec: ParamSchedule, names: list[str], bases: list[float | None]) -> None:
    """Refuse one absolute ``start`` over groups that were given different own values (it would drop them)."""
    if spec.relative or spec.start is None or spec.groups is not None or spec.scale:
        return  # each group's own value is kept, or the user chose the groups and their multipliers
    own = {name: base for name, base in zip(names, bases, strict=False) if base is not None}
    if len(set(own.values())) > 1:
        raise ValueError(
            f"The {label!r} schedule sets one absolute start={spec.start!r} for groups that have their own "
            f"{label!r} values {own}: they would be dropped. Keep them with `relative=True` (start/end multiply "
            "each group's value) or `start=None` (each group starts from its own), or say which groups follow "
            "this curve with `groups=[...]`/`exclude=[...]` and `scale={glob: multiplier}`."
        )


def changed_param_schedules(saved: Mapping[str, str], now: Mapping[str, str], step: int) -> list[str]:
    """Messages for every field whose schedule (the ``repr`` of the resolved spec) differs from the saved one."""
    messages = []
    for label in sorted(set(saved) | set(now)):
        if label not in now:
            messages.append(
                f"The checkpoint has a saved {label!r} schedule ({saved[label]}), not scheduled now: {label!r} keeps "
                "the value restored with the optimizer state."
            )
        elif label not in saved:
            messages.append(
                f"The {label!r} schedule ({now[label]}) is not in the checkpoint: it starts from each group's own "
                f"value as built now, at the saved progress (step {step})."
            )
        elif saved[label] != now[label]:
            messages.append(
                f"Resuming with a different {label!r} schedule: saved {saved[label]}, now {now[label]}. The new "
                f"schedule continues from the saved progress (step {step})."
            )
    return messages


def assigned(current: Any, value: float) -> Any:
    """``value`` to store in place of ``current``: a tensor (a compiled or capturable step reads it) is filled."""
    if isinstance(current, Tensor):
        current.fill_(value)
        return current
    return value
