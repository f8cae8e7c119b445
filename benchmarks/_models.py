"""A small transformer LM on synthetic tokens: the training run the stack benchmarks time."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyTransformer(L.LightningModule):
    """Token + position embeddings, ``depth`` pre-LN blocks, a tied LM head. ``configure`` picks the optimizer."""

    def __init__(self, vocab: int = 64, dim: int = 64, depth: int = 2, heads: int = 4, seq: int = 32,
                 steps: int = 200, batch_size: int = 16, configure: Any = None) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        self.seq, self.vocab, self.steps, self.batch_size = seq, vocab, steps, batch_size
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1), persistent=False)
        self._configure = configure

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln_f(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (idx,) = batch
        logits = self(idx[:, :-1])
        return F.cross_entropy(logits.reshape(-1, self.vocab), idx[:, 1:].reshape(-1))

    def configure_optimizers(self) -> Any:
        return self._configure(self)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, self.vocab, (self.steps * self.batch_size, self.seq + 1), generator=g)
        return DataLoader(TensorDataset(data), batch_size=self.batch_size)
