"""A schedule-free LightningModule and the `schedulefree` README's own training loop, shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_optim import configure_optimizers
from tests.models import TinyModule, random_regression_data

LR, WD = 0.02, 0.01


class SFModule(TinyModule):
    """TinyModule trained by a schedule-free optimizer through ``lit_optim.configure_optimizers``; it records the
    loss of every validation batch, and the train-mode point's loss on the same batch."""

    def __init__(self, optimizer: str = "adamw_schedulefree", scheduler: Any = None, **kwargs: Any) -> None:
        super().__init__()
        self.optimizer_name, self.scheduler, self.kwargs = optimizer, scheduler, kwargs
        self.val_losses: list[torch.Tensor] = []
        self.test_losses: list[torch.Tensor] = []

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.val_losses.append(loss.detach().clone())
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.test_losses.append(loss.detach().clone())
        return loss

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self, self.optimizer_name, lr=LR, weight_decay=WD, scheduler=self.scheduler, **self.kwargs
        )


def reference_run(
    initial: dict[str, torch.Tensor],
    epochs: int,
    accumulate: int = 1,
    cls: Any = None,
    clip: float | None = None,
    save_every: int | None = None,
    validate_every: int = 16,
    **kwargs: Any,
) -> tuple[nn.Module, Any, list[torch.Tensor], list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The schedulefree README's loop in plain torch: ``optimizer.train()`` before training, ``optimizer.eval()``
    before evaluating and saving. Returns the model, optimizer, validation losses at x, the same batches' losses at
    y (what a run without mode switching would report) and the weights saved: after each epoch's validation, or
    every ``save_every`` optimizer steps. Validation runs every ``validate_every`` batches (16: once per epoch)."""
    import schedulefree

    model = TinyModule()
    model.load_state_dict(initial)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = (cls or schedulefree.AdamWScheduleFree)(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}], lr=LR, **kwargs
    )
    train = DataLoader(random_regression_data(64, 8, seed=0), batch_size=4)
    val = DataLoader(random_regression_data(16, 8, seed=1), batch_size=4)
    val_losses, train_point_losses, saved = [], [], []
    for _ in range(epochs):
        model.train()
        optimizer.train()
        for i, (x, y) in enumerate(train):
            optimizer.train()
            loss = nn.functional.mse_loss(model(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad()
                if save_every is not None and optimizer.param_groups[0]["k"] % save_every == 0:
                    optimizer.eval()
                    saved.append({k: v.clone() for k, v in model.state_dict().items()})
            if (i + 1) % validate_every == 0:
                model.eval()
                with torch.no_grad():
                    train_point_losses += [nn.functional.mse_loss(model(x), y) for x, y in val]
                    optimizer.eval()
                    val_losses += [nn.functional.mse_loss(model(x), y) for x, y in val]
                model.train()
        if save_every is None:
            saved.append({k: v.clone() for k, v in model.state_dict().items()})
    return model, optimizer, val_losses, train_point_losses, saved


def initial_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: nn.Module | dict[str, torch.Tensor], b: nn.Module | dict[str, torch.Tensor]) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def fit(
    make_trainer: Callable[..., L.Trainer], module: SFModule, **overrides: Any
) -> tuple[L.Trainer, SFModule]:
    trainer = make_trainer(**{"max_epochs": 2, **overrides})
    trainer.fit(module)
    return trainer, module


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

