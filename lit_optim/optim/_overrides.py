"""Per-module hyper-parameter overrides: parsing, matching and precedence."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lit_optim._validation import closest_match, unknown_key_error
from lit_optim.optim._optimizer_checks import check_hyperparameter_values, check_rate
from lit_optim.optim.optimizers import _torch_optimizers, hyperparameter_names, resolve_optimizer

__all__ = ["Override", "combine_overrides", "parse_overrides"]

_OWN_KEYS = frozenset({"lr_scale", "name", "optimizer"})  # "optimizer": routes to a hybrid's inner optimizer


@dataclass(frozen=True)
class Override:
    """One parsed override: label, settings, matched parameter indices and the names of tied ones it matched."""

    pattern: str
    label: str
    settings: Mapping[str, Any]
    matched: frozenset[int]
    names: frozenset[str]


@functools.cache
def _any_torch_hyperparameter() -> frozenset[str]:
    names: set[str] = set()
    for cls in _torch_optimizers().values():
        names |= hyperparameter_names(cls) or set()
    return frozenset(names)


def _allowed_keys(optimizer: str | type[Optimizer] | None) -> tuple[frozenset[str] | None, str]:
    if optimizer is None:
        return _any_torch_hyperparameter() | _OWN_KEYS, "any torch.optim optimizer"
    cls = resolve_optimizer(optimizer)
    names = hyperparameter_names(cls)
    return (None if names is None else names | _OWN_KEYS), cls.__name__


def _no_match_error(pattern: str, module: nn.Module, names: Sequence[str]) -> ValueError:
    module_names = [name for name, _ in module.named_modules() if name]
    candidates = list(names) + [name + ".*" for name in module_names]
    close = closest_match(pattern, candidates)
    sample = ", ".join(repr(n) for n in names[:3])
    hint = "HINT: patterns are fnmatch globs on full parameter names, e.g. 'blocks.0.*' or '*.bias'."
    if pattern in module_names:
        hint = f"HINT: {pattern!r} is a module name; use {pattern + '.*'!r} or pass the module itself."
    suggestion = f" Did you mean {close!r}?" if close else ""
    return ValueError(
        f"Override pattern {pattern!r} matched no parameter. Parameters look like: {sample}, ...{suggestion} {hint}"
    )


def _match_module(
    pattern: nn.Module, module: nn.Module, params: Sequence[nn.Parameter]
) -> tuple[str, set[int], set[str]]:
    label = next((name for name, m in module.named_modules() if m is pattern), None)
    if label is None:
        raise ValueError(
            f"Override module {type(pattern).__name__} is not a submodule of {type(module).__name__}. "
            "HINT: pass a module from this model's tree, or a glob on its parameter names."
        )
    ids = {id(p) for p in pattern.parameters()}
    prefix = label + "." if label else ""
    names = {prefix + name for name, _ in pattern.named_parameters(remove_duplicate=False)}
    return label or type(pattern).__name__, {i for i, p in enumerate(params) if id(p) in ids}, names


def parse_overrides(
    module: nn.Module,
    overrides: Mapping[str | nn.Module, Mapping[str, Any]],
    params: Sequence[nn.Parameter],
    names: Sequence[str],
    aliases: Mapping[int, Sequence[str]],
    optimizer: str | type[Optimizer] | None,
    *,
    trainable: Sequence[bool] | None = None,
) -> list[Override]:
    """Check every override's keys and values and find the parameters each pattern matches.

    ``trainable`` flags the parameters that will be grouped; an override matching none of them raises.
    """
    if not isinstance(overrides, Mapping):
        raise TypeError(f"`overrides` must be a mapping pattern -> settings, got {type(overrides).__name__}.")
    allowed, owner = _allowed_keys(optimizer) if overrides else (None, "")
    cls_checked = resolve_optimizer(optimizer) if optimizer is not None and overrides else None
    parsed = []
    for pattern, settings in overrides.items():
        shown = repr(pattern) if isinstance(pattern, str) else type(pattern).__name__
        if not isinstance(settings, Mapping):
            raise TypeError(f"Override {shown} must map to a dict of settings, got {settings!r}.")
        for key in settings:
            if key == "params" or (allowed is not None and key not in allowed):
                raise unknown_key_error(
                    "setting",
                    key,
                    (allowed or _OWN_KEYS) - {"params"},
                    hint=f"It appears in override {shown}; settings are the hyper-parameters of {owner} plus "
                    "lit_optim's 'lr_scale' and 'name'.",
                )
        for key in ("lr", "lr_scale", "weight_decay"):
            if key in settings:
                check_rate(f"overrides[{shown}][{key!r}]", settings[key])
        if "name" in settings and not isinstance(settings["name"], str):
            raise TypeError(f"`overrides[{shown}]['name']` must be a string, got {settings['name']!r}.")
        if "name" in settings and not settings["name"].strip():
            raise ValueError(
                f"`overrides[{shown}]['name']` must be a non-empty label, got {settings['name']!r}. HINT: use a "
                "short label such as 'head', or drop 'name' to label the groups after the pattern."
            )
        if isinstance(pattern, nn.Module):
            label, matched, matched_names = _match_module(pattern, module, params)
        elif isinstance(pattern, str):
            regex = re.compile(fnmatch.translate(pattern))
            matched = {i for i, name in enumerate(names) if regex.match(name)}
            by_alias = {i: [n for n in more if regex.match(n)] for i, more in aliases.items()}
            matched |= {i for i, hits in by_alias.items() if hits}
            # only tied parameters need their names (see `_check_tied`)
            matched_names = {names[i] for i in aliases if regex.match(names[i])}
            matched_names.update(n for hits in by_alias.values() for n in hits)
            if not matched:
                raise _no_match_error(pattern, module, names)
            label = pattern[:-2] if pattern.endswith(".*") else pattern
        else:
            raise TypeError(
                "An override pattern must be a glob string or an nn.Module, "
                f"got {pattern!r} ({type(pattern).__name__})."
            )
        if trainable is not None and matched and not any(trainable[i] for i in matched):
            raise ValueError(
                f"Override {shown} matches only frozen parameters ({len(matched)}, e.g. {names[min(matched)]!r}), so "
                "it would change nothing. HINT: unfreeze them before grouping, pass include_frozen=True to group "
                "them for a later unfreeze, or remove the override."
            )
        if cls_checked is not None:
            check_hyperparameter_values(cls_checked, settings, f"override {shown}")
        parsed.append(
            Override(shown, settings.get("name", label), dict(settings), frozenset(matched), frozenset(matched_names))
        )
    return parsed


def _same(a: Any, b: Any) -> bool:
    return a is b or (not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and bool(a == b))


def combine_overrides(
    parsed: Sequence[Override], count: int, names: Sequence[str], aliases: Mapping[int, Sequence[str]]
) -> list[tuple[int, ...]]:
    """For each parameter, the indices of the overrides matching it, least specific first (so later wins).

    Raises:
        ValueError: when two overrides set a key to different values for a parameter and neither matches a
            subset of the other's parameters (and no more specific override settles that key).
    """
    if not parsed:
        return []
    matching: list[list[int]] = [[] for _ in range(count)]
    for k, override in enumerate(parsed):
        for i in override.matched:
            matching[i].append(k)
    combos: list[tuple[int, ...]] = []
    checked: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i, found in enumerate(matching):
        key = tuple(found)
        combo = checked.get(key)
        if combo is None:
            combo = tuple(sorted(found, key=lambda k: (-len(parsed[k].matched), k)))
            _check_unambiguous(parsed, combo, names[i])
            checked[key] = combo
        if i in aliases and len(combo) > 1:
            _check_tied(parsed, combo, names[i], aliases[i])
        combos.append(combo)
    return combos


def _check_unambiguous(parsed: Sequence[Override], combo: tuple[int, ...], name: str) -> None:
    keys = {key for k in combo for key in parsed[k].settings}
    for key in sorted(keys):
        setters = [k for k in combo if key in parsed[k].settings]
        winner = parsed[setters[-1]]
        for k in setters[:-1]:
            other = parsed[k]
            if _same(other.settings[key], winner.settings[key]) or winner.matched <= other.matched:
                continue
            raise ValueError(
                f"Parameter {name!r} is claimed by overrides {other.pattern} ({key}={other.settings[key]!r}) and "
                f"{winner.pattern} ({key}={winner.settings[key]!r}), which overlap only partly, so neither is "
                f"more specific. HINT: give both the same {key!r}, or add an override for the overlap "
                "(it matches fewer parameters, so it wins)."
            )


def _occurrence(name: str) -> str:
    """A name without wrapper parts (``torch.compile``'s ``_orig_mod.``, DDP's leading ``module.``)."""
    name = name.replace("_orig_mod.", "")
    return name[len("module.") :] if name.startswith("module.") else name


def _check_tied(parsed: Sequence[Override], combo: tuple[int, ...], name: str, aliases: Sequence[str]) -> None:
    """Overrides that reach a tied parameter only by different names (``tok_emb.*``, ``lm_head.*``) must agree."""
    all_names = {name, *aliases}
    first = _occurrence(name)
    others = sorted({_occurrence(n) for n in aliases} - {first})
    if not others:  # not tied, only spelled with and without a wrapper's prefix
        return
    for key in sorted({key for k in combo for key in parsed[k].settings}):
        setters = [k for k in combo if key in parsed[k].settings]
        winner = parsed[setters[-1]]
        via_winner = {_occurrence(n) for n in winner.names & all_names}
        for k in setters[:-1]:
            other = parsed[k]
            if _same(other.settings[key], winner.settings[key]):
                continue
            if via_winner.isdisjoint(_occurrence(n) for n in other.names & all_names):
                raise ValueError(
                    f"Parameter {name!r} is tied (also named {others}); overrides {other.pattern} "
                    f"({key}={other.settings[key]!r}) and {winner.pattern} ({key}={winner.settings[key]!r}) reach "
                    f"it by different names and disagree. HINT: a tied parameter has one {key!r}; give both "
                    "overrides the same value, or untie the weights."
                )
