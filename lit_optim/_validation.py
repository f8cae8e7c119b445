"""Argument checks shared by every public entry point.

Each check raises ``ValueError``/``TypeError`` with a message that names the argument, shows the value
received (``!r``), lists the allowed values (sorted) and suggests the closest one when there is one.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

__all__ = [
    "check_choice",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "check_ratio",
    "closest_match",
    "did_you_mean",
    "unknown_key_error",
]


def closest_match(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """Return the choice closest to ``name`` (case-insensitive), or ``None`` when none is ``cutoff`` similar.

    Examples:
        >>> closest_match("weight_decy", ["lr", "weight_decay", "momentum"])
        'weight_decay'
    """
    by_lower = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[hits[0]] if hits else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``."""
    match = closest_match(name, choices)
    return f" Did you mean {match!r}?" if match is not None else ""


def unknown_key_error(what: str, key: str, choices: Iterable[str], hint: str = "") -> ValueError:
    """Build the error for an unknown name, listing the valid ones and the closest match.

    Examples:
        >>> str(unknown_key_error("hyper-parameter", "lr_sclae", ["lr", "lr_scale"]))
        "Unknown hyper-parameter 'lr_sclae'. Valid: ['lr', 'lr_scale']. Did you mean 'lr_scale'?"
    """
    valid = sorted(set(choices))
    message = f"Unknown {what} {key!r}. Valid: {valid}.{did_you_mean(key, valid)}"
    return ValueError(f"{message} {hint}".rstrip())


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``.

    Examples:
        >>> check_choice("interval", "steps", ["epoch", "step"])
        Traceback (most recent call last):
        ...
        ValueError: `interval` must be one of ['epoch', 'step'], got 'steps'. Did you mean 'step'?
    """
    valid = sorted(set(choices))
    if not isinstance(value, str) or value not in valid:
        hint = did_you_mean(value, valid) if isinstance(value, str) else ""
        raise ValueError(f"`{name}` must be one of {valid}, got {value!r}.{hint}")
    return value


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    if math.isnan(value):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as float if it is a finite number > 0, else raise."""
    number = _check_real(name, value)
    if not 0 < number < math.inf:
        raise ValueError(f"`{name}` must be > 0 and finite, got {value!r}.")
    return number


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as float if it is a finite number >= 0, else raise."""
    number = _check_real(name, value)
    if not 0 <= number < math.inf:
        raise ValueError(f"`{name}` must be >= 0 and finite, got {value!r}.")
    return number


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (not a truthy string such as ``"false"``), else raise."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 1, got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    return value


def check_ratio(name: str, value: object, *, low_inclusive: bool = False) -> float:
    """Return ``value`` if it lies in (0, 1] (or [0, 1] with ``low_inclusive``), else raise."""
    number = _check_real(name, value)
    ok = (0 <= number <= 1) if low_inclusive else (0 < number <= 1)
    if not ok:
        interval = "[0, 1]" if low_inclusive else "(0, 1]"
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")
    return number
