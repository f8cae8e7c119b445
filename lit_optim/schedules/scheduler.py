"""``ScheduleLR``: a torch lr scheduler driven by a schedule spec, counting optimizer steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lit_optim.schedules._param_checks import assigned, changed_param_schedules
from lit_optim.schedules.base import Schedule
from lit_optim.schedules.catalogue import build_schedule
from lit_optim.schedules.durations import TrainingLength
from lit_optim.schedules.params import ParamSchedule, ParamScheduler

if TYPE_CHECKING:
    pass

__all__ = ["ScheduleLR", "as_schedule"]

OPEN_ENDED_STEPS = 2**53
"""``total_steps`` of a run of unknown length, for a schedule that does not depend on it (never reached)."""


class ScheduleLR(LRScheduler):
    """Set each param group's lr to ``initial_lr * factor + offset`` (``schedule.lr_terms``) after every step.

    ``offset`` is 0 unless the spec has an absolute floor or warmup start (``min_lr_abs``, ``Warmup(start_lr=)``).

    ``last_epoch`` counts optimizer steps done (torch's name, kept so that the Lightning checkpoint and
    ``LearningRateMonitor`` work unchanged): after construction the optimizer holds the lr of step 0, and each
    :meth:`step` (called once per real optimizer step) moves to the next. Durations in the spec are resolved
    once, at construction, against ``total_steps``/``steps_per_epoch``; :meth:`step` only evaluates the spec.

    **Groups added later** (e.g. by ``BaseFinetuning.unfreeze_and_add_param_group``) join the schedule at its
    current point: a group without ``initial_lr`` gets ``initial_lr = lr / factor(now)`` (its ``lr`` when the
    factor is 0), so its lr continues from what it was given and then moves in proportion with the others.

    **Resume with a changed schedule.** ``state_dict()`` holds the progress (``last_epoch``), the base lrs
    and the schedule's identity (``repr`` of the resolved spec, ``total_steps``). If the spec or the total
    differs on :meth:`load_state_dict`, the new schedule is applied from the saved progress (e.g. a run
    resumed with a larger ``max_steps`` continues its decay over the longer run) and a warning names both; the
    lrs are recomputed from the schedule, never taken from the old run.

    Attributes whose names start with ``lit_optim_`` (counts that ``SchedulerStepper`` keeps on the scheduler so
    that it can be attached late and still resume exactly) travel in the ``state_dict`` too.

    If the spec cycles momentum (``OneCycle``/``Cyclic`` with ``cycle_momentum=True``), each step also sets
    ``momentum`` (SGD, RMSprop) or ``betas[0]`` (Adam family).

    **Other hyper-parameters** (``params={"weight_decay": ParamSchedule(start=0.04, end=0.4)}``) are set at
    every step next to the lr, from the same step count: see :class:`~lit_optim.schedules.ParamSchedule`. The
    groups' own values they start from are saved in :meth:`state_dict`, so resume is exact; a ``params`` schedule
    changed, added or dropped since the checkpoint warns as a changed lr schedule does. A group added later
    takes its own values for the step it was added with and follows the curves from the next step on.

    Args:
        optimizer: the optimizer whose groups to drive.
        schedule: a :class:`~lit_optim.schedules.Schedule`, a catalogue name (``"cosine"``), or a config mapping
            ``{"name": "cosine", **params}`` (as a YAML file or saved hparams hold it; see ``build_schedule``).
        total_steps: optimizer steps in the run (per rank).
        steps_per_epoch: optimizer steps per epoch, needed only when a duration is given in epochs.
        last_epoch: optimizer steps already done; ``-1`` starts fresh (torch's convention).
        params: ``{field: ParamSchedule}`` for other param-group hyper-parameters (``"weight_decay"``,
            ``"momentum"``, ``"betas[0]"``, ``"betas[1]"``, ``"eps"`` or a custom key).

    Raises:
        TypeError: ``schedule`` is not a schedule, a name or a mapping.
        ValueError: a bad total, a duration that cannot be resolved or does not fit the run, or a momentum
            schedule on an optimizer without ``momentum``/``betas``.

    Examples:
        >>> import torch
        >>> from lit_optim.schedules import Cosine
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = ScheduleLR(opt, Cosine(warmup=2), total_steps=6)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.0, 0.05, 0.1, 0.0854, 0.05, 0.0146]
    """

    resolved_from_trainer: bool = False
    """Whether ``total_steps`` was resolved from the Trainer's run (``lightning_scheduler_config``), not given."""

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule | str | Mapping[str, Any],
        total_steps: int,
        steps_per_epoch: int | None = None,
        last_epoch: int = -1,
        params: Mapping[str, ParamSchedule | Mapping[str, Any]] | None = None,
    ) -> None:
        schedule = as_schedule(schedule)
        length = TrainingLength(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        self.schedule = schedule.resolve(length)
        self.total_steps = length.total_steps
        self.steps_per_epoch = length.steps_per_epoch
        self._cycles_momentum = self.schedule.momentum(0, self.total_steps) is not None
        if self._cycles_momentum:
            for i, group in enumerate(optimizer.param_groups):
                if "momentum" not in group and "betas" not in group:
                    raise ValueError(
                        f"{self.schedule!r} cycles momentum, but param group {i} of {type(optimizer).__name__} "
                        "has neither `momentum` nor `betas`. Use `cycle_momentum=False`."
                    )
        groups, name = optimizer.param_groups, type(optimizer).__name__
        self.params = ParamScheduler(groups, params, length, name) if params else None
        if self.params is not None and self._cycles_momentum:
            clash = sorted({"momentum", "betas[0]"} & set(self.params.fields))
            if clash:
                raise ValueError(
                    f"{self.schedule!r} cycles momentum and `params` also schedules {clash[0]!r}: two schedules on "
                    "one field. Use `cycle_momentum=False` or drop that entry of `params`."
                )
        _check_schedule_free_momentum(optimizer, self._cycles_momentum, self.params)
        super().__init__(optimizer, last_epoch)
        _warn_floor_above_lr(self.schedule, optimizer.param_groups)

    def get_lr(self) -> list[float | Tensor]:
        """The lr of every param group at step ``last_epoch``."""
        f, offset = self.schedule.lr_terms(self.last_epoch, self.total_steps)
        groups = self.optimizer.param_groups
        if len(groups) > len(self.base_lrs):
            self._adopt_new_groups(groups)
        # zip stops at the shorter: saved groups not yet re-added
        return [base * f + offset for base, _ in zip(self.base_lrs, groups, strict=False)]

    _get_closed_form_lr = get_lr

    def step(self, epoch: int | None = None) -> None:
        """Advance by one optimizer step (``epoch`` is torch's deprecated absolute form)."""
        super().step(epoch)
        if self._cycles_momentum:
            self._set_momentum()
        if self.params is not None:
            self.params.apply(self.optimizer.param_groups, self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Progress, base lrs and the schedule's identity, as plain values."""
        return {
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
            "schedule": repr(self.schedule),
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            **({"params": self.params.state_dict()} if self.params is not None else {}),
            **{key: value for key, value in self.__dict__.items() if key.startswith("lit_optim_")},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the progress; recompute the lrs from the (possibly changed) schedule; warn if it changed."""
        saved = (state_dict.get("schedule"), state_dict.get("total_steps"))
        if saved != (repr(self.schedule), self.total_steps):
            rank_zero_warn(
                f"Resuming ScheduleLR with a different schedule: saved {saved[0]} over {saved[1]} steps, now "
                f"{self.schedule!r} over {self.total_steps} steps. The new schedule continues from the saved "
                f"progress (step {state_dict['last_epoch']})."
            )
        params_state = state_dict.get("params", {})
        if self.params is not None:
            changes = self.params.changes(params_state, int(state_dict["last_epoch"]))
        else:
            saved_specs = dict(params_state.get("specs", {}))
            changes = changed_param_schedules(saved_specs, {}, int(state_dict["last_epoch"]))
        for message in changes:
            rank_zero_warn(message)
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.base_lrs = list(state_dict.get("base_lrs", self.base_lrs))
        self.__dict__.update({key: value for key, value in state_dict.items() if key.startswith("lit_optim_")})
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(float(lr))
            else:
                group["lr"] = lr
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._last_lr = [lr.clone() if isinstance(lr, Tensor) else lr for lr in lrs]
        if self._cycles_momentum:
            self._set_momentum()
        if self.params is not None:
            self.params.load_state_dict(params_state)
            self.params.apply(self.optimizer.param_groups, self.last_epoch)

    def _adopt_new_groups(self, groups: list[dict[str, Any]]) -> None:
        previous, offset = self.schedule.lr_terms(max(self.last_epoch - 1, 0), self.total_steps)
        for group in groups[len(self.base_lrs) :]:
            if "initial_lr" not in group:
                lr = group["lr"]
                group["initial_lr"] = (lr - offset) / previous if previous > 0 else lr
            self.base_lrs.append(group["initial_lr"])

    def _set_momentum(self) -> None:
        momentum = self.schedule.momentum(self.last_epoch, self.total_steps)
        if momentum is None:  # only called when the spec cycles momentum
            return
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (assigned(group["betas"][0], momentum), *group["betas"][1:])
            elif "momentum" in group:
                group["momentum"] = assigned(group["momentum"], momentum)


def _warn_floor_above_lr(schedule: Schedule, groups: list[dict[str, Any]]) -> None:
    """Warn when an absolute lr of the spec is above a group's initial lr: that group's lr moves up towards it."""
    warmup = getattr(schedule, "warmup", None)
    for option, value in (
        ("min_lr_abs", getattr(schedule, "min_lr_abs", None)),
        ("start_lr", getattr(warmup, "start_lr", None)),
    ):
        if value is None:
            continue
        below = {
            str(g.get("name", f"group{i}")): float(g["initial_lr"])
            for i, g in enumerate(groups)
            if g["initial_lr"] < value
        }
        for name, lr in below.items():
            rank_zero_warn(
                f"{option}={value!r} is above the initial lr of param group {name!r} ({lr!r}): that group's lr rises "
                f"towards {value!r} where the others fall. Use a ratio (`min_lr`, `Warmup(start_factor=)`) to keep "
                "every group below its own lr, or lower the absolute value."
            )


def as_schedule(schedule: Schedule | str | Mapping[str, Any]) -> Schedule:
    """A schedule spec from a spec, a catalogue name or a ``{"name": ..., **params}`` mapping."""
    if isinstance(schedule, str):
        return build_schedule(schedule)
    if isinstance(schedule, Mapping):
        if "name" not in schedule:
            raise ValueError(
                "A schedule given as a mapping needs its catalogue `name`, e.g. {'name': 'cosine', 'warmup': "
                f"'5%'}}; got {dict(schedule)!r}."
            )
        params = {str(k): v for k, v in schedule.items() if k != "name"}
        return build_schedule(schedule["name"], **params)
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"`schedule` must be a lit_optim schedule (e.g. `Cosine(warmup='5%')`), its name or a {{'name': ...}} "
            f"mapping, got {schedule!r}."
        )
    return schedule


def _check_schedule_free_momentum(optimizer: Optimizer, cycles: bool, params: ParamScheduler | None) -> None:
    """Refuse to move the momentum of an optimizer with ``train()``/``eval()`` modes (schedule-free).

    Its ``eval()`` and ``train()`` recover one point from the other and ``z`` with the current momentum
    (``betas[0]``, SGD's ``momentum``): change it between two switches and the evaluation weights are another point.
    """
    if not (callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))):
        return
    name = type(optimizer).__name__
    why = (
        f"{name} is schedule-free: its `eval()`/`train()` move the weights between the averaged point and the "
        "gradient point with the current momentum, so moving it during training makes the evaluation weights and "
        "checkpoints wrong"
    )
    moved = sorted({"betas[0]", "momentum"} & set(params.fields)) if params is not None else []
    if moved:
        raise ValueError(
            f"{why}; {moved[0]!r} cannot be scheduled. HINT: drop that entry of `param_schedules` (`weight_decay`, "
            "`betas[1]`, `eps` may be scheduled), or use an optimizer that is not schedule-free."
        )
    if cycles:
        raise ValueError(f"{why}, and the lr schedule cycles momentum. HINT: use `cycle_momentum=False`.")
