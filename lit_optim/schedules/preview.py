"""The lr curve of a schedule without training: computed by a real :class:`ScheduleLR`, as a table, CSV or PNG."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer

from lit_optim._validation import unknown_key_error
from lit_optim.schedules._output import new_figure, save_png, write_csv
from lit_optim.schedules._param_checks import field_hint
from lit_optim.schedules.base import Schedule
from lit_optim.schedules.durations import TrainingLength, resolve_training_length
from lit_optim.schedules.params import ParamSchedule, parse_field
from lit_optim.schedules.scheduler import ScheduleLR

__all__ = ["LRCurve", "preview_schedule"]


@dataclass(frozen=True)
class LRCurve:
    """The lr of every param group at every optimizer step of a run (step *s* uses ``lrs[s]``).

    Attributes:
        names: one name per param group.
        lrs: per step, the lr of each group.
        momenta: per step, the momentum/beta1 the schedule sets, or ``None`` when it sets none.
        steps_per_epoch: steps per epoch when known (for the plot's epoch marks).
        params: per scheduled hyper-parameter (``"weight_decay"``, ``"betas[0]"``...), per step, the value of each
            group (``nan`` for a group the schedule leaves alone); empty without ``params``.

    Examples:
        >>> curve = preview_schedule("linear", 4, base_lrs={"body": 0.1, "head": 1.0})
        >>> print(curve)
        step  body   head
           0  0.1    1
           1  0.075  0.75
           2  0.05   0.5
           3  0.025  0.25
    """

    names: tuple[str, ...]
    lrs: tuple[tuple[float, ...], ...]
    momenta: tuple[float, ...] | None = None
    steps_per_epoch: int | None = None
    params: Mapping[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lrs)

    def lr(self, group: int | str) -> list[float]:
        """The lr of one group (by index or name) at every step.

        Raises:
            ValueError: an unknown group name.
        """
        if isinstance(group, str) and group not in self.names:
            raise unknown_key_error("param group", group, self.names)
        index = self.names.index(group) if isinstance(group, str) else group
        return [row[index] for row in self.lrs]

    def value(self, param: str, group: int | str) -> list[float]:
        """A scheduled hyper-parameter (e.g. ``"weight_decay"``) of one group at every step.

        Raises:
            ValueError: an unknown hyper-parameter or group name.
        """
        if param not in self.params:
            raise unknown_key_error("scheduled hyper-parameter", param, self.params)
        if isinstance(group, str) and group not in self.names:
            raise unknown_key_error("param group", group, self.names)
        index = self.names.index(group) if isinstance(group, str) else group
        return [row[index] for row in self.params[param]]

    def _columns(self) -> tuple[list[str], list[list[float]]]:
        """Headers after ``step`` and, per step, the values: lrs, momentum, then ``{param}/{group}``."""
        headers = [*self.names] + (["momentum"] if self.momenta is not None else [])
        headers += [f"{param}/{name}" for param in self.params for name in self.names]
        rows = []
        for s, lrs in enumerate(self.lrs):
            row = [*lrs] + ([self.momenta[s]] if self.momenta is not None else [])
            rows.append(row + [v for values in self.params.values() for v in values[s]])
        return headers, rows

    def table(self, max_rows: int | None = 20) -> str:
        """The curve as an aligned text table; at most ``max_rows`` evenly spaced steps (the first and last included).

        Raises:
            ValueError: ``max_rows`` below 2 (``None`` shows every step).
        """
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 2):
            raise ValueError(f"`max_rows` must be None or an int >= 2 (the first and last step), got {max_rows!r}.")
        n = len(self.lrs)
        if max_rows is None or n <= max_rows:
            rows = list(range(n))
        else:
            rows = sorted({round(i * (n - 1) / (max_rows - 1)) for i in range(max_rows)})
        names, columns = self._columns()
        headers = ["step", *names]
        cells = [[str(s), *(f"{v:.6g}" for v in columns[s])] for s in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
        for c in cells:
            values = [v.ljust(w) for v, w in zip(c[1:], widths[1:], strict=True)]
            lines.append("  ".join([c[0].rjust(widths[0]), *values]).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_csv(self, path: str | Path) -> Path:
        """Write ``step,<group names>[,momentum][,<param>/<group>...]`` rows (full precision) and return ``path``."""
        names, values = self._columns()
        return write_csv(path, names, values)

    def plot(self, path: str | Path, title: str | None = None, log_scale: bool = False) -> Path:
        """Save the curve as a PNG (one line per group) and return ``path``. Needs the ``plot`` extra.

        Raises:
            ImportError: matplotlib is not installed.
        """
        fig = new_figure("LRCurve.plot", figsize=(7, 3.6 + 2.4 * len(self.params)))
        axes = fig.subplots(1 + len(self.params), 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        steps = range(len(self.lrs))
        for param_ax, (param, values) in zip(axes[1:], self.params.items(), strict=True):
            for i, name in enumerate(self.names):
                param_ax.plot(steps, [row[i] for row in values], label=name, linewidth=1.6)
            param_ax.set_ylabel(param)
            param_ax.grid(alpha=0.3)
        for i, name in enumerate(self.names):
            ax.plot(steps, self.lr(i), label=name, linewidth=1.6)
        if self.steps_per_epoch is not None and self.steps_per_epoch < len(self.lrs):
            for boundary in range(self.steps_per_epoch, len(self.lrs), self.steps_per_epoch):
                ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
        axes[-1].set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        if log_scale:
            ax.set_yscale("log")
        if title:
            ax.set_title(title)
        ax.legend(loc="best", frameon=False)
        ax.grid(alpha=0.3)
        return save_png(fig, path)


def preview_schedule(
    schedule: Schedule | str | Mapping[str, Any],
    length: int | TrainingLength | Any,
    base_lrs: float | Sequence[float] | dict[str, float] | Optimizer | Sequence[dict[str, Any]] = 1.0,
    params: Mapping[str, ParamSchedule | Mapping[str, Any]] | None = None,
    values: Mapping[str, Any] | None = None,
) -> LRCurve:
    """The per-step, per-group lr curve of ``schedule``, obtained by stepping a real :class:`ScheduleLR`.

    The scheduler drives a throw-away SGD optimizer holding one tensor per group, so what you see is what
    ``ScheduleLR`` will set during training (no second formula).

    Step *s* of the curve is the *s*-th optimizer step that advances the schedule. Through ``SchedulerStepper``
    that is every optimizer step with gradients (``skipped_steps="hold"``, the default: a run with steps whose
    ``training_step`` returned ``None`` ends before the curve does, and the stepper warns), or every optimizer step,
    as ``global_step`` counts them (``skipped_steps="advance"``: the lr at global step *s* is the curve's step *s*).

    Args:
        schedule: a schedule spec, a catalogue name or a ``{"name": ..., **params}`` mapping.
        length: the run: total optimizer steps, a :class:`TrainingLength` (e.g.
            ``TrainingLength.from_loop(max_epochs=..., batches_per_epoch=...)``), or a Trainer.
        base_lrs: the groups' initial lrs: one number, a list, ``{name: lr}``, an optimizer (its groups'
            ``initial_lr``/``lr`` and ``name``; it is not modified) or a list of param-group dicts.
        params: ``{field: ParamSchedule}``: other hyper-parameters to schedule, as ``ScheduleLR(params=...)``.
        values: the groups' own values of other hyper-parameters (``{"weight_decay": 0.05}``, one value for every
            group or a list per group); an optimizer or group dicts in ``base_lrs`` bring their own.

    Raises:
        ValueError: no groups, or what :class:`ScheduleLR` raises for the spec and run.

    Examples:
        >>> from lit_optim.schedules import Cosine
        >>> curve = preview_schedule(Cosine(warmup="10%"), 1000, base_lrs=[3e-4, 3e-5])
        >>> len(curve), curve.names, curve.lrs[100]
        (1000, ('group_0', 'group_1'), (0.0003, 3e-05))
    """
    if isinstance(length, TrainingLength):
        resolved = length
    elif isinstance(length, int) and not isinstance(length, bool):
        resolved = TrainingLength(total_steps=length)
    else:
        resolved = resolve_training_length(length)
    names, lrs = _groups(base_lrs)
    extras = _group_values(base_lrs, values, names)
    _check_own_values(params or {}, values or {}, names, extras)
    optimizer = torch.optim.SGD(
        [
            {**extra, "params": [torch.zeros(1, requires_grad=True)], "lr": lr, "name": name}
            for name, lr, extra in zip(names, lrs, extras, strict=True)
        ],
        lr=lrs[0],
        momentum=0.9,
    )
    scheduler = ScheduleLR(optimizer, schedule, resolved.total_steps, resolved.steps_per_epoch, params=params)
    groups = optimizer.param_groups
    driver = scheduler.params
    tracks: dict[str, list[tuple[float, ...]]] = {label: [] for label in (driver.fields if driver else ())}
    cycles = scheduler.schedule.momentum(0, resolved.total_steps) is not None
    rows: list[tuple[float, ...]] = []
    momenta: list[float] = []
    for _ in range(resolved.total_steps):
        rows.append(tuple(float(g["lr"]) for g in groups))
        if cycles:
            momenta.append(float(groups[0]["momentum"]))
        for label, track in tracks.items():
            assert driver is not None
            key, index, _ = driver.fields[label]
            track.append(
                tuple(
                    float(g[key] if index is None else g[key][index]) if own is not None else math.nan
                    for g, own in zip(groups, driver.bases[label], strict=True)
                )
            )
        optimizer.step()  # no gradients: a no-op that keeps torch's step-order check satisfied
        scheduler.step()
    return LRCurve(
        tuple(names),
        tuple(rows),
        tuple(momenta) if cycles else None,
        resolved.steps_per_epoch,
        {label: tuple(track) for label, track in tracks.items()},
    )


_NOT_VALUES = frozenset({"params", "lr", "initial_lr", "name"})


def _check_own_values(
    params: Mapping[str, Any], values: Mapping[str, Any], names: list[str], extras: list[dict[str, Any]]
) -> None:
    """Every scheduled field comes from the user's groups or ``values``, never from the stand-in SGD's defaults."""
    keys = {parse_field(label)[0]: label for label in params}
    for key in values:
        if key not in keys:
            raise unknown_key_error(
                "`values` key",
                str(key),
                keys,
                "It is not a scheduled field: `values` gives the groups' own values of the fields in `params`.",
            )
    for key, label in keys.items():
        missing = [name for name, extra in zip(names, extras, strict=True) if key not in extra]
        if not missing:
            continue
        hint = field_hint(key, extras[names.index(missing[0])])
        raise ValueError(
            f"The preview of the {label!r} schedule needs each group's own {key!r}; groups {missing} have no "
            f"{key!r}{f' (for this optimizer write {hint!r})' if hint else ''}. Pass `values={{{key!r}: ...}}` "
            "(one value, or a list per group) or the optimizer itself as `base_lrs`."
        )


def _group_values(base_lrs: Any, values: Mapping[str, Any] | None, names: list[str]) -> list[dict[str, Any]]:
    """Per group, the hyper-parameters other than the lr: from given groups, then from ``values``."""
    groups = base_lrs.param_groups if isinstance(base_lrs, Optimizer) else base_lrs
    if isinstance(groups, Sequence) and groups and all(isinstance(g, dict) for g in groups):
        extras = [{k: v for k, v in g.items() if k not in _NOT_VALUES} for g in groups]
    else:
        extras = [{} for _ in names]
    for key, value in (values or {}).items():
        if isinstance(value, Sequence) and not isinstance(value, (str, tuple)):
            if len(value) != len(names):
                raise ValueError(f"`values[{key!r}]` has {len(value)} entries for {len(names)} param groups {names}.")
            for extra, item in zip(extras, value, strict=True):
                extra[key] = item
        else:
            for extra in extras:
                extra[key] = value
    return extras


def _groups(base_lrs: Any) -> tuple[list[str], list[float]]:
    if isinstance(base_lrs, Optimizer):
        base_lrs = base_lrs.param_groups
    if isinstance(base_lrs, dict):
        names, lrs = [str(k) for k in base_lrs], [float(v) for v in base_lrs.values()]
    elif isinstance(base_lrs, (int, float)) and not isinstance(base_lrs, bool):
        names, lrs = ["group_0"], [float(base_lrs)]
    elif isinstance(base_lrs, Sequence) and all(isinstance(g, dict) for g in base_lrs):
        names = [str(g.get("name", f"group_{i}")) for i, g in enumerate(base_lrs)]
        lrs = [float(g.get("initial_lr", g["lr"])) for g in base_lrs]
    elif isinstance(base_lrs, Sequence) and all(isinstance(v, (int, float)) for v in base_lrs):
        names, lrs = [f"group_{i}" for i in range(len(base_lrs))], [float(v) for v in base_lrs]
    else:
        raise TypeError(
            "`base_lrs` must be a number, a list of numbers, {name: lr}, an optimizer or a list of param-group "
            f"dicts, got {base_lrs!r}."
        )
    if not lrs:
        raise ValueError("`base_lrs` holds no param group: give at least one lr.")
    for name, lr in zip(names, lrs, strict=True):
        if not lr >= 0:
            raise ValueError(f"The lr of group {name!r} must be >= 0, got {lr!r}.")
    return names, lrs
