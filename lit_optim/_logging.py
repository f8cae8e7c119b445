"""Writing a callback's metrics to the Trainer's loggers, the one way every lit_optim callback does it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

__all__ = ["group_names", "is_logging_step", "is_path_prefix", "log_metrics", "logging_step", "skip_unused_hooks"]

# hooks Lightning calls on every callback at every training step (or micro-batch)
_PER_STEP_HOOKS = (
    "on_after_backward",
    "on_before_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_train_batch_start",
)


def logging_step(trainer: Trainer) -> int:
    """The step Lightning itself logs at: ``self.log`` rows, ``LearningRateMonitor``, validation metrics.

    It counts the training batches that stepped the optimizer(s) (``fit_loop.epoch_loop._batches_that_stepped``):
    with one optimizer in automatic optimization it equals ``trainer.global_step``; under manual optimization
    with several optimizers it advances once per batch, while ``global_step`` advances once per optimizer step.
    Every lit_optim row is written at this step, so all rows of one batch line up.
    """
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def log_metrics(trainer: Trainer, metrics: Mapping[str, float]) -> None:
    """Write ``metrics`` at :func:`logging_step` to every logger of ``trainer``.

    Callbacks log through the loggers directly rather than ``LightningModule.log``: the values belong to the
    optimizer step that produced them, not to Lightning's per-batch bookkeeping, and they never enter
    ``callback_metrics``. Like Lightning's own logging this is called on every rank; Lightning's loggers write
    from global rank 0 only. (``LearningRateLogger`` skips the call off rank 0 to save the work.)
    """
    if not metrics:
        return
    values = dict(metrics)
    step = logging_step(trainer)
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)


def is_path_prefix(key: str, other: str) -> bool:
    """Whether ``key`` names a folder that ``other`` lives in (``a/b`` of ``a/b/c``), as file-backed loggers see it.

    MLflow's file store writes ``a/b`` as a file and ``a/b/c`` under a folder ``a/b``: both cannot exist, so no
    two keys a callback logs may be in this relation (nor may a key be repeated).

    Examples:
        >>> is_path_prefix("grad_clip/norm", "grad_clip/norm/decay"), is_path_prefix("lr/a", "lr/ab")
        (True, False)
    """
    return other.startswith(key.rstrip("/") + "/")


def _collides(name: str, used: Sequence[str]) -> bool:
    return any(name == u or is_path_prefix(name, u) or is_path_prefix(u, name) for u in used)


def group_names(
    groups: Sequence[Mapping[str, Any]], known: Sequence[str] = (), reserved: Sequence[str] = ()
) -> list[str]:
    """A stable, unique name per param group, for logged keys.

    ``name`` when set and free, else ``group{i}``. A name is free when it is not used by an earlier group and is
    neither a folder of an earlier group's name nor inside one (``head`` and ``head/decay`` would make
    ``lr/head`` a file and a folder at once, which MLflow's file store cannot hold). A name that is not free
    gets ``-{i}`` appended, with its ``/`` replaced by ``-`` if that is still not free: ``decay``, ``decay``
    give ``decay``, ``decay-1``; ``head/decay``, ``head`` give ``head/decay``, ``head-1``. Every callback names
    groups this way, so ``lr/<group>`` and ``grad_clip/group_norm/<group>`` agree.

    ``known`` are the names already given to the first groups (groups added later keep the earlier names);
    ``reserved`` are names a caller logs next to the groups' (``OptimizerMonitor``'s ``global``), which no group
    may take or sit under.

    Examples:
        >>> group_names([{"name": "decay"}, {}, {"name": "decay"}, {"name": "decay/bias"}])
        ['decay', 'group1', 'decay-2', 'decay-bias-3']
    """
    names = list(known[: len(groups)])
    for i in range(len(names), len(groups)):
        raw = groups[i].get("name")
        name = str(raw).strip("/") if raw is not None else ""
        name = name or f"group{i}"
        candidates = (name, f"{name}-{i}", f"{name.replace('/', '-')}-{i}")
        taken = [*reserved, *names]
        chosen = next((c for c in candidates if not _collides(c, taken)), None)
        while chosen is None or _collides(chosen, taken):
            chosen = f"{chosen or candidates[-1]}-{i}"
        names.append(chosen)
    return names


def is_logging_step(trainer: Trainer, every: int | None, step: int) -> bool:
    """Whether ``step`` logs: every ``every``-th (``None``: the Trainer's ``log_every_n_steps``), with a logger."""
    every = int(every or getattr(trainer, "log_every_n_steps", 50) or 0)
    return bool(trainer.loggers) and every > 0 and (step + 1) % every == 0


def skip_unused_hooks(callback: Callback) -> None:
    """Let Lightning skip the per-step hooks ``callback``'s class does not override.

    Lightning dispatches every hook to every callback on every step (a profiler context and a formatted
    action name each) and skips an attribute that is not callable. Setting the inherited no-op per-step hooks
    to ``None`` on the instance saves those calls; a subclass that overrides one keeps it.
    """
    for name in _PER_STEP_HOOKS:
        if getattr(type(callback), name) is getattr(Callback, name):
            callback.__dict__[name] = None
