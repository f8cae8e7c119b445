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
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from lit_optim._validation import check_bool, closest_match
from lit_optim.schedules._param_checks import (
    absolute_lr_option,
    assigned,
    changed_param_schedules,
    check_not_flattened,
    field_hint,
    glob_list,
    own_number,
)
from lit_optim.schedules.base import Schedule
from lit_optim.schedules.durations import TrainingLength

__all__ = ["ParamSchedule", "ParamScheduler", "parse_field"]

_FIELD = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*(?:\[\s*(\d+)\s*\])?\s*$")
_RESERVED = {
    "lr": "the lr has its own schedule: pass it as `scheduler=`",
    "initial_lr": "it is the lr's base value",
    "applied_lr_scale": "it records the scale applied once, when the groups were built (a schedule on it would "
    "change nothing); the lr schedule's factor (`scheduler=`) multiplies every group's lr",
    "lr_scale": "a group's lr scale is applied once, when the groups are built (a schedule on it would change "
    "nothing); the lr schedule's factor (`scheduler=`) multiplies every group's lr",
    "params": "it holds the tensors",
    "name": "it is the group's label",
}


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
        check_bool("relative", self.relative)
        from lit_optim.schedules._config import spec_from_config  # both modules import this one
        from lit_optim.schedules.scheduler import as_schedule

        object.__setattr__(self, "shape", as_schedule(spec_from_config(self.shape)))
        absolute = absolute_lr_option(self.shape)
        if absolute is not None:
            raise ValueError(
                f"The ParamSchedule shape {self.shape!r} has an absolute lr ({absolute}), which has no meaning for "
                "another hyper-parameter. Give the values as ParamSchedule `start`/`end` and a shape without it "
                "(e.g. `min_lr` as a ratio, `Warmup(start_factor=...)`)."
            )
        if getattr(self.shape, "cycle_momentum", False):
            raise ValueError(
                f"The ParamSchedule shape {self.shape!r} cycles momentum, which has no meaning here (only its lr "
                "factor shapes the value). Use `cycle_momentum=False`, or a `momentum`/`betas[0]` ParamSchedule."
            )
        object.__setattr__(self, "groups", None if self.groups is None else glob_list("groups", self.groups))
        object.__setattr__(self, "exclude", glob_list("exclude", self.exclude))
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
        start, end = self.ends(own)
        return multiplier * (start * f + end * (1.0 - f))  # exactly `start` at f=1 and `end` at f=0

    def ends(self, own: float, multiplier: float = 1.0) -> tuple[float, float]:
        """``(start, end)`` values of a group whose own value is ``own`` (factor 1 and factor 0 of the shape)."""
        if self.relative:
            start, end = own * (1.0 if self.start is None else self.start), own * self.end
        else:
            start, end = (own if self.start is None else self.start), self.end
        return (start, end) if multiplier == 1.0 else (multiplier * start, multiplier * end)

    def resolve(self, length: TrainingLength) -> ParamSchedule:
        """A copy whose shape's durations are resolved to optimizer steps."""
        assert isinstance(self.shape, Schedule)
        return dataclasses.replace(self, shape=self.shape.resolve(length))


def as_param_schedules(schedules: object, what: str = "param_schedules") -> dict[str, ParamSchedule]:
    """``{field: ParamSchedule}`` from ParamSchedules or their mappings (``{"end": ...}`` or ``class_path`` form).

    Raises:
        TypeError: ``schedules`` is not a mapping, or one of its values is neither a ParamSchedule nor a mapping.
    """
    if not isinstance(schedules, Mapping):
        raise TypeError(
            f"`{what}` must map a field name to a ParamSchedule, e.g. {{'weight_decay': ParamSchedule(end=0.4)}}; "
            f"got {schedules!r}."
        )
    specs = {}
    for name, spec in schedules.items():
        try:
            spec = _from_mapping(spec) if isinstance(spec, Mapping) else spec
        except ValueError as err:
            raise ValueError(f"{err} (in the {name!r} schedule of `{what}`)") from err
        if not isinstance(spec, ParamSchedule):
            raise TypeError(
                f"The schedule for {name!r} must be a ParamSchedule (or its mapping), got {spec!r}; e.g. "
                f"ParamSchedule(end={spec!r}) moves each group's own value to it."
            )
        specs[str(name)] = spec
    return specs


def _from_mapping(config: Mapping[str, Any]) -> Any:
    """A ParamSchedule from its arguments or its ``{"class_path": ..., "init_args": ...}`` config."""
    from lit_optim.schedules._config import build_spec, spec_from_config  # _config imports this module

    return spec_from_config(config) if "class_path" in config else build_spec(ParamSchedule, config)


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
        self.total_steps = length.total_steps
        self.fields: dict[str, tuple[str, int | None, ParamSchedule]] = {}
        for name, spec in as_param_schedules(schedules, "params").items():
            key, index = parse_field(name)
            label = _label(key, index)
            if label in self.fields:
                raise ValueError(f"Two schedules for {label!r} ({name!r} and another spelling): give one.")
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
            first = not bases
            for i in range(len(bases), len(groups)):
                bases.append(
                    self._own(groups[i], names[i], key, index, spec)
                    if self._chosen(names[i], groups[i], key, spec)
                    else None
                )
            if not any(b is not None for b in bases):
                hint = (
                    " An absolute weight_decay schedule leaves groups with weight decay 0 (the no-decay groups) "
                    f"alone: name the groups to schedule, e.g. `groups={names}`."
                    if key == "weight_decay" and not spec.relative and spec.groups is None
                    else ""
                )
                raise ValueError(f"The {label!r} schedule selects no param group; groups are {names}.{hint}")
            if first:  # at construction: a group added later (e.g. unfrozen) simply joins the curve
                check_not_flattened(label, spec, names, bases)
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
            hint = field_hint(key, group)
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
            return own_number(value, label, name)
        if not isinstance(value, (tuple, list)) or index >= len(value):
            raise ValueError(f"{label!r}: {key!r} of group {name!r} is {value!r}, which has no item {index}.")
        own = own_number(value[index], label, name)
        if key == "betas":  # the curve's ends as this group gets them (relative, scaled)
            for end in spec.ends(own, _multiplier(spec, name)):
                if end >= 1:
                    raise ValueError(
                        f"{label!r} values must be < 1 (torch's Adam-family check), got {end!r} for group {name!r} "
                        f"(its own value {own!r})."
                    )
        return own

    def apply(self, groups: list[dict[str, Any]], step: int) -> None:
        """Set every scheduled field of every selected group to its value at optimizer ``step``."""
        if len(groups) > len(next(iter(self.multipliers.values()))):
            self.adopt(groups)  # groups added since (or re-added after a resume, whose own values were restored)
        for label, (key, index, spec) in self.fields.items():
            for group, own, multiplier in zip(groups, self.bases[label], self.multipliers[label], strict=False):
                if own is None:
                    continue
                value = spec.value(step, self.total_steps, own, multiplier)
                if index is None:
                    group[key] = assigned(group[key], value)
                else:
                    items = list(group[key])
                    items[index] = assigned(items[index], value)
                    group[key] = type(group[key])(items)

    def metrics(self, groups: list[dict[str, Any]], names: list[str], skip: Collection[str] = ()) -> dict[str, float]:
        """``{"{field}/{name}": value}`` of every scheduled field but those in ``skip``, for a logger.

        ``betas[2]`` is written ``beta3`` (as ``beta2`` is ``betas[1]``) and ``key[1]`` ``key_1``: no brackets,
        which some loggers (MLflow) refuse.
        """
        values: dict[str, float] = {}
        for label, (key, index, _) in self.fields.items():
            if label in skip:
                continue
            metric = key if index is None else (f"beta{index + 1}" if key == "betas" else f"{key}_{index}")
            for group, name in zip(groups, names, strict=False):
                value = group.get(key)
                if value is not None and (index is None or index < len(value)):
                    values[f"{metric}/{name}"] = float(value if index is None else value[index])
        return values

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

    def changes(self, state: Mapping[str, Any], step: int) -> list[str]:
        """How the schedules differ from those saved in ``state`` (``{}`` for a checkpoint without any), as messages."""
        saved = dict(state.get("specs", {}))
        now = {label: repr(spec) for label, (_, _, spec) in self.fields.items()}
        return changed_param_schedules(saved, now, step)


def _multiplier(spec: ParamSchedule, name: str) -> float:
    for glob, multiplier in spec.scale.items():
        if fnmatch.fnmatchcase(name, glob):
            return multiplier
    return 1.0
