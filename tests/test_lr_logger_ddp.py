"""LearningRateLogger under 2-process DDP on CPU: rank 0 writes alone; the consistency check reports mismatches."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.ddp import run_ddp

SCRIPT = """
import json
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, Logger

from lit_optim import LearningRateLogger
from tests.models import TinyModule

MODE = {mode!r}  # "same": identical ranks; "groups": rank 1 splits "head"; else rank r has lr=0.1 * (1 + r) on "body"


class Recorder(Logger):
    # Not rank-zero-only, unlike Lightning's loggers: it shows what each rank was asked to log.
    def __init__(self):
        super().__init__()
        self.calls = []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.calls.append([step, dict(metrics)])

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Model(TinyModule):
    def configure_optimizers(self):
        lr = 0.1 if MODE in ("same", "groups") else 0.1 * (1 + self.global_rank)
        groups = [
            {{"params": self.net[0].parameters(), "name": "body"}},
            {{"params": self.net[2].parameters(), "name": "head", "lr": 0.01}},
        ]
        if MODE == "groups" and self.global_rank == 1:
            groups[1:] = [
                {{"params": [self.net[2].weight], "name": "head", "lr": 0.01}},
                {{"params": [self.net[2].bias], "name": "head_bias", "lr": 0.01}},
            ]
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)


out = Path(sys.argv[1])
recorder = Recorder()
callback = LearningRateLogger(
    log_every_n_steps=2, log_weight_decay=False, check_consistency_every_n_steps=1,
    on_mismatch="warn" if MODE == "warn" else "raise",
)
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=4, limit_val_batches=0,
    logger=[CSVLogger(out, name="csv", version=0), recorder], callbacks=[callback],
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
)
result = {{"error": None}}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        trainer.fit(Model())
    except RuntimeError as error:
        result["error"] = str(error)
result["warnings"] = [str(w.message) for w in caught if "LearningRateLogger" in str(w.message)]
result["calls"] = [call for call in recorder.calls if any(key.startswith("lr/") for key in call[1])]
result["global_step"] = trainer.global_step
(out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps(result))
"""

MISMATCH = (
    "LearningRateLogger: ranks [1] hold values different from rank 0 at global step 0: "
    "lr/body: rank 0: 0.1, rank 1: 0.2. Every rank must build the same optimizer, param groups and schedule."
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("lr/body", "")]


@pytest.mark.ddp
def test_only_rank_zero_logs_and_equal_ranks_pass_the_check(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(SCRIPT.format(mode="same"), tmp_path)
    expected = {"lr/body": 0.1, "momentum/body": 0.9, "lr/head": 0.01, "momentum/head": 0.9}
    calls = [[0, expected], [1, expected], [3, expected]]  # step 0, then (step + 1) % 2 == 0
    assert rank0 == {"error": None, "warnings": [], "global_step": 4, "calls": calls}
    assert rank1 == {"error": None, "warnings": [], "global_step": 4, "calls": []}
    rows = read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    series = [(int(r["step"]), float(r["lr/body"]), float(r["lr/head"])) for r in rows]
    assert series == [(0, 0.1, 0.01), (1, 0.1, 0.01), (3, 0.1, 0.01)]  # step 0, then (step + 1) % 2 == 0


@pytest.mark.ddp
def test_different_lrs_raise_on_every_rank_naming_ranks_and_values(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(SCRIPT.format(mode="raise"), tmp_path)
    for rank in (rank0, rank1):
        assert rank["error"] == MISMATCH
        assert rank["global_step"] == 0
    assert rank1["calls"] == []


@pytest.mark.ddp
def test_different_lrs_warn_once_on_rank_zero_and_training_goes_on(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(SCRIPT.format(mode="warn"), tmp_path)
    assert rank0["warnings"] == [f"{MISMATCH} Later mismatches are not reported."]
    assert rank1["warnings"] == []
    assert rank0["global_step"] == rank1["global_step"] == 4
    assert [step for step, _ in rank0["calls"]] == [0, 1, 3]
    assert rank0["calls"][0][1]["lr/body"] == 0.1  # rank 0's own value is what gets logged
    assert rank1["calls"] == []


@pytest.mark.ddp
def test_different_group_counts_raise_naming_the_counts(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(SCRIPT.format(mode="groups"), tmp_path)
    for rank in (rank0, rank1):
        assert rank["error"] == (
            "LearningRateLogger: ranks hold different numbers of logged values at global step 0: rank 0: 4, rank 1: 6."
            " Every rank must build the same optimizer, param groups and schedule."
        )
