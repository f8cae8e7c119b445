"""GradientClipping under 2-process DDP and FSDP2 (ModelParallelStrategy) on CPU/gloo, and on a GPU."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from lit_optim import GradientClipping
from tests.ddp import run_ddp
from tests.loggers import MemoryLogger
from tests.models import TinyModule
from tests.test_clipping import GradRecorder

# Shared by both scripts: a logger that records on every rank, and recorders of the full (unsharded)
# gradients right before and right after the clipper.
_PRELUDE = """
import json, math, sys
from pathlib import Path
import lightning as L
import torch
from torch.distributed.tensor import DTensor
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lit_optim import GradientClipping
from tests.models import TinyModule

class Rec(Logger):
    name, version = "rec", 0
    def __init__(self):
        super().__init__()
        self.logged = []
    def log_metrics(self, metrics, step=None):
        self.logged.append(dict(metrics))
    def log_hyperparams(self, *args, **kwargs):
        pass

def full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t

class FullGrads(Callback):
    def __init__(self):
        self.norms, self.group_norms, self.grads = [], [], []
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        groups = [[full(p.grad).detach().clone() for p in g["params"]] for g in optimizer.param_groups]
        flat = [g for gs in groups for g in gs]
        self.grads.append(flat)
        self.norms.append(torch.nn.utils.get_total_norm(flat, NORM_TYPE).item())
        self.group_norms.append([torch.nn.utils.get_total_norm(g, NORM_TYPE).item() for g in groups])
"""


def _ddp_script(norm_type: float) -> str:
    return (
        f"NORM_TYPE = float({str(norm_type)!r})\n"
        + _PRELUDE
        + """
class Grouped(TinyModule):
    def configure_optimizers(self):
        w = [p for n, p in self.named_parameters() if n.endswith("weight")]
        b = [p for n, p in self.named_parameters() if n.endswith("bias")]
        return torch.optim.SGD([{"params": w, "name": "decay"}, {"params": b, "name": "no_decay"}], lr=0.1)

torch.manual_seed(0)
logger, before = Rec(), FullGrads()
clip = GradientClipping(mode="percentile", percentile=50.0, window=4, norm_type=NORM_TYPE, log_every_n_steps=1)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=logger,
                    callbacks=[before, clip], enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
trainer.fit(Grouped())
out = {"logged": [m for m in logger.logged if "grad_clip/norm" in m], "ref": before.norms,
       "ref_groups": before.group_norms, "history": clip.threshold_rule().history}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""
    )


def _fsdp2_script(norm_type: float) -> str:
    return (
        f"NORM_TYPE = float({str(norm_type)!r})\n"
        + _PRELUDE
        + """
from torch.distributed.fsdp import fully_shard
from lightning.pytorch.strategies import ModelParallelStrategy

class Sharded(TinyModule):
    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)
    def configure_optimizers(self):
        w = [p for n, p in self.named_parameters() if n.endswith("weight")]
        b = [p for n, p in self.named_parameters() if n.endswith("bias")]
        return torch.optim.SGD([{"params": w, "name": "decay"}, {"params": b}], lr=0.1)

class Kinds(Callback):
    kinds = []
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.kinds = [type(p.grad).__name__ for p in pl_module.parameters()]

torch.manual_seed(0)
logger, before, after, kinds = Rec(), FullGrads(), FullGrads(), Kinds()
clip = GradientClipping(mode="percentile", percentile=50.0, window=4, norm_type=NORM_TYPE, log_every_n_steps=1)
strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=5, logger=logger,
                    callbacks=[kinds, before, clip, after], enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
trainer.fit(Sharded())
def ratio_range(ga, gb):
    r = torch.cat([(a / b)[b != 0].flatten() for a, b in zip(ga, gb)])
    return [r.min().item(), r.max().item()]

out = {"logged": [m for m in logger.logged if "grad_clip/norm" in m], "ref": before.norms,
       "ref_groups": before.group_norms, "after": after.norms, "kinds": kinds.kinds,
       "history": clip.threshold_rule().history,
       "ratios": [ratio_range(ga, gb) for ga, gb in zip(after.grads, before.grads)]}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""
    )


_DDP_SKIP_SCRIPT = (
    "NORM_TYPE = 2.0\n"
    + _PRELUDE
    + """
class InfOnRank1(TinyModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.trainer.global_step == 2 and self.global_rank == 1:
            loss = loss * math.inf  # only rank 1 diverges; DDP's all-reduce spreads it to rank 0
        return loss
    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx == 2:
            self.before_skip = [p.detach().clone() for p in self.parameters()]
    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx == 2:
            self.unchanged = all(torch.equal(a, p) for a, p in zip(self.before_skip, self.parameters()))

torch.manual_seed(0)
logger = Rec()
clip = GradientClipping(mode="percentile", window=8, skip_nonfinite=True, log_every_n_steps=1)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5, logger=logger, callbacks=[clip],
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0)
model = InfOnRank1()
trainer.fit(model)
out = {"logged": [m for m in logger.logged if "grad_clip/norm" in m], "unchanged": model.unchanged,
       "skipped": clip.skipped_steps, "history": clip.threshold_rule().history,
       "weights": [p.detach().flatten().tolist() for p in model.parameters()]}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""
)


def _check_norms_and_thresholds(ranks: list[dict[str, Any]], group_keys: list[str]) -> None:
    r0, r1 = ranks
    assert r0["logged"] == r1["logged"]  # same norms, thresholds, coefficients on both ranks, exactly
    assert r0["history"] == r1["history"]
    norms = [m["grad_clip/norm"] for m in r0["logged"]]
    assert norms == pytest.approx(r0["ref"], rel=1e-5)
    for m, ref_groups in zip(r0["logged"], r0["ref_groups"], strict=True):
        assert [m[k] for k in group_keys] == pytest.approx(ref_groups, rel=1e-5)
    for i, m in enumerate(r0["logged"]):
        window = norms[max(0, i - 3) : i + 1]
        assert m["grad_clip/threshold"] == pytest.approx(np.percentile(window, 50.0), rel=1e-5)
    assert r0["history"] == pytest.approx(norms[-4:], rel=1e-6)


@pytest.mark.ddp
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_ddp_norms_and_thresholds_identical_on_both_ranks(norm_type: float, tmp_path: Path) -> None:
    ranks = run_ddp(_ddp_script(norm_type), tmp_path)
    assert len(ranks[0]["logged"]) == 6
    _check_norms_and_thresholds(ranks, ["grad_clip/group_norm/decay", "grad_clip/group_norm/no_decay"])


@pytest.mark.ddp
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_fsdp2_norm_is_global_on_both_ranks(norm_type: float, tmp_path: Path) -> None:
    ranks = run_ddp(_fsdp2_script(norm_type), tmp_path)
    r0 = ranks[0]
    assert set(r0["kinds"]) == {"DTensor"}  # the gradients really were sharded
    assert len(r0["logged"]) == 5
    _check_norms_and_thresholds(ranks, ["grad_clip/group_norm/decay", "grad_clip/group_norm/group1"])
    for m, after, ratios in zip(r0["logged"], r0["after"], r0["ratios"], strict=True):
        # the full gradients were scaled by exactly the logged coefficient, to norm min(norm, threshold)
        assert ratios == pytest.approx([m["grad_clip/clip_coef"]] * 2, rel=1e-5)
        assert after == pytest.approx(min(m["grad_clip/norm"], m["grad_clip/threshold"]), rel=1e-4)


@pytest.mark.ddp
def test_ddp_skip_decision_is_the_same_on_both_ranks(tmp_path: Path) -> None:
    r0, r1 = run_ddp(_DDP_SKIP_SCRIPT, tmp_path)
    for r in (r0, r1):
        assert r["skipped"] == 1
        assert r["unchanged"] is True  # the skipped step left the weights alone on both ranks
        assert [m["grad_clip/skipped_steps"] for m in r["logged"]] == [0.0, 0.0, 1.0, 1.0, 1.0]
        assert not math.isfinite(r["logged"][2]["grad_clip/norm"])
        assert len(r["history"]) == 4  # the non-finite norm never entered the percentile window
    assert r0["history"] == r1["history"]
    assert r0["weights"] == r1["weights"]


# -- GPU: fp16 AMP and FSDP1 (skipped without CUDA) ------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_gpu
def test_fp16_amp_clips_unscaled_gradients(make_trainer: Callable[..., Trainer]) -> None:
    logger, before, after = MemoryLogger(), GradRecorder(), GradRecorder()
    clip = GradientClipping(max_norm=0.05, log_every_n_steps=1, skip_nonfinite=True)
    trainer = make_trainer(
        accelerator="gpu", max_steps=6, precision="16-mixed", logger=logger, callbacks=[before, clip, after]
    )
    model = TinyModule()
    trainer.fit(model)
    scaler = trainer.precision_plugin.scaler  # type: ignore[attr-defined]
    assert scaler is not None
    assert scaler.get_scale() > 1.0  # gradients really were scaled during backward
    norms = logger.series("grad_clip/norm")
    assert len(norms) == 6
    finite = 0
    for norm, grads, clipped in zip(norms, before.grads, after.grads, strict=True):
        reference = torch.nn.utils.get_total_norm(grads).item()
        if not math.isfinite(reference):  # an fp16 overflow step: the GradScaler skips it
            assert not math.isfinite(norm)
            continue
        finite += 1
        assert norm == pytest.approx(reference, rel=1e-5)
        assert torch.nn.utils.get_total_norm(clipped).item() == pytest.approx(min(norm, 0.05), rel=1e-3)
    assert finite >= 2
    assert clip.skipped_steps == 0  # fp16 overflow steps are left to the GradScaler, not counted


class _FullGradNorms(Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())


@pytest.mark.gpu
@needs_gpu
def test_fsdp1_uses_the_wrapped_modules_norm(make_trainer: Callable[..., Trainer]) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    logger, before, after = MemoryLogger(), _FullGradNorms(), _FullGradNorms()
    clip = GradientClipping(max_norm=0.05, log_every_n_steps=1)
    trainer = make_trainer(
        accelerator="gpu", devices=1, strategy=FSDPStrategy(), max_steps=3, logger=logger,
        callbacks=[before, clip, after],
    )
    trainer.fit(TinyModule())
    norms = logger.series("grad_clip/norm")
    assert len(norms) == 3
    assert norms == pytest.approx(before.norms, rel=1e-5)
    assert after.norms == pytest.approx([min(n, 0.05) for n in norms], rel=1e-3)
    assert not any(k.startswith("grad_clip/group_norm/") for _, m in logger.logged for k in m)  # total only


@pytest.mark.gpu
@needs_gpu
def test_fsdp1_refuses_agc(make_trainer: Callable[..., Trainer]) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    trainer = make_trainer(accelerator="gpu", devices=1, strategy=FSDPStrategy(), max_steps=1,
                           callbacks=[GradientClipping(mode="agc")])
    with pytest.raises(ValueError, match=r"`mode='agc'` needs whole parameters; FSDP1 shards them"):
        trainer.fit(TinyModule())
