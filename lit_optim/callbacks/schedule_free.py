"""Keep schedule-free optimizers in the right mode: train for training steps, eval for everything else."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from lit_optim.callbacks._attach import ensure_callback
from lit_optim.optim.schedule_free import has_train_eval_modes, set_mode, train_mode

__all__ = ["ScheduleFreeMode", "ensure_schedule_free_mode"]


def _schedule_free(trainer: Trainer) -> list[tuple[int, Optimizer]]:
    """The Trainer's optimizers with ``train()``/``eval()`` modes, with their index in ``trainer.optimizers``."""
    return [(i, opt) for i, opt in enumerate(trainer.optimizers) if has_train_eval_modes(opt)]


class ScheduleFreeMode(Callback):
    """Switch schedule-free optimizers (any optimizer with ``train()``/``eval()``) between their two modes.

    A schedule-free optimizer's parameters hold the point ``y`` where gradients are taken in train mode, and the
    averaged point ``x`` to evaluate and keep in eval mode. This callback, added by
    :func:`lit_optim.configure_optimizers` for such an optimizer (add it yourself when your own
    ``configure_optimizers`` returns one), calls:

    - ``optimizer.train()`` before every training batch (``on_train_batch_start``; a no-op when already in train
      mode, so every micro-batch of gradient accumulation and every step runs at ``y``);
    - ``optimizer.eval()`` when a validation, test or predict loop starts (within ``fit`` and in
      ``trainer.validate/test/predict`` on the same Trainer after a fit), when fitting ends, and before a checkpoint
      is written. The mode stays eval until the next training batch, so a checkpoint saved after validation
      needs no extra switch.

    **Checkpoints** hold the evaluation weights ``x`` (``load_from_checkpoint`` gives the model to use) and the
    optimizer state in eval mode (``train_mode=False``, with ``z``); resuming from one switches back to train mode
    at the first training batch, recomputing ``y`` from ``x`` and ``z`` exactly as the uninterrupted run does after
    the same save, so the resumed run is bit-identical to the uninterrupted one. A save from a training step
    switches to eval mode first (and the next batch back), as the ``schedulefree`` authors' loop does
    (``optimizer.eval()`` before saving), and dumps the weights and optimizer state again in that mode.
    Weights-only checkpoints (``ModelCheckpoint(save_weights_only=True)``) skip callback hooks: one written after
    validation holds ``x``, one written from a training step would hold ``y``; a warning says so when fitting
    starts.

    **At the end of fit** the optimizer is left in eval mode: the module holds ``x``, so inference right after
    ``trainer.fit`` uses the weights to deploy. Call ``optimizer.train()`` yourself to train further by hand.

    **Batch norm.** Running statistics gathered during training belong to ``y``. See
    :func:`lit_optim.optim.schedule_free.recompute_batchnorm` for the authors' recomputation at ``x``.

    The callback keeps no state: the mode lives in the optimizer (its ``state_dict``), so a callback attached
    during ``configure_optimizers`` (after Lightning restores callback state) resumes exactly. An optimizer's
    ``train()`` and ``eval()`` must be idempotent (calling one twice is a no-op), as the ``schedulefree``
    package's are.

    Examples:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> ensure_schedule_free_mode(trainer) is ensure_schedule_free_mode(trainer)
        True
    """

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _schedule_free(trainer):
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_weights_only:
                rank_zero_warn(
                    "ModelCheckpoint(save_weights_only=True) skips callback hooks, so ScheduleFreeMode cannot switch "
                    "a schedule-free optimizer to eval mode before it saves: a checkpoint written after validation "
                    "holds the evaluation weights, but one written from a training step (`every_n_train_steps`, "
                    "`train_time_interval`, or at the end of a training epoch without validation) holds the "
                    "train-mode point. Use `save_weights_only=False` (`load_from_checkpoint` loads it the same).",
                    category=RuntimeWarning,
                )
                break

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._set_mode(trainer, train=True)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_mode(trainer, train=False)

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_mode(trainer, train=False)

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_mode(trainer, train=False)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._set_mode(trainer, train=False)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._set_mode(trainer, train=False)  # an interrupted run leaves the weights to evaluate, as a finished one

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning dumped the weights and optimizer states before this hook. In eval mode (after validation, at
        # the end of fit) they already hold x; in train mode, switch and dump both again.
        switched = False
        states = checkpoint.get("optimizer_states")
        for index, optimizer in _schedule_free(trainer):
            if train_mode(optimizer) is not False:  # train mode, or a mode the optimizer does not report
                optimizer.eval()  # type: ignore[attr-defined]
                switched = True
                if isinstance(states, list) and index < len(states):
                    states[index] = trainer.strategy.optimizer_state(optimizer)
        weights = checkpoint.get("state_dict")
        if switched and isinstance(weights, dict):
            # the strategy's own dump (a gathered copy under FSDP), so every key holds x whatever the sharding
            for key, value in trainer.strategy.lightning_module_state_dict().items():
                if key in weights:
                    weights[key] = value

    # --------------------------------------------------------------- plumbing
    def _set_mode(self, trainer: Trainer, train: bool) -> None:
        set_mode(trainer.optimizers, train)


def ensure_schedule_free_mode(trainer: Trainer) -> ScheduleFreeMode:
    """Return the Trainer's :class:`ScheduleFreeMode`, adding one when it has none.

    A new one is inserted before the first checkpoint callback (as Lightning runs those last anyway).

    Examples:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> mode = ensure_schedule_free_mode(trainer)
        >>> [type(c).__name__ for c in trainer.callbacks][-2:]
        ['ScheduleFreeMode', 'ModelCheckpoint']
    """
    return ensure_callback(trainer, ScheduleFreeMode)
