"""Everything a nested training run (the LR range test) changes, copied so it can be put back bit for bit."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers.logger import DummyLogger

__all__ = ["TrainingSnapshot", "swap_back", "swap_in"]


@dataclass
class TrainingSnapshot:
    """Weights, gradients, buffers, optimizer and scheduler state, AMP scaler, RNG and loop progress of a Trainer.

    :meth:`take` clones every tensor (parameters and all buffers, persistent or not, in place, so the optimizer
    keeps its parameters); :meth:`restore` copies them back into the same tensor objects and reloads optimizers
    and schedulers through their ``load_state_dict`` (what a checkpoint restore does).
    """

    tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    precision: dict[str, Any]
    loop: dict[str, Any]
    rng: dict[str, Any]
    loaders: tuple[Any, Any, Any]

    @classmethod
    def take(cls, trainer: Trainer) -> TrainingSnapshot:
        """Copy the state of ``trainer`` and its LightningModule."""
        module = trainer.lightning_module
        tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        with torch.no_grad():
            for p in module.parameters():
                tensors.append((p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone()))
            for b in module.buffers():
                tensors.append((b, b.detach().clone(), None))
        return cls(
            tensors=tensors,
            optimizers=[copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers],
            schedulers=[copy.deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs],
            precision=copy.deepcopy(trainer.precision_plugin.state_dict()),
            loop=copy.deepcopy(trainer.fit_loop.state_dict()),
            rng=_rng_states(),
            # the loaders and the fetcher as they were (often already set up, to count the run's steps, with an
            # iterator made): the nested run gets its own, so the real run starts from these untouched
            loaders=(
                trainer.fit_loop._combined_loader,
                trainer.fit_loop._data_fetcher,
                trainer.fit_loop.epoch_loop.val_loop._combined_loader,
            ),
        )

    def restore(self, trainer: Trainer) -> None:
        """Put everything back: the Trainer continues as if the nested run never happened."""
        loop = trainer.fit_loop
        loop.load_state_dict(copy.deepcopy(self.loop))
        loop.restarting = False
        loop.epoch_loop.restarting = False
        nested = loop._data_fetcher
        if nested is not None and nested is not self.loaders[1]:
            nested.teardown()  # the nested run's iterators and workers
        loop._combined_loader, loop._data_fetcher, loop.epoch_loop.val_loop._combined_loader = self.loaders
        trainer.should_stop = False
        with torch.no_grad():
            for tensor, value, grad in self.tensors:
                tensor.copy_(value)
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.grad = grad
        for config, state in zip(trainer.lr_scheduler_configs, self.schedulers, strict=True):
            config.scheduler.load_state_dict(copy.deepcopy(state))
        for opt, state in zip(trainer.optimizers, self.optimizers, strict=True):
            opt.load_state_dict(copy.deepcopy(state))  # after the schedulers: the groups' saved lrs win
        trainer.precision_plugin.load_state_dict(copy.deepcopy(self.precision))
        _set_rng_states(self.rng)


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        pass
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])


def swap_in(trainer: Trainer, callback: Callback) -> dict[str, Any]:
    """Make ``trainer`` run only ``callback``, log nothing, step no scheduler, skip validation, stop on request."""
    loop = trainer.fit_loop
    saved = {
        "callbacks": trainer.callbacks,  # type: ignore[attr-defined]
        "loggers": trainer.loggers,
        "configs": trainer.strategy.lr_scheduler_configs,
        "max_steps": loop.epoch_loop.max_steps,
        "min_steps": loop.epoch_loop.min_steps,
        "max_epochs": loop.max_epochs,
        "min_epochs": loop.min_epochs,
        "limit_val_batches": trainer.limit_val_batches,
    }
    trainer.callbacks = [callback]  # type: ignore[attr-defined]
    trainer.loggers = [DummyLogger()] if trainer.loggers else []
    trainer.strategy.lr_scheduler_configs = []  # nothing steps a scheduler during the sweep
    loop.epoch_loop.max_steps, loop.epoch_loop.min_steps = -1, None  # the callback stops the run
    loop.max_epochs, loop.min_epochs = -1, None
    trainer.limit_val_batches = 0
    loop.restarting = False
    # its own dataloader iterators (the snapshot keeps the run's, unconsumed)
    loop._combined_loader, loop._data_fetcher, loop.epoch_loop.val_loop._combined_loader = None, None, None
    return saved


def swap_back(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Undo :func:`swap_in`."""
    loop = trainer.fit_loop
    trainer.callbacks = saved["callbacks"]  # type: ignore[attr-defined]
    trainer.loggers = saved["loggers"]
    trainer.strategy.lr_scheduler_configs = saved["configs"]
    loop.epoch_loop.max_steps, loop.epoch_loop.min_steps = saved["max_steps"], saved["min_steps"]
    loop.max_epochs, loop.min_epochs = saved["max_epochs"], saved["min_epochs"]
    trainer.limit_val_batches = saved["limit_val_batches"]
