"""Writing a callback's metrics to the Trainer's loggers, the one way every lit_optim callback does it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, count
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["group_names", "is_logging_step", "log_metrics", "optimizer_step"]


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


def optimizer_step(trainer: Trainer, idx: int, counts: dict[int, int]) -> int:
    """The index of optimizer ``idx``'s step about to be taken (the logging cadence of per-optimizer callbacks).

    With one optimizer it is ``global_step``; with several, ``global_step`` advances once per step of any of
    them, so each optimizer's steps are counted in ``counts`` (checkpointed by the callback).
    """
    if len(trainer.optimizers) <= 1:
        return trainer.global_step
    step = counts.get(idx, trainer.global_step // len(trainer.optimizers))
    counts[idx] = step + 1
    return step


def is_logging_step(trainer: Trainer, every: int | None, step: int) -> bool:
    """Whether ``step`` logs: every ``every``-th (``None``: the Trainer's ``log_every_n_steps``), with a logger."""
    every = int(every or getattr(trainer, "log_every_n_steps", 50) or 0)
    return bool(trainer.loggers) and every > 0 and (step + 1) % every == 0


def group_names(
    groups: Sequence[Mapping[str, Any]], known: Sequence[str] = (), reserved: Sequence[str] = ()
) -> list[str]:
    """A stable, unique name per param group, for logged keys: no name equal to or a path prefix of another.

    ``name`` when set and free, else ``group{i}``; ``{name}-{i}`` for a repeated name, and ``{head}-{i}/{rest}``
    for a name that is a path prefix of another or has one as its prefix (``a`` next to ``a/b``: ``lr/a`` and
    ``lr/a/b`` cannot both be files of MLflow's store). Every callback names groups this way, so ``lr/<group>``
    and ``grad_clip/group_norm/<group>`` agree.

    ``known`` are the names already given to the first groups (groups added later keep the earlier names);
    ``reserved`` are names a caller uses itself next to the groups' (``global``).

    Example:
        >>> group_names([{"name": "decay"}, {}, {"name": "decay"}, {"name": "decay/head"}])
        ['decay', 'group1', 'decay-2', 'decay-3/head']
    """
    names = list(known[: len(groups)])
    for i in range(len(names), len(groups)):
        raw = groups[i].get("name")
        base = str(raw) if raw is not None and str(raw) != "" else f"group{i}"
        head, sep, tail = base.partition("/")
        taken = [*reserved, *names]
        suffixed = (f"{head}-{i}{'' if k < 2 else f'-{k}'}{sep}{tail}" for k in count(1))
        candidates = chain((base, f"{base}-{i}"), suffixed)
        names.append(next(c for c in candidates if not any(_clash(c, t) for t in taken)))
    return names


def _clash(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same key path or one is a path prefix of the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
