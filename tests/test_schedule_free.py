"""Schedule-free optimizers in a Lightning run, against the `schedulefree` package's own loop (modes set by hand)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from lit_optim import ScheduleFreeMode, configure_optimizers
from lit_optim.optim.schedule_free import train_mode
from tests.models import TinyModule, random_regression_data

schedulefree = pytest.importorskip("schedulefree")

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


def _reference(
    initial: dict[str, torch.Tensor],
    epochs: int,
    accumulate: int = 1,
    cls: Any = None,
    clip: float | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, Any, list[torch.Tensor], list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The schedulefree README's loop in plain torch: ``optimizer.train()`` before training, ``optimizer.eval()``
    before evaluating and saving. Returns the model, optimizer, validation losses at x, the same batches' losses at
    y (what a run without mode switching would report) and the weights saved after each epoch's validation."""
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
            loss = nn.functional.mse_loss(model(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            train_point_losses += [nn.functional.mse_loss(model(x), y) for x, y in val]
            optimizer.eval()
            val_losses += [nn.functional.mse_loss(model(x), y) for x, y in val]
        saved.append({k: v.clone() for k, v in model.state_dict().items()})
    return model, optimizer, val_losses, train_point_losses, saved


def _initial(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_weights(a: nn.Module | dict[str, torch.Tensor], b: nn.Module | dict[str, torch.Tensor]) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _fit(
    make_trainer: Callable[..., L.Trainer], module: SFModule, **overrides: Any
) -> tuple[L.Trainer, SFModule]:
    trainer = make_trainer(**{"max_epochs": 2, **overrides})
    trainer.fit(module)
    return trainer, module


# ------------------------------------------------------------------ against the reference loop
@pytest.mark.parametrize(
    ("name", "cls", "kwargs"),
    [
        ("adamw_schedulefree", "AdamWScheduleFree", {"warmup_steps": 5}),
        ("sgd_schedulefree", "SGDScheduleFree", {"momentum": 0.9}),
        ("radam_schedulefree", "RAdamScheduleFree", {}),
    ],
)
def test_matches_the_reference_loop_weights_validation_losses_and_checkpoints(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path, name: str, cls: str, kwargs: dict[str, Any]
) -> None:
    module = SFModule(name, **kwargs)
    initial = _initial(module)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer, module = _fit(make_trainer, module, callbacks=[checkpoint])
    ref, ref_opt, ref_val, ref_train_point, ref_saved = _reference(initial, 2, cls=getattr(schedulefree, cls), **kwargs)

    assert any(isinstance(c, ScheduleFreeMode) for c in trainer.callbacks)  # attached by configure_optimizers
    assert trainer.global_step == 32
    _assert_same_weights(module, ref)  # left in eval mode: both hold x
    optimizer = trainer.optimizers[0]
    assert train_mode(optimizer) is False
    for p, q in zip(module.parameters(), ref.parameters(), strict=True):
        assert torch.equal(optimizer.state[p]["z"], ref_opt.state[q]["z"])
    assert len(module.val_losses) == len(ref_val) == 8
    for got, want in zip(module.val_losses, ref_val, strict=True):
        assert torch.equal(got, want)
    # without the switch the run would report the train-mode point's losses, which differ
    assert all(not torch.equal(a, b) for a, b in zip(ref_val, ref_train_point, strict=True))
    for epoch, want in enumerate(ref_saved):
        saved = torch.load(tmp_path / "ckpt" / f"epoch={epoch}.ckpt", weights_only=True)["state_dict"]
        _assert_same_weights(saved, want)
        loaded = SFModule.load_from_checkpoint(tmp_path / "ckpt" / f"epoch={epoch}.ckpt", map_location="cpu")
        _assert_same_weights(loaded, want)


def test_gradient_accumulation_matches_the_reference(make_trainer: Callable[..., L.Trainer]) -> None:
    module = SFModule(warmup_steps=3)
    initial = _initial(module)
    trainer, module = _fit(make_trainer, module, accumulate_grad_batches=2)
    ref, _, ref_val, _, _ = _reference(initial, 2, accumulate=2, warmup_steps=3)
    assert trainer.global_step == 16
    _assert_same_weights(module, ref)
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, ref_val, strict=True))


def test_gradient_clipping_callback_clips_the_train_mode_gradients(make_trainer: Callable[..., L.Trainer]) -> None:
    from lit_optim import GradientClipping

    module = SFModule()
    initial = _initial(module)
    _, module = _fit(make_trainer, module, callbacks=[GradientClipping(max_norm=0.05)])
    ref, _, ref_val, _, _ = _reference(initial, 2, clip=0.05)
    unclipped, *_ = _reference(initial, 2)
    for p, q in zip(module.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # the two clip-coefficient formulas round differently
    torch.testing.assert_close(torch.stack(module.val_losses), torch.stack(ref_val), rtol=1e-5, atol=1e-6)
    assert (ref.net[0].weight - unclipped.net[0].weight).abs().max() > 1e-3  # the clipping mattered
