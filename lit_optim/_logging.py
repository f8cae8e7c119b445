"""Writing a callback's metrics to the Trainer's loggers, the one way every lit_optim callback does it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["group_names", "log_metrics"]


def log_metrics(trainer: Trainer, metrics: Mapping[str, float]) -> None:
    """Write ``metrics`` at ``trainer.global_step`` to every logger of ``trainer``.

    Callbacks log through the loggers directly rather than ``LightningModule.log``: the values belong to the
    optimizer step that produced them (``global_step``), not to Lightning's per-batch bookkeeping, and they never
    enter ``callback_metrics``. Like Lightning's own logging this is called on every rank; Lightning's loggers
    write from global rank 0 only. (``LearningRateLogger`` skips the call off rank 0 to save the work.)
    """
    if not metrics:
        return
    values = dict(metrics)
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)


def group_names(groups: Sequence[Mapping[str, Any]], known: Sequence[str] = ()) -> list[str]:
    """A stable, unique name per param group, for logged keys.

    ``name`` when set and unused, else ``group{i}``, and ``{name}-{i}`` for a repeated name. Every callback names
    groups this way, so ``lr/<group>`` and ``grad_clip/group_norm/<group>`` agree.

    ``known`` are the names already given to the first groups (groups added later keep the earlier names).

    Example:
        >>> group_names([{"name": "decay"}, {}, {"name": "decay"}])
        ['decay', 'group1', 'decay-2']
    """
    names = list(known[: len(groups)])
    used = set(names)
    for i in range(len(names), len(groups)):
        raw = groups[i].get("name")
        name = str(raw) if raw is not None and str(raw) != "" else f"group{i}"
        if name in used:
            name = f"{name}-{i}"
        used.add(name)
        names.append(name)
    return names
