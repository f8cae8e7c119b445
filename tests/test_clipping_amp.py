"""GradientClipping under fp16 AMP on CPU: Lightning refuses ``precision="16-mixed"`` there, its plugin runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_optim import GradientClipping, clip_gradients
from lit_optim.clipping.thresholds import PercentileThreshold
from tests.loggers import MemoryLogger
from tests.models import TinyModule
from tests.test_clipping import GradRecorder, InfGradModule, OptimizerGradRecorder, Snapshot


def _fp16_cpu() -> Any:
    from lightning.pytorch.plugins import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))


class ScaledGradNorms(Callback):
    """The true norm right after backward: the scaled gradients' norm divided by the scale."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scale = trainer.precision_plugin.scaler.get_scale()  # type: ignore[attr-defined]
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item() / scale)


def test_fp16_callback_clips_the_unscaled_gradients(make_trainer: Callable[..., Trainer]) -> None:
    logger, scaled, after = MemoryLogger(), ScaledGradNorms(), OptimizerGradRecorder()
    clip = GradientClipping(max_norm=0.05, log_every_n_steps=1)
    trainer = make_trainer(max_steps=3, plugins=[_fp16_cpu()], logger=logger, callbacks=[scaled, clip, after])
    trainer.fit(TinyModule())
    assert trainer.precision_plugin.scaler.get_scale() == 1024.0  # type: ignore[attr-defined]
    assert logger.series("grad_clip/norm") == pytest.approx(scaled.norms, rel=1e-5)
    assert after.norms == pytest.approx([0.05] * 3, rel=1e-4)


def test_fp16_manual_clip_gradients_with_the_scaler_unscales_once(make_trainer: Callable[..., Trainer]) -> None:
    class Manual(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.norms: list[tuple[float, float]] = []

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt = self.optimizers()
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            scaler = self.trainer.precision_plugin.scaler  # type: ignore[attr-defined]
            true_norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters()]).item() / scaler.get_scale()
            result = clip_gradients(opt, max_norm=0.01, scaler=scaler)
            self.norms.append((result.total_norm.item(), true_norm))
            opt.step()  # Lightning unscales here, once
            return loss

    model, after = Manual(), OptimizerGradRecorder()
    trainer = make_trainer(max_steps=3, plugins=[_fp16_cpu()], callbacks=[after])
    trainer.fit(model)
    assert trainer.precision_plugin.scaler.get_scale() == 1024.0  # type: ignore[attr-defined]
    assert len(model.norms) == 3
    for measured, true_norm in model.norms:
        assert measured == pytest.approx(true_norm, rel=1e-6)
    assert after.norms == pytest.approx([0.01] * 3, rel=1e-4)  # clipped and unscaled exactly once


def test_fp16_overflow_is_left_to_the_grad_scaler(make_trainer: Callable[..., Trainer]) -> None:
    logger, snap = MemoryLogger(), Snapshot(step=1)
    clip = GradientClipping(skip_nonfinite=True, max_consecutive_skips=1, log_every_n_steps=1)
    trainer = make_trainer(max_steps=3, plugins=[_fp16_cpu()], logger=logger, callbacks=[clip, snap])
    trainer.fit(InfGradModule(bad_steps={1}))
    assert clip.skipped_steps == 0  # not counted (max_consecutive_skips=1 would have raised)
    assert trainer.precision_plugin.scaler.get_scale() == 512.0  # type: ignore[attr-defined]
    assert snap.before is not None
    assert snap.after is not None
    for p0, p1 in zip(snap.before[0], snap.after[0], strict=True):
        assert torch.equal(p0, p1)  # the GradScaler skipped the step
    norms = logger.series("grad_clip/norm")
    assert [math.isfinite(n) for n in norms] == [True, False, True]


class FusedAdamW(TinyModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=0.01, fused=True)  # unscales inside its own step


def test_fp16_fused_optimizer_norms_are_unscaled(make_trainer: Callable[..., Trainer]) -> None:
    # Lightning does not unscale before `on_before_optimizer_step` for an optimizer that unscales in its step
    logger, scaled, after = MemoryLogger(), ScaledGradNorms(), OptimizerGradRecorder()
    clip = GradientClipping(max_norm=0.05, log_every_n_steps=1)
    trainer = make_trainer(max_steps=3, plugins=[_fp16_cpu()], logger=logger, callbacks=[scaled, clip, after])
    trainer.fit(FusedAdamW())
    assert trainer.precision_plugin.scaler.get_scale() == 1024.0  # type: ignore[attr-defined]
    assert logger.series("grad_clip/norm") == pytest.approx(scaled.norms, rel=1e-5)
    # the gradients the fused step receives still carry the scale; their unscaled norm is max_norm
    assert after.norms == pytest.approx([0.05 * 1024.0] * 3, rel=1e-4)


@pytest.mark.parametrize("mode", ["value", "agc"])
def test_fp16_fused_optimizer_value_and_agc_bounds_are_unscaled(
    mode: str, make_trainer: Callable[..., Trainer]
) -> None:
    class Weights(Callback):
        def __init__(self) -> None:
            self.weights: list[list[torch.Tensor]] = []

        def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
            self.weights.append([p.detach().clone() for p in pl_module.parameters()])

    weights, before, after = Weights(), GradRecorder(), GradRecorder()
    bound = {"clip_value": 0.05} if mode == "value" else {"agc_clipping": 1e-3}
    clip = GradientClipping(mode=mode, **bound)  # type: ignore[arg-type]
    trainer = make_trainer(max_steps=2, plugins=[_fp16_cpu()], callbacks=[weights, before, clip, after])
    trainer.fit(FusedAdamW())
    s = 1024.0  # the scale the fused optimizer's gradients still carry
    for ws, gs, clipped in zip(weights.weights, before.grads, after.grads, strict=True):
        for w, g, c in zip(ws, gs, clipped, strict=True):
            true_grad = g / s
            if mode == "value":
                expected = true_grad.clamp(-0.05, 0.05)
            else:
                dims = tuple(range(1, w.ndim)) or None
                limit = 1e-3 * torch.linalg.vector_norm(w, dim=dims, keepdim=True).clamp(min=1e-3)
                norm = torch.linalg.vector_norm(true_grad, dim=dims, keepdim=True)
                expected = torch.where(norm > limit, true_grad * limit / norm, true_grad)
            torch.testing.assert_close(c / s, expected)
            assert not torch.equal(c, g)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")  # on purpose, below
def test_fp16_window_without_a_step_stays_out_of_the_history(make_trainer: Callable[..., Trainer]) -> None:
    class NoneAtWindowEnd(TinyModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx == 1 else super().training_step(batch, batch_idx)

    before = GradRecorder()
    clip = GradientClipping(mode="percentile", window=10)
    trainer = make_trainer(max_steps=3, accumulate_grad_batches=2, plugins=[_fp16_cpu()], callbacks=[before, clip])
    trainer.fit(NoneAtWindowEnd())
    norms = [torch.nn.utils.get_total_norm(g).item() for g in before.grads]
    # window 0 ended in `None`: Lightning neither unscales nor steps, its gradients still carry the 1024 scale
    assert norms[0] > 100 * max(norms[1:])
    rule = clip.threshold_rule()
    assert isinstance(rule, PercentileThreshold)
    assert rule.history == pytest.approx(norms[1:], rel=1e-6)
