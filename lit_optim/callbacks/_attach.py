"""Adding a callback that ``configure_optimizers`` needs to the Trainer, once, before the checkpoint callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, Checkpoint

__all__ = ["after_module_hook", "ensure_callback"]

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


def after_module_hook(module: LightningModule, name: str, then: Callable[[], None]) -> Callable[[], None]:
    """Run ``then()`` right after ``module``'s hook ``name`` each time Lightning calls it; return the undo.

    For what must see what the module's own hook logged, before the monitoring callbacks (checkpoints) run: Lightning
    calls ``LightningModule.on_train_epoch_end`` after the other callbacks' and before the checkpoint callbacks'.

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> module, calls = LightningModule(), []
        >>> undo = after_module_hook(module, "on_train_epoch_end", lambda: calls.append("then"))
        >>> module.on_train_epoch_end(); undo(); module.on_train_epoch_end(); calls
        ['then']
    """
    had_own = name in module.__dict__
    hook = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = hook(*args, **kwargs)
        then()
        return result

    module.__dict__[name] = wrapped

    def undo() -> None:
        if had_own:
            module.__dict__[name] = hook
        else:
            module.__dict__.pop(name, None)

    return undo
