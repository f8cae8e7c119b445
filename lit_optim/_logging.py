"""Writing a callback's metrics to the Trainer's loggers, the one way every lit_optim callback does it."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch import Trainer

__all__ = ["log_metrics"]


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
