"""Fine-tune a pretrained backbone with a new head: frozen first, then unfrozen with layer-wise lr decay.

    python examples/finetune.py          # ~20 seconds on CPU
    python examples/finetune.py --fast   # (or LIT_OPTIM_EXAMPLE_FAST=1) a few seconds, for tests

1. "Pretrain" a small residual MLP backbone on a regression task (plain AdamW, plain Lightning).
2. Fine-tune it on a classification task with a new ``head``:

   - ``configure_optimizers`` groups only the trainable parameters. The backbone is frozen by Lightning's
     ``BaseFinetuning`` (in ``setup``, before ``configure_optimizers``), so the optimizer starts with the head's
     groups only, named ``head/decay`` and ``head/no_decay`` by an override, at the head's lr.
   - At ``unfreeze_at_epoch`` the ``UnfreezeBackbone`` callback makes the backbone trainable and adds its
     parameters as new groups built by ``lit_optim.param_groups`` with layer-wise lr decay
     (``lr_scale = layer_decay ** (num_layers - layer_id)``: the input embedding gets the smallest lr, the top block the
     largest), each named ``backbone/layer_<i>/(no_)decay``.
   - The warmup + cosine ``ScheduleLR`` adopts the new groups at its current point (their lr is what they were
     given, then it decays in proportion with the others), and ``LearningRateLogger`` logs them under their
     names from then on.
   - Resuming from a checkpoint taken after the unfreeze continues exactly: Lightning restores the named
     groups, lit_optim the schedule, and ``UnfreezeBackbone`` makes the backbone trainable again (Lightning's
     ``BaseFinetuning`` freezes it again in ``setup``; Lightning issue #21901).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset

from lit_optim import Cosine, LearningRateLogger, configure_optimizers, format_groups, param_groups

FAST_ENV = "LIT_OPTIM_EXAMPLE_FAST"


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.fc(self.norm(x)))


class Backbone(nn.Module):
    """``embed`` (layer 0), ``blocks`` (layers 1..depth, an ``nn.ModuleList``), final ``norm`` (layer depth + 1).

    These are the layer ids ``param_groups(..., layer_decay=...)`` assigns on its own: blocks of the largest
    ``ModuleList`` are 1..N, a name containing ``embed`` is 0, the rest N + 1 (pass ``layer_id_fn`` otherwise).
    """

    def __init__(self, in_features: int = 16, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def make_tasks(n: int = 2048, in_features: int = 16, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """A regression task (pretraining) and a classification task (fine-tuning) on the same hidden features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g)
    teacher = torch.tanh(x @ torch.randn(in_features, 32, generator=g) / in_features**0.5)
    regression = teacher @ torch.randn(32, 8, generator=g)
    classes = (teacher @ torch.randn(32, 4, generator=g)).argmax(dim=1)
    return TensorDataset(x, regression), TensorDataset(x, classes)


class Pretrain(L.LightningModule):
    def __init__(self, backbone: Backbone, outputs: int = 8) -> None:
        super().__init__()
        self.backbone, self.out = backbone, nn.Linear(backbone.width, outputs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.out(self.backbone(x)), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class FineTune(L.LightningModule):
    """A pretrained ``backbone`` and a new ``head``; the optimizer comes from lit_optim."""

    def __init__(self, backbone: Backbone, num_classes: int = 4, lr: float = 3e-3) -> None:
        super().__init__()
        self.backbone, self.head, self.lr = backbone, nn.Linear(backbone.width, num_classes), lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        # Only trainable parameters are grouped: the frozen backbone is added later by UnfreezeBackbone.
        return configure_optimizers(
            self, "adamw", lr=self.lr, weight_decay=0.01, overrides={"head.*": {"name": "head"}},
            scheduler=Cosine(warmup="10%", min_lr=0.05),
        )


class UnfreezeBackbone(BaseFinetuning):
    """Freeze ``pl_module.backbone`` before training; at ``unfreeze_at_epoch`` add it with layer-wise lr decay.

    Args:
        unfreeze_at_epoch: the epoch at whose start the backbone joins the optimizer.
        lr: lr of the backbone's top layer (its final norm); layer ``i`` gets ``lr * layer_decay ** (L - i)``.
        layer_decay: the per-layer factor.
        weight_decay: weight decay of the backbone's matrices.
    """

    def __init__(self, unfreeze_at_epoch: int = 2, lr: float = 1e-3, layer_decay: float = 0.7,
                 weight_decay: float = 0.01) -> None:
        super().__init__()
        self.unfreeze_at_epoch, self.lr, self.layer_decay, self.weight_decay = (
            unfreeze_at_epoch, lr, layer_decay, weight_decay,
        )

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch:
            return
        backbone = pl_module.backbone
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"UnfreezeBackbone needs a `backbone` submodule, got {type(backbone).__name__}.")
        # Every epoch from the unfreeze on, not only at it: on resume, BaseFinetuning.setup() freezes the backbone
        # again and restores its param groups without `requires_grad` (Lightning issue #21901).
        self.make_trainable(backbone)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) in owned for p in backbone.parameters()):
            return  # its groups are in the optimizer already (added earlier, or restored from a checkpoint)
        groups = param_groups(backbone, lr=self.lr, weight_decay=self.weight_decay, layer_decay=self.layer_decay)
        for group in groups:
            group["name"] = f"backbone/{group['name']}"
            optimizer.add_param_group(group)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help=f"a few seconds (or set {FAST_ENV}=1)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="logger root folder (default ./runs)")
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")

    L.seed_everything(0, verbose=False)
    pretrain_set, task_set = make_tasks(n=512 if fast else 2048)
    quiet: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                             "enable_model_summary": False, "enable_checkpointing": False}
    backbone = Backbone()
    L.Trainer(max_epochs=2 if fast else 5, logger=False, **quiet).fit(
        Pretrain(backbone), DataLoader(pretrain_set, batch_size=64, shuffle=True)
    )

    pretrained = {k: v.clone() for k, v in backbone.state_dict().items()}

    train_set, val_set = torch.utils.data.random_split(task_set, [0.8, 0.2], torch.Generator().manual_seed(0))
    model = FineTune(backbone)
    unfreeze = UnfreezeBackbone(unfreeze_at_epoch=1 if fast else 2)
    logger = CSVLogger(save_dir=args.out, name="finetune")
    trainer = L.Trainer(
        max_epochs=2 if fast else 6, logger=logger, log_every_n_steps=1 if fast else 5, num_sanity_val_steps=0,
        callbacks=[unfreeze, LearningRateLogger()], **quiet,
    )
    trainer.fit(model, DataLoader(train_set, batch_size=64, shuffle=True), DataLoader(val_set, batch_size=256))

    optimizer = trainer.optimizers[0]
    print("\nParameter groups at the end (head from the start, backbone added at epoch "
          f"{unfreeze.unfreeze_at_epoch}; lr = current lr):")
    columns = ("params", "name", "lr", "applied_lr_scale", "weight_decay")
    print(format_groups([{k: g[k] for k in columns} for g in optimizer.param_groups]))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"\nval_loss {metrics['val_loss']:.3f}, val_acc {metrics['val_acc']:.3f}; metrics: {logger.log_dir}")
    return {"trainer": trainer, "model": model, "pretrained": pretrained, "unfreeze": unfreeze, "metrics": metrics,
            "log_dir": Path(logger.log_dir)}


if __name__ == "__main__":
    main()
