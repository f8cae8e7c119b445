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


def manual_sgd_step(module: L.LightningModule, batch: Any) -> torch.Tensor:
    """One manual-optimization step of ``module``'s single optimizer on ``batch`` (MSE loss); returns the loss."""
    opt: Any = module.optimizers()
    loss = nn.functional.mse_loss(module(batch[0]), batch[1])
    module.manual_backward(loss)
    opt.step()
    opt.zero_grad()
    return loss


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


# --- fixture models for layer ids (lit_optim.layer_ids), shaped like timm / Hugging Face models, in pure torch ---


class MLPBlock(nn.Module):
    """A residual block: norm + linear (stands in for a transformer or conv block)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


class ViTLike(nn.Module):
    """timm's VisionTransformer layout: patch embed, tokens, ``blocks`` in an nn.Sequential, final norm, head."""

    def __init__(self, depth: int = 3, dim: int = 4, matcher: bool = True) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.blocks = nn.Sequential(*[MLPBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)
        self._matcher = matcher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], 1, -1), self.patch_embed(x)], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class TimmViT(ViTLike):
    """:class:`ViTLike` with timm's ``group_matcher`` (copied rule by rule from timm's ViT, which is data)."""

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^cls_token|pos_embed|patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }


class Stage(nn.Module):
    """A ConvNeXt/Swin-style stage: an optional downsampling layer, then its blocks in an nn.Sequential."""

    def __init__(self, depth: int, downsample: bool, dim: int = 4) -> None:
        super().__init__()
        self.downsample = nn.Linear(dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[MLPBlock(dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtLike(nn.Module):
    """timm's ConvNeXt layout: stem, ``stages`` (each downsample + blocks), ``norm_pre``, head."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.stages = nn.Sequential(Stage(2, False, dim), Stage(2, True, dim))
        self.norm_pre = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm_pre(self.stages(self.stem(x))))


class TimmConvNeXt(ConvNeXtLike):
    """:class:`ConvNeXtLike` with timm's fine ``group_matcher`` (a stage's downsample joins its first block)."""

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^stem",
            "blocks": [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm_pre", (99999,)),
            ],
        }


class BasicBlock(nn.Module):
    """A ResNet block; the first block of a stage may carry a downsample."""

    def __init__(self, dim: int = 4, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Linear(dim, dim, bias=False)
        self.bn1 = nn.BatchNorm1d(dim)
        self.downsample = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim)) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x)) + (x if self.downsample is None else self.downsample(x))


class ResNetLike(nn.Module):
    """torchvision/timm ResNet layout: stem ``conv1``/``bn1``, stages ``layer1``..``layer3`` as attributes, ``fc``."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Linear(dim, dim, bias=False)
        self.bn1 = nn.BatchNorm1d(dim)
        self.layer1 = nn.Sequential(BasicBlock(dim), BasicBlock(dim))
        self.layer2 = nn.Sequential(BasicBlock(dim, downsample=True), BasicBlock(dim))
        self.layer3 = nn.Sequential(BasicBlock(dim, downsample=True), BasicBlock(dim))
        self.fc = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer3(self.layer2(self.layer1(self.bn1(self.conv1(x))))))


class EfficientNetLike(nn.Module):
    """timm's EfficientNet layout: ``blocks`` is an nn.Sequential of stages, each an nn.Sequential of blocks."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.conv_stem = nn.Linear(dim, dim, bias=False)
        self.bn1 = nn.BatchNorm1d(dim)
        self.blocks = nn.Sequential(nn.Sequential(MLPBlock(dim)), nn.Sequential(MLPBlock(dim), MLPBlock(dim)))
        self.conv_head = nn.Linear(dim, dim, bias=False)
        self.bn2 = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, 2)


class Stack(nn.Module):
    """A T5 stack: ``block`` (nn.ModuleList) and ``final_layer_norm``; the token embedding is tied to ``shared``."""

    def __init__(self, shared: nn.Embedding, depth: int, dim: int = 4) -> None:
        super().__init__()
        self.embed_tokens = shared
        self.block = nn.ModuleList(MLPBlock(dim) for _ in range(depth))
        self.final_layer_norm = nn.LayerNorm(dim)


class T5Like(nn.Module):
    """Hugging Face T5 layout: ``shared`` embedding, ``encoder`` (2 blocks), ``decoder`` (3 blocks), ``lm_head``."""

    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.shared = nn.Embedding(vocab, dim)
        self.encoder = Stack(self.shared, 2, dim)
        self.decoder = Stack(self.shared, 3, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)


class Tower(nn.Module):
    """One CLIP tower: embeddings, ``encoder.layers`` (nn.ModuleList), a final norm."""

    def __init__(self, depth: int, dim: int = 4) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(5, dim)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(MLPBlock(dim) for _ in range(depth))
        self.final_layer_norm = nn.LayerNorm(dim)


class CLIPLike(nn.Module):
    """Hugging Face CLIP layout: a 2-block ``text_model``, a 3-block ``vision_model``, projections, logit scale."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.text_model = Tower(2, dim)
        self.vision_model = Tower(3, dim)
        self.visual_projection = nn.Linear(dim, dim, bias=False)
        self.text_projection = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))


class CaiTLike(nn.Module):
    """timm's CaiT without its ``group_matcher``: two sibling block lists, ``blocks`` and ``blocks_token_only``."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(dim, dim)
        self.blocks = nn.Sequential(*[MLPBlock(dim) for _ in range(3)])
        self.blocks_token_only = nn.ModuleList(MLPBlock(dim) for _ in range(2))
        self.head = nn.Linear(dim, 2)


class MoEBlock(nn.Module):
    """A block holding an nn.ModuleList of experts (a list inside a block is not a list of blocks)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))


class MoELike(nn.Module):
    """Embedding, two MoE blocks in an nn.ModuleList, head."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, dim)
        self.layers = nn.ModuleList(MoEBlock(dim) for _ in range(2))
        self.head = nn.Linear(dim, 2)
