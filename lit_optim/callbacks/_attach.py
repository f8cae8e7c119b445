"""Adding a callback that ``configure_optimizers`` needs to the Trainer, once, before the checkpoint callbacks."""

from __future__ import annotations

from typing import TypeVar

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, Checkpoint

__all__ = ["ensure_callback"]

C = TypeVar("C", bound=Callback)


def ensure_callback(trainer: Trainer, cls: type[C]) -> C:
    """Return the Trainer's ``cls`` callback, adding ``cls()`` when it has none.

    A new one is inserted before the first checkpoint callback: Lightning runs checkpoint callbacks last anyway, and
    what the new callback does in a hook (a plateau step, a mode switch) must land in the checkpoint.

    Examples:
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import Timer
        >>> trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> ensure_callback(trainer, Timer) is ensure_callback(trainer, Timer)
        True
    """
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    for callback in callbacks:
        if isinstance(callback, cls):
            return callback
    new = cls()
    position = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
    callbacks.insert(position, new)
    return new
