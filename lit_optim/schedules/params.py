r"""Schedules for param-group hyper-parameters other than the lr: ``weight_decay``, ``momentum``, ``betas[i]``...

A :class:`ParamSchedule` moves one field of every selected param group from a start value to an end value along
the shape of a schedule spec. With the shape's factor :math:`f(s)` (1 at the start, 0 at the end for a decaying
spec with ``min_lr=0``), start :math:`S_g`, end :math:`E_g` and per-group multiplier :math:`c_g`:

.. math::
    v_g(s) = c_g \, \bigl(E_g + (S_g - E_g)\, f(s)\bigr)

so DINO's weight-decay cosine from 0.04 to 0.4 is ``ParamSchedule(start=0.04, end=0.4, shape="cosine")``: a
rising curve written with the same vocabulary as a decaying lr. :class:`~lit_optim.schedules.ScheduleLR` applies
it at every optimizer step next to the lr (``ScheduleLR(..., params={"weight_decay": ...})``), so it is a pure
function of optimizer steps, checkpointed with the scheduler and previewed by ``preview_schedule``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lit_optim._validation import closest_match, unknown_key_error
from lit_optim.schedules.base import Schedule
from lit_optim.schedules.durations import TrainingLength

__all__ = ["ParamSchedule", "ParamScheduler", "parse_field"]

_FIELD = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*(?:\[\s*(\d+)\s*\])?\s*$")
_RESERVED = {
    "lr": "the lr has its own schedule: pass it as `scheduler=`",
    "initial_lr": "it is the lr's base value",
    "params": "it holds the tensors",
    "name": "it is the group's label",
}
_NEGATIVE_HINTS = {"momentum": "betas[0]", "beta1": "betas[0]", "beta2": "betas[1]"}


def parse_field(name: object) -> tuple[str, int | None]:
    """``"betas[0]"`` -> ``("betas", 0)``; ``"weight_decay"`` -> ``("weight_decay", None)``.

    Raises:
        ValueError: not a field name (with an optional ``[index]``), or a reserved key such as ``lr``.

    Examples:
        >>> parse_field("betas[ 1 ]"), parse_field("weight_decay")
        (('betas', 1), ('weight_decay', None))
    """
    match = _FIELD.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"A scheduled hyper-parameter must be a param-group key, optionally indexed, e.g. 'weight_decay', "
            f"'momentum', 'betas[0]', 'betas[1]', 'eps'; got {name!r}."
        )
    key, index = match.group(1), match.group(2)
    if key in _RESERVED and index is None:
        raise ValueError(f"{key!r} cannot be scheduled as a hyper-parameter: {_RESERVED[key]}.")
    return key, None if index is None else int(index)


def _label(key: str, index: int | None) -> str:
    return key if index is None else f"{key}[{index}]"


def _excluded(group: dict[str, Any], name: str) -> str:
    """The exclusion that fits: a hybrid's group excludes its whole inner optimizer (all its groups lack the key)."""
    owner = group.get("optimizer")
    return f"the groups of {owner!r} (`exclude=[{owner + '/*'!r}]`)" if isinstance(owner, str) else (
        f"the group (`exclude=[{name!r}]`)")


@dataclass(frozen=True, kw_only=True)
class ParamSchedule:
    """One param-group hyper-parameter moved from ``start`` to ``end`` along the shape of a schedule.

    Args:
        end: the value at the end of the shape (absolute, or a multiple of each group's own value when
            ``relative``).
        start: the value at the start; ``None`` means each group's own value when the scheduler is built (or
            ``1.0``, i.e. the group's own value, when ``relative``).
        shape: the curve, as a schedule spec, catalogue name or ``{"name": ...}`` mapping: ``"cosine"`` (default),
            ``"linear"``, ``"constant"``, ``WarmupStableDecay(...)``... Its factor 1 means ``start`` and 0 means
            ``end``; a ``min_lr`` in the shape stops the curve short of ``end``, and its warmup ramps towards
            ``start``.
        relative: ``start``/``end`` multiply each group's own value instead of replacing it (a no-decay group
            with weight decay 0 then stays at 0 by construction).
        groups: fnmatch globs of the group names to schedule; ``None`` means every group, except that an absolute
            ``weight_decay`` schedule leaves groups whose weight decay is 0 (the no-decay groups) at 0.
        exclude: globs of group names to leave alone.
        scale: ``{glob: multiplier}``: the value of matching groups is multiplied (the first matching glob wins).

    Raises:
        ValueError: a negative or non-finite value, or an empty or ill-typed selection.

    Examples:
        >>> dino_wd = ParamSchedule(start=0.04, end=0.4, shape="cosine")
        >>> [round(dino_wd.value(s, 10, own=0.05), 4) for s in (0, 5, 10)]
        [0.04, 0.22, 0.4]
    """

    end: float
    start: float | None = None
    shape: Schedule | str | Mapping[str, Any] = "cosine"
    relative: bool = False
    groups: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    scale: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("end", "start"):
            value = getattr(self, name)
            if value is None and name == "start":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"ParamSchedule `{name}` must be a finite number >= 0, got {value!r}.")
        if not isinstance(self.relative, bool):
            raise TypeError(f"ParamSchedule `relative` must be True or False, got {self.relative!r}.")
        from lit_optim.schedules._config import spec_from_config  # both modules import this one
        from lit_optim.schedules.scheduler import as_schedule

        object.__setattr__(self, "shape", as_schedule(spec_from_config(self.shape)))
        object.__setattr__(self, "groups", None if self.groups is None else _globs("groups", self.groups))
        object.__setattr__(self, "exclude", _globs("exclude", self.exclude))
        if not isinstance(self.scale, Mapping):
            raise TypeError(f"ParamSchedule `scale` must be a mapping {{glob: multiplier}}, got {self.scale!r}.")
        for glob, multiplier in self.scale.items():
            if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not multiplier >= 0:
                raise ValueError(f"ParamSchedule `scale[{glob!r}]` must be a number >= 0, got {multiplier!r}.")
        object.__setattr__(self, "scale", {str(k): float(v) for k, v in self.scale.items()})

    def value(self, step: int, total_steps: int, own: float, multiplier: float = 1.0) -> float:
        """The value at optimizer ``step`` of a group whose own (initial) value is ``own``."""
        assert isinstance(self.shape, Schedule)  # converted in __post_init__
        f = self.shape.factor(step, total_steps)
        if self.relative:
            start, end = own * (1.0 if self.start is None else self.start), own * self.end
        else:
            start, end = (own if self.start is None else self.start), self.end
        return multiplier * (end + (start - end) * f)

    def resolve(self, length: TrainingLength) -> ParamSchedule:
        """A copy whose shape's durations are resolved to optimizer steps."""
        assert isinstance(self.shape, Schedule)
        return dataclasses.replace(self, shape=self.shape.resolve(length))


def _globs(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(
            f"ParamSchedule `{name}` must be a list of group-name globs, got the string {value!r}; write [{value!r}]."
        )
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"ParamSchedule `{name}` must be a list of group-name globs, got {value!r}.")
    return tuple(value)


class ParamScheduler:
    """The fields a :class:`~lit_optim.schedules.ScheduleLR` sets next to the lr, with each group's own values.

    Built by ``ScheduleLR(..., params=...)``; not a scheduler of its own, so there is one owner, one step count
    and one checkpoint entry for the lr and every scheduled hyper-parameter.

    Raises:
        ValueError: an unknown field (with the group's keys and a hint such as ``betas[0]`` for ``momentum``
            on Adam), a field spelled twice, a glob that matches no group, or a ``betas`` value >= 1.
    """

    def __init__(
        self,
        groups: list[dict[str, Any]],
        schedules: Mapping[str, ParamSchedule | Mapping[str, Any]],
        length: TrainingLength,
        optimizer_name: str,
    ) -> None:
        if not isinstance(schedules, Mapping):
            raise TypeError(f"`params` must map a field name to a ParamSchedule, got {schedules!r}.")
        self.total_steps = length.total_steps
        self.fields: dict[str, tuple[str, int | None, ParamSchedule]] = {}
        for name, spec in schedules.items():
            key, index = parse_field(name)
            label = _label(key, index)
            if label in self.fields:
                raise ValueError(f"Two schedules for {label!r} ({name!r} and another spelling): give one.")
            if isinstance(spec, Mapping):
                settings = [f.name for f in dataclasses.fields(ParamSchedule)]
                unknown = next((str(k) for k in spec if k not in settings), None)
                if unknown is not None:
                    raise unknown_key_error("ParamSchedule setting", unknown, settings, f"(in the {label!r} schedule)")
                spec = ParamSchedule(**spec)
            if not isinstance(spec, ParamSchedule):
                raise TypeError(f"The schedule for {label!r} must be a ParamSchedule (or its mapping), got {spec!r}.")
            self.fields[label] = (key, index, spec.resolve(length))
        self._optimizer_name = optimizer_name
        self.multipliers: dict[str, list[float]] = {}
        self.bases: dict[str, list[float | None]] = {label: [] for label in self.fields}
        self.adopt(groups)

    def adopt(self, groups: list[dict[str, Any]]) -> None:
        """Record the own values of groups not seen yet (all of them at first, then groups added later)."""
        names = [str(g.get("name", f"group{i}")) for i, g in enumerate(groups)]
        for label, (key, index, spec) in self.fields.items():
            for globs, what in ((spec.groups or (), "groups"), (spec.exclude, "exclude"), (tuple(spec.scale), "scale")):
                for glob in globs:
                    if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                        hint = closest_match(glob, names)
                        raise ValueError(
                            f"The {label!r} schedule's `{what}` glob {glob!r} matches no param group. Groups: "
                            f"{names}.{f' Did you mean {hint!r}?' if hint else ''}"
                        )
            bases = self.bases[label]
            for i in range(len(bases), len(groups)):
                bases.append(
                    self._own(groups[i], names[i], key, index, spec)
                    if self._chosen(names[i], groups[i], key, spec)
                    else None
                )
            if not any(b is not None for b in bases):
                raise ValueError(f"The {label!r} schedule selects no param group; groups are {names}.")
            self.multipliers[label] = [_multiplier(spec, n) for n in names]

    def _chosen(self, name: str, group: dict[str, Any], key: str, spec: ParamSchedule) -> bool:
        if any(fnmatch.fnmatchcase(name, g) for g in spec.exclude):
            return False
        if spec.groups is not None:
            return any(fnmatch.fnmatchcase(name, g) for g in spec.groups)
        # no-decay groups (weight decay 0) stay at 0 under an absolute schedule unless named in `groups`
        return not (key == "weight_decay" and not spec.relative and group.get("weight_decay") == 0)

    def _own(self, group: dict[str, Any], name: str, key: str, index: int | None, spec: ParamSchedule) -> float:
        label = _label(key, index)
        if key not in group:
            hint = _NEGATIVE_HINTS.get(key) if "betas" in group else ("momentum" if key == "betas" else None)
            valid = sorted(k for k in group if k not in ("params", "name", "initial_lr"))
            near = None if hint else closest_match(key, valid)
            raise ValueError(
                f"Param group {name!r} of {self._optimizer_name} has no {key!r} to schedule"
                f"{f'; for this optimizer write {hint!r}' if hint else ''}. Its keys: {valid}."
                f"{f' Did you mean {near!r}?' if near else ''} Exclude {_excluded(group, name)} if it should not be "
                "scheduled."
            )
        value = group[key]
        if index is None:
            if isinstance(value, (tuple, list)):
                raise ValueError(f"{key!r} of group {name!r} is a tuple {value!r}: schedule one item, e.g. '{key}[0]'.")
            return float(value)
        if not isinstance(value, (tuple, list)) or index >= len(value):
            raise ValueError(f"{label!r}: {key!r} of group {name!r} is {value!r}, which has no item {index}.")
        if key == "betas":
            for end in (spec.start, spec.end):
                if end is not None and not spec.relative and end >= 1:
                    raise ValueError(f"{label!r} values must be < 1 (torch's Adam-family check), got {end!r}.")
        return float(value[index])

    def apply(self, groups: list[dict[str, Any]], step: int) -> None:
        """Set every scheduled field of every selected group to its value at optimizer ``step``."""
        if len(groups) > len(next(iter(self.bases.values()))):
            self.adopt(groups)
        for label, (key, index, spec) in self.fields.items():
            for group, own, multiplier in zip(groups, self.bases[label], self.multipliers[label], strict=False):
                if own is None:
                    continue
                value = spec.value(step, self.total_steps, own, multiplier)
                if index is None:
                    group[key] = value
                else:
                    items = list(group[key])
                    items[index] = value
                    group[key] = type(group[key])(items)

    def state_dict(self) -> dict[str, Any]:
        """The groups' own values per field (what the curves start from), as plain values."""
        return {
            "bases": {label: list(values) for label, values in self.bases.items()},
            "specs": {label: repr(spec) for label, (_, _, spec) in self.fields.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the groups' own values, so a resumed curve is the uninterrupted one."""
        for label, values in dict(state.get("bases", {})).items():
            if label in self.bases:
                self.bases[label] = [None if v is None else float(v) for v in values]


def _multiplier(spec: ParamSchedule, name: str) -> float:
    for glob, multiplier in spec.scale.items():
        if fnmatch.fnmatchcase(name, glob):
            return multiplier
    return 1.0
