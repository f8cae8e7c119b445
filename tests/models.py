"""Tiny models and data shared by the tests."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def random_regression_data(n: int = 64, features: int = 8, seed: int = 0) -> TensorDataset:
    """A fixed random linear-regression dataset."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))


class TinyModule(L.LightningModule):
    """Two linear layers on random regression data; loss is MSE.

    Subclass and override ``configure_optimizers`` to test a loop behaviour.
    """

    def __init__(self, features: int = 8, batch_size: int = 4, n: int = 64, val_n: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 1))
        self.features, self.batch_size, self.n, self.val_n = features, batch_size, n, val_n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(random_regression_data(self.n, self.features, seed=0), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(random_regression_data(self.val_n, self.features, seed=1), batch_size=self.batch_size)
