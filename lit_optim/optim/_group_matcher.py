"""timm's ``group_matcher(coarse=False)`` convention, reimplemented: parameter names -> layer ids.

A timm model's ``group_matcher(coarse=False)`` returns an ordered mapping ``group -> rule``. A rule is a regex
string, or a list of ``(regex, suffix)`` pairs where ``suffix`` is ``None`` or a tuple of ints. A name's sort key
is the first rule (in order) whose regex matches at the start of the name: ``(ordinal of its group,
*the regex's captured numbers, *suffix)``; names no rule matches sort last. The distinct keys, sorted, become
layer ids 0, 1, 2, ... except that a key ending in ``MATCH_PREV_GROUP`` (99999) joins the layer before it.
``group_matcher`` may also be a callable ``name -> int or tuple of ints`` (the key itself).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["MATCH_PREV_GROUP", "defines_group_matcher", "matcher_layer_ids", "matcher_layers"]

#: The suffix that puts a name into the layer of the key sorted just before it (timm's ``MATCH_PREV_GROUP``).
MATCH_PREV_GROUP = 99999

_Key = tuple[float, ...]


def defines_group_matcher(module: nn.Module) -> bool:
    """Whether the module's class defines ``group_matcher`` (a wrapper forwarding attributes does not count)."""
    return callable(getattr(type(module), "group_matcher", None))


def _compile(spec: Mapping[str, Any], owner: str) -> list[tuple[re.Pattern[str], tuple[float, ...], Any]]:
    rules: list[tuple[re.Pattern[str], tuple[float, ...], Any]] = []
    for ordinal, (group, rule) in enumerate(spec.items()):  # the ordinal counts groups whose rule is None too
        if rule is None:
            continue
        pairs = [(rule, None)] if isinstance(rule, str) else rule
        try:
            for regex, suffix in pairs:
                rules.append((re.compile(regex), (float(ordinal),), suffix))
        except (TypeError, ValueError, re.error) as error:
            raise ValueError(
                f"{owner}.group_matcher(coarse=False)[{group!r}] must be a regex or a list of (regex, suffix) pairs, "
                f"got {rule!r} ({error})."
            ) from None
    return rules


def _key_from_rules(name: str, rules: Sequence[tuple[re.Pattern[str], tuple[float, ...], Any]], owner: str) -> _Key:
    for regex, prefix, suffix in rules:
        found = regex.match(name)
        if found is None:
            continue
        captured = found.groups()
        if any(part is None for part in captured):
            raise ValueError(
                f"{owner}.group_matcher rule {regex.pattern!r} matched {name!r} without capturing every group "
                f"({captured!r}). HINT: make each group in the regex match a number, or pass `layer_id_fn`."
            )
        suffix = suffix if isinstance(suffix, (tuple, list)) or suffix is None else (suffix,)
        try:
            return prefix + tuple(float(part) for part in captured) + tuple(float(s) for s in suffix or ())
        except ValueError:
            raise ValueError(
                f"{owner}.group_matcher rule {regex.pattern!r} captured {captured!r} from {name!r}; captured "
                "groups must be numbers (block indices)."
            ) from None
    return (math.inf,)


def _key_from_callable(name: str, matcher: Callable[[str], Any], owner: str) -> _Key:
    value = matcher(name)
    parts = tuple(value) if isinstance(value, Iterable) else (value,)
    if not parts or any(isinstance(p, bool) or not isinstance(p, (int, float)) for p in parts):
        raise TypeError(f"{owner}.group_matcher returned {value!r} for {name!r}; it must return a number or a tuple.")
    return tuple(float(p) for p in parts)


def matcher_layer_ids(module: nn.Module, names: Iterable[str]) -> dict[str, int]:
    r"""Layer id per name (relative to ``module``) from ``module.group_matcher(coarse=False)``, as timm assigns.

    Examples:
        >>> class Net(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.stem, self.blocks = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))
        ...         self.norm = nn.LayerNorm(2)
        ...     def group_matcher(self, coarse: bool = False) -> dict:
        ...         return {"stem": r"^stem", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (MATCH_PREV_GROUP,))]}
        >>> matcher_layer_ids(Net(), ["stem.weight", "blocks.0.weight", "norm.weight", "head.weight"])
        {'stem.weight': 0, 'blocks.0.weight': 1, 'norm.weight': 1, 'head.weight': 2}
    """
    return matcher_layers(module, names)[0]


def matcher_layers(module: nn.Module, names: Iterable[str]) -> tuple[dict[str, int], int]:
    """:func:`matcher_layer_ids`, and the id of names no rule matches (timm's last layer, a new one if none).

    Parameters outside ``module`` sort there too: as names of ``module`` that no rule matches would.
    """
    owner = type(module).__name__
    try:
        spec = module.group_matcher(coarse=False)  # type: ignore[operator]
    except TypeError as error:
        raise TypeError(
            f"{owner}.group_matcher(coarse=False) failed: {error}. lit_optim follows timm's convention: a method "
            "taking `coarse` and returning a dict of regex rules. HINT: pass `layer_id_fn` instead."
        ) from error
    keys: dict[str, _Key] = {}
    if isinstance(spec, Mapping):
        rules = _compile(spec, owner)
        keys = {name: _key_from_rules(name, rules, owner) for name in names}
    elif callable(spec):
        keys = {name: _key_from_callable(name, spec, owner) for name in names}
    else:
        raise TypeError(
            f"{owner}.group_matcher(coarse=False) must return a dict of regex rules or a callable, got {spec!r}."
        )
    layer_of: dict[_Key, int] = {}
    layer = -1
    unmatched: _Key = (math.inf,)
    for key in sorted(set(keys.values()) | {unmatched}):  # (inf,) sorts last: the ids before it do not move
        if layer < 0 or key[-1] != MATCH_PREV_GROUP:
            layer += 1
        layer_of[key] = layer
    return {name: layer_of[key] for name, key in keys.items()}, layer_of[unmatched]
