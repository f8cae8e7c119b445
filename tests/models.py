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


# --- fixture models for parameter grouping (lit_optim.param_groups) ---


class RMSNorm(nn.Module):
    """A custom RMSNorm (not torch's), caught by the "class name ends in Norm" rule."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class Block(nn.Module):
    """A pre-norm transformer block: LayerNorm + attention, RMSNorm + MLP."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), diagonal=1)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A tiny GPT: token + position embeddings, blocks in an nn.ModuleList, final LayerNorm, tied lm_head."""

    def __init__(self, vocab: int = 11, dim: int = 8, n_layers: int = 2, block_size: int = 6) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(block_size, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt_block_names(i: int) -> dict[str, list[str]]:
    """The parameter names of block ``i`` of :class:`GPT`, split into decayed and not decayed."""
    p = f"blocks.{i}."
    return {
        "decay": [p + "attn.in_proj_weight", p + "attn.out_proj.weight", p + "mlp.0.weight", p + "mlp.2.weight"],
        "no_decay": [
            p + "ln1.weight",
            p + "ln1.bias",
            p + "attn.in_proj_bias",
            p + "attn.out_proj.bias",
            p + "ln2.scale",
            p + "mlp.0.bias",
            p + "mlp.2.bias",
        ],
    }


class CNN(nn.Module):
    """Conv + BatchNorm2d, conv + GroupNorm, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, bias=False)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


class FrozenBackbone(nn.Module):
    """A frozen backbone (two blocks in an nn.ModuleList, the first frozen) and a trainable head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 2)
        self.embed.requires_grad_(False)
        self.layers[0].requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class PatchEncoder(nn.Module):
    """Declares ``no_weight_decay()`` (timm convention) for its 2-D/3-D position embedding and class token."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, dim))
        self.proj = nn.Linear(dim, dim)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}  # like timm, names a token it may not have

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x + self.pos_embed[:, : x.shape[1]]) + self.cls_token


class WithEncoder(nn.Module):
    """Nests :class:`PatchEncoder` under ``encoder`` so its declared names need the prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = PatchEncoder()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class GPTModule(L.LightningModule):
    """A LightningModule that nests :class:`GPT` under ``model``; trains on random tokens."""

    def __init__(self, steps: int = 4) -> None:
        super().__init__()
        self.model = GPT()
        self.steps = steps

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        (idx,) = batch
        logits = self.model(idx[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randint(0, 11, (2 * self.steps, 7), generator=g)), batch_size=2)
