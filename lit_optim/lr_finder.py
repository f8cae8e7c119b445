"""``find_lr``: run an LR range test on its own, as ``Tuner.lr_find`` does, and return the curve."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lit_optim.callbacks.lr_range_test import LRRangeTest
from lit_optim.schedules.lr_range import LRRangeResult

__all__ = ["find_lr"]


def find_lr(
    trainer: Trainer,
    model: LightningModule,
    train_dataloaders: Any = None,
    datamodule: LightningDataModule | None = None,
    **settings: Any,
) -> LRRangeResult | None:
    """Run :class:`~lit_optim.callbacks.LRRangeTest` through ``trainer.fit`` and stop; return its result.

    The fit ends right after the test (weights and optimizer as before), so ``trainer.fit(model)`` can follow.
    The optimizer is rebuilt by that next fit, so nothing is applied: set the lr yourself, e.g.
    ``model.hparams.lr = result.suggestion`` on an :class:`~lit_optim.OptimizerMixin` module (the suggestion is
    the base lr, every group keeps its ratio to it). ``None`` when the test was skipped (``fast_dev_run``).

    Args:
        trainer: the Trainer to run the test with (its devices, precision and accumulation apply).
        model: the LightningModule.
        train_dataloaders: as ``trainer.fit``.
        datamodule: as ``trainer.fit``.
        **settings: the arguments of :class:`~lit_optim.callbacks.LRRangeTest` except ``apply``.

    Raises:
        ValueError: what :class:`~lit_optim.callbacks.LRRangeTest` raises, or ``apply`` among the settings.
    """
    if "apply" in settings:
        raise ValueError(
            "find_lr does not take `apply`: the next `trainer.fit` rebuilds the optimizer. HINT: set the lr from "
            "the result (`model.hparams.lr = result.suggestion`), or put `LRRangeTest(apply=True)` in the "
            "Trainer's callbacks."
        )
    test = LRRangeTest(apply=False, **settings)
    test._exit_after = True
    trainer.callbacks = [test, *trainer.callbacks]  # type: ignore[attr-defined]
    try:
        trainer.fit(model, train_dataloaders=train_dataloaders, datamodule=datamodule)
    finally:
        trainer.callbacks = [c for c in trainer.callbacks if c is not test]  # type: ignore[attr-defined]
    return test.result
