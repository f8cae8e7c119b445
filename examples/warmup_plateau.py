"""Linear warmup, then reduce-on-plateau, on a small regression task.

    python examples/warmup_plateau.py          # ~30 epochs, well under a minute on CPU
    python examples/warmup_plateau.py --fast   # (or LIT_OPTIM_EXAMPLE_FAST=1) a few seconds, for tests

``Plateau`` has ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s rule (``factor``, ``patience``,
``threshold``, ``cooldown``, ``min_lr``) plus a warmup (here linear over ``"3ep"``, three epochs resolved
from the Trainer, or 20 optimizer steps with ``--fast``). lit_optim's
``SchedulerStepper`` advances the warmup after every real optimizer step and calls ``step(metric)`` right
after each validation run with that run's ``val_loss`` (in plain Lightning you would set
``"monitor": "val_loss"``, ``"interval": "epoch"`` and get the metric of the last *epoch-end* evaluation,
and nothing would warm up). The lr, the reductions and the losses are printed once per epoch.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_optim import Plateau, configure_optimizers

FAST_ENV = "LIT_OPTIM_EXAMPLE_FAST"


def regression_data(n: int, seed: int) -> TensorDataset:
    """``y = sin(3 x0) + x1 * x2 + noise`` on 4 features (the noise sets the loss floor at 0.01)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.sin(3 * x[:, :1]) + x[:, 1:2] * x[:, 2:3] + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05, warmup: int | str = "3ep", patience: int = 2) -> None:
        super().__init__()
        self.lr, self.warmup, self.patience = lr, warmup, patience
        self.net = nn.Sequential(nn.Linear(4, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                                 nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        # Adds a SchedulerStepper to the Trainer (it has none): it owns the stepping of this scheduler.
        plateau = Plateau("val_loss", factor=0.5, patience=self.patience, warmup=self.warmup)
        return configure_optimizers(self, "sgd", lr=self.lr, weight_decay=1e-4, momentum=0.9, scheduler=plateau)


class EpochPrinter(Callback):
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before SchedulerStepper's reduction for this validation (callbacks run in list order).
        metrics = trainer.callback_metrics
        train = metrics.get("train_loss")
        print(f"epoch {trainer.current_epoch:>3}  step {trainer.global_step:>4}  "
              f"train_loss {'-' if train is None else f'{float(train):.4f}'}  "
              f"val_loss {float(metrics['val_loss']):.4f}  lr {trainer.optimizers[0].param_groups[0]['lr']:.4g}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help=f"a few seconds (or set {FAST_ENV}=1)")
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")

    L.seed_everything(0, verbose=False)
    train = DataLoader(regression_data(512, seed=0), batch_size=32, shuffle=True)  # 16 steps per epoch
    val = DataLoader(regression_data(256, seed=1), batch_size=256)
    model = Regressor(warmup=20 if fast else "3ep", patience=0 if fast else 2)  # 20 steps / 3 epochs of 16
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=8 if fast else 30, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[EpochPrinter()],
    )
    trainer.fit(model, train, val)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    reductions = scheduler.state_dict()["reductions"]
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    print(f"\nfinal lr {lr:.4g} = {model.lr} * 0.5 ** {reductions} (reductions)")
    return {"trainer": trainer, "model": model, "scheduler": scheduler, "lr": lr, "reductions": reductions}


if __name__ == "__main__":
    main()
