"""Schedule-free optimizers under 2-process DDP on CPU: every rank switches modes, checkpoints hold x."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tests.ddp import run_ddp
from tests.models import TinyModule, random_regression_data

schedulefree = pytest.importorskip("schedulefree")

SCRIPT = """
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_optim import configure_optimizers
from tests.models import TinyModule

out = Path(sys.argv[1])


class Model(TinyModule):
    def configure_optimizers(self):
        return configure_optimizers(self, "adamw_schedulefree", lr=0.02, weight_decay=0.01, warmup_steps=3)


torch.manual_seed(0)
model = Model()
initial = {k: v.tolist() for k, v in model.state_dict().items()}
checkpoint = ModelCheckpoint(dirpath=out / "ckpt", filename="{step}", every_n_train_steps=5, save_top_k=-1)
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_progress_bar=False,
    enable_model_summary=False, num_sanity_val_steps=0, callbacks=[checkpoint],
)
trainer.fit(model)
optimizer = trainer.optimizers[0]
result = {
    "initial": initial,
    "final": {k: v.tolist() for k, v in model.state_dict().items()},
    "train_mode": [g["train_mode"] for g in optimizer.param_groups],
    "steps": trainer.global_step,
}
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
"""


@pytest.mark.ddp
def test_two_ranks_train_at_y_evaluate_and_save_x(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(SCRIPT, tmp_path)
    assert rank0["final"] == rank1["final"]
    assert rank0["steps"] == 8
    assert rank0["train_mode"] == rank1["train_mode"] == [False, False]  # left in eval mode at fit end

    # the reference: each step averages the two ranks' gradients; Lightning's DistributedSampler shuffles (seed 0)
    model = TinyModule()
    model.load_state_dict({k: torch.tensor(v) for k, v in rank0["initial"].items()})
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = schedulefree.AdamWScheduleFree(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=0.02, warmup_steps=3
    )
    data = random_regression_data(64, 8, seed=0)
    samplers = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in range(2)]
    shards = [DataLoader(data, batch_size=4, sampler=sampler) for sampler in samplers]
    saved = {}
    optimizer.train()
    for step, ((x0, y0), (x1, y1)) in enumerate(zip(*shards, strict=True), start=1):
        optimizer.train()
        (nn.functional.mse_loss(model(x0), y0) / 2 + nn.functional.mse_loss(model(x1), y1) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0:
            optimizer.eval()
            saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer.eval()
    for key, value in model.state_dict().items():  # all-reduce sums in another order: equal up to rounding
        torch.testing.assert_close(torch.tensor(rank0["final"][key]), value, rtol=1e-5, atol=1e-6)
    ckpt = torch.load(tmp_path / "ckpt" / "step=5.ckpt", weights_only=True)
    assert [g["train_mode"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [False, False]
    for key, value in saved[5].items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-5, atol=1e-6)
