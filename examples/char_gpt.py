"""A small GPT-style character language model and its data, for the lit_optim examples.

Importable on its own: it does not depend on lit_optim. ``CharGPT.configure_optimizers`` is plain AdamW over
all parameters (the "plain Lightning" baseline); the examples replace it with lit_optim's parameter groups,
schedules and callbacks (see ``train_char_gpt.py`` and ``cli.py``).

Architecture (as in GPT-2 / nanoGPT, scaled down): token + position embeddings, pre-LayerNorm transformer
blocks (causal self-attention through ``F.scaled_dot_product_attention``, then a GELU MLP), a final
LayerNorm, and an ``lm_head`` whose weight is tied to the token embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["DATA_DIR", "CharDataModule", "CharGPT", "CharVocab", "RandomWindows", "load_corpus"]

DATA_DIR = Path(__file__).resolve().parent / "data"

# Reading order of the corpus files (see data/README.md).
CORPUS_FILES: tuple[str, ...] = (
    "declaration_of_independence.txt",
    "constitution.txt",
    "gettysburg_address.txt",
    "emancipation_proclamation.txt",
    "lincoln_second_inaugural.txt",
)


def load_corpus(data_dir: str | Path = DATA_DIR) -> str:
    """Return the concatenated example corpus (files separated by a blank line)."""
    data_dir = Path(data_dir)
    return "\n\n".join((data_dir / name).read_text(encoding="utf-8").strip() for name in CORPUS_FILES) + "\n"


class CharVocab:
    """A character vocabulary: sorted unique characters of a text, and encode/decode."""

    def __init__(self, text: str) -> None:
        self.chars: list[str] = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class RandomWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``num_windows`` fixed-length windows at random offsets of ``data`` (input, next-character target).

    The offsets are drawn once from ``seed``, so the dataset is the same in every process and every run.
    """

    def __init__(self, data: torch.Tensor, block_size: int, num_windows: int, seed: int) -> None:
        if data.numel() <= block_size + 1:
            raise ValueError(f"`data` has {data.numel()} tokens; it needs more than block_size + 1 = {block_size + 1}.")
        self.data, self.block_size = data, block_size
        generator = torch.Generator().manual_seed(seed)
        self.starts = torch.randint(0, data.numel() - block_size - 1, (num_windows,), generator=generator)

    def __len__(self) -> int:
        return self.starts.numel()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        chunk = self.data[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class CharDataModule(L.LightningDataModule):
    """The corpus split into train and validation text, interleaved so both read alike.

    The text is cut into ``chunk_chars``-character chunks; every ``round(1 / val_fraction)``-th chunk goes to
    validation, the rest (concatenated) to training.

    Each training epoch is ``train_batches`` batches of random windows; validation is ``val_batches`` batches of
    fixed windows. Offsets are drawn from ``seed`` (train) and ``seed + 1`` (validation).
    """

    def __init__(
        self,
        data_dir: str | Path = DATA_DIR,
        block_size: int = 64,
        batch_size: int = 32,
        train_batches: int = 100,
        val_batches: int = 8,
        val_fraction: float = 0.1,
        chunk_chars: int = 2000,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
        self.data_dir, self.block_size, self.batch_size = Path(data_dir), block_size, batch_size
        self.train_batches, self.val_batches, self.val_fraction, self.seed = (
            train_batches, val_batches, val_fraction, seed,
        )
        self.chunk_chars = chunk_chars
        self.text = load_corpus(self.data_dir)
        self.vocab = CharVocab(self.text)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def setup(self, stage: str) -> None:
        chunks = self.vocab.encode(self.text).split(self.chunk_chars)
        every = round(1.0 / self.val_fraction)
        train = torch.cat([c for i, c in enumerate(chunks) if i % every != every - 1])
        val = torch.cat([c for i, c in enumerate(chunks) if i % every == every - 1])
        self.train_set = RandomWindows(train, self.block_size, self.train_batches * self.batch_size, self.seed)
        self.val_set = RandomWindows(val, self.block_size, self.val_batches * self.batch_size, self.seed + 1)

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        # Windows are already at random offsets; shuffling the order too keeps epochs different.
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"`n_embd` ({n_embd!r}) must be divisible by `n_head` ({n_head!r}).")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, time, channels))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class CharGPT(L.LightningModule):
    """A GPT-style character LM: ``tok_emb``/``pos_emb``, ``blocks`` (a ``ModuleList``), ``ln_f``, ``lm_head``.

    Logs ``train_loss`` (every step, cross-entropy in nats per character) and ``val_loss`` (per validation run).
    """

    def __init__(
        self,
        vocab_size: int = 76,
        block_size: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        dropout: float = 0.0,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.block_size, self.lr = block_size, lr
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, temperature: float = 0.8, seed: int = 0) -> torch.Tensor:
        """Sample ``new_tokens`` characters after the prompt ``idx`` (shape ``(batch, time)``)."""
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=idx.device).manual_seed(seed)
        for _ in range(new_tokens):
            logits = self(idx[:, -self.block_size :])[:, -1, :] / temperature
            next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        self.train(was_training)
        return idx
