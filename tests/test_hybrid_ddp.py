"""A HybridOptimizer (Muon + AdamW) under 2-process DDP on CPU: both ranks end with identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ddp import run_ddp

SCRIPT = """
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from lit_optim import GradientClipping
from tests.test_hybrid_trainer import HybridGPT

torch.manual_seed(0)
module = HybridGPT(batches=8)  # 4 batches per rank (Lightning's DistributedSampler): different data per rank
start = torch.cat([p.detach().flatten().clone() for p in module.model.parameters()])
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, callbacks=[GradientClipping(1.0)],
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
)
trainer.fit(module)
weights = torch.cat([p.detach().flatten() for p in module.model.parameters()])
optimizer = trainer.optimizers[0]
out = {
    "weights": weights.tolist(),
    "moved": bool((weights != start).all()),
    "groups": [g["name"] for g in optimizer.param_groups],
    "lrs": [g["lr"] for g in optimizer.param_groups],
    "steps": trainer.global_step,
}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.ddp
def test_both_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(SCRIPT, tmp_path)
    assert rank0["groups"] == ["muon/decay", "adamw/decay", "adamw/no_decay"]
    assert rank0["steps"] == rank1["steps"] == 4
    assert rank0["moved"]
    assert rank0["weights"] == rank1["weights"]  # exact: the same all-reduced gradients, the same steps
    assert rank0["lrs"] == rank1["lrs"]
