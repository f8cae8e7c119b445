"""OptimizerMonitor under 2-process DDP and FSDP2 (ModelParallelStrategy + fully_shard) on CPU/gloo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_optim import OptimizerMonitor
from tests.ddp import run_ddp
from tests.loggers import MemoryLogger
from tests.test_optimizer_monitor import AdamWModule

_PRELUDE = """
import json, sys
from pathlib import Path
import lightning as L
import torch
from lit_optim import OptimizerMonitor
from tests.loggers import MemoryLogger as Rec  # records on every rank
from tests.test_optimizer_monitor import LossSpike, StepRecorder, _expected, _named_groups

def trainer_kwargs(**kwargs):
    return dict(accelerator="cpu", devices=2, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)
"""

_DDP_SCRIPT = _PRELUDE + """
class SpikeOnRank1(LossSpike):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        if self.trainer.global_step == 4 and self.global_rank == 1:
            loss = loss + 1e4 * loss.detach()  # only rank 1's loss spikes; the rank mean does too
        return loss

torch.manual_seed(0)
logger, recorder = Rec(), StepRecorder()
monitor = OptimizerMonitor(log_every_n_steps=1, spike_warmup_steps=2, action="skip")
trainer = L.Trainer(strategy="ddp", max_steps=6, logger=logger, callbacks=[recorder, monitor], **trainer_kwargs())
model = SpikeOnRank1(at=())
trainer.fit(model)
rec = recorder.records[4]
out = {
    "logged": logger.logged,
    "expected": {s: _expected(r, ["decay", "no_decay"]) for s, r in recorder.records.items()},
    "skipped_unchanged": all(torch.equal(a, b) for g, h in zip(rec["before"], rec["after"]) for a, b in zip(g, h)),
    "skipped": monitor.skipped_steps,
    "stats": monitor.state_dict(),
    "weights": [p.detach().flatten().tolist() for p in model.parameters()],
}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""

_FSDP2_SCRIPT = _PRELUDE + """
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, Subset
from tests.models import random_regression_data
from tests.test_optimizer_monitor import AdamWModule

class Sharded(AdamWModule):
    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)
    def train_dataloader(self):  # rank r takes samples r, r + 2, ...: both ranks' batches make one of 8 in order
        data = random_regression_data(self.n, self.features, seed=0)
        return DataLoader(Subset(data, range(self.global_rank, self.n, 2)), batch_size=4)

torch.manual_seed(0)
logger = Rec()
monitor = OptimizerMonitor(log_every_n_steps=1, spike_warmup_steps=2)
strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
trainer = L.Trainer(strategy=strategy, max_steps=4, logger=logger, callbacks=[monitor], use_distributed_sampler=False,
                    **trainer_kwargs())
model = Sharded(batch_size=4)
trainer.fit(model)
out = {"logged": logger.logged, "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
       "stats": monitor.state_dict()}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


def _rows(logged: list[list[Any]]) -> dict[int, dict[str, float]]:
    return {int(step): m for step, m in logged if any(k.startswith("optimizer/") for k in m)}


@pytest.mark.ddp
def test_ddp_ranks_agree_and_skip_a_spike_on_one_rank(tmp_path: Path) -> None:
    r0, r1 = run_ddp(_DDP_SCRIPT, tmp_path)
    assert r0["logged"] == r1["logged"]  # every value and every decision, on both ranks
    assert r0["weights"] == r1["weights"]
    assert r0["stats"] == r1["stats"]
    rows = _rows(r0["logged"])
    assert sorted(rows) == list(range(6))
    assert [rows[s]["optimizer/spikes/loss"] for s in range(6)] == [0, 0, 0, 0, 1, 0]
    assert r0["skipped"] == r1["skipped"] == 1
    assert r0["skipped_unchanged"]
    assert r1["skipped_unchanged"]
    for step, row in rows.items():
        expected = r0["expected"][str(step)]
        assert {k: row[k] for k in expected} == pytest.approx(expected, rel=2e-5)
    assert rows[4]["optimizer/update_ratio/global"] == 0.0


@pytest.mark.ddp
def test_fsdp2_gives_the_numbers_of_a_single_process(
    tmp_path: Path, make_trainer: Callable[..., L.Trainer]
) -> None:
    (tmp_path / "fsdp2").mkdir()
    r0, r1 = run_ddp(_FSDP2_SCRIPT, tmp_path / "fsdp2")
    assert r0["sharded"]
    assert r0["logged"] == r1["logged"]
    assert r0["stats"] == r1["stats"]
    sharded = _rows(r0["logged"])
    # one process seeing both ranks' batches at once: the mean loss and gradient are the same
    torch.manual_seed(0)
    logger = MemoryLogger()
    monitor = OptimizerMonitor(log_every_n_steps=1, spike_warmup_steps=2)
    make_trainer(max_steps=4, logger=logger, callbacks=[monitor]).fit(AdamWModule(batch_size=8))
    single = {step: m for step, m in logger.logged if step is not None and "optimizer/update_ratio/global" in m}
    assert sorted(sharded) == sorted(single) == [0, 1, 2, 3]
    for step, row in single.items():
        assert set(sharded[step]) == set(row)
        assert sharded[step] == pytest.approx(row, rel=1e-4)
    assert any(k.startswith("optimizer/sqrt_v/") for k in single[0])
    ours = r0["stats"]["detectors"]
    theirs: dict[str, Any] = monitor.state_dict()["detectors"]
    for key, stats in theirs.items():
        assert ours[key] == pytest.approx(stats, rel=1e-4)
