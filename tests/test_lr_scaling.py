"""Batch-size lr scaling: the rule's formula, resolved from a real Trainer's global batch, logged, and resumed."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_optim import BatchScaling, Cosine, OptimizerMixin, configure_optimizers, scale_lr
from tests.loggers import MemoryLogger
from tests.models import TinyModule
from tests.trainers import cpu_trainer


@pytest.mark.parametrize(("rule", "lr", "batch", "reference", "expected"), [
    ("linear", 0.1, 1024, 256, 0.1 * (1024 / 256)),
    ("linear", 0.1, 64, 256, 0.1 * (64 / 256)),
    ("sqrt", 1e-3, 1024, 256, 1e-3 * math.sqrt(1024 / 256)),
    ("sqrt", 1e-3, 96, 256, 1e-3 * math.sqrt(96 / 256)),
    ("sqrt", 1e-3, 256, 256, 1e-3),
])
def test_scale_lr_is_the_rule(rule: str, lr: float, batch: int, reference: int, expected: float) -> None:
    assert scale_lr(lr, rule, batch, reference) == expected  # type: ignore[arg-type]


class _Scaled(TinyModule):
    """Records each step's group lrs; ``batch_size`` (4) is an attribute, as Lightning's batch-size finder reads it."""

    def __init__(self, **config: Any) -> None:
        super().__init__(batch_size=4, n=64)
        self.config = config
        self.seen: list[list[float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen.append([float(g["lr"]) for g in self.trainer.optimizers[0].param_groups])
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, **self.config)


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
@pytest.mark.parametrize("accumulation", [1, 4])
def test_resolved_lr_follows_the_global_batch(
    rule: str, accumulation: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _Scaled(optimizer="sgd", lr=0.1, lr_scaling=rule, reference_batch_size=8, overrides={"net.0.*":
                    {"lr_scale": 0.5}})
    logger = MemoryLogger()
    with caplog.at_level(logging.INFO):
        cpu_trainer(tmp_path, max_steps=1, logger=logger, accumulate_grad_batches=accumulation).fit(model)
    ratio = (4 * 1 * accumulation) / 8  # per-device batch x processes x accumulation / reference
    lr = 0.1 * ratio if rule == "linear" else 0.1 * math.sqrt(ratio)
    assert model.seen[0] == [lr * 0.5, lr * 0.5, lr, lr]
    assert logger.series("lr_scaling/lr") == [lr]
    assert logger.series("lr_scaling/global_batch_size") == [4 * accumulation]
    assert f"= {lr!r} (global batch {4 * accumulation} = 4 per device x 1 processes x {accumulation}" in caplog.text
    record = model.trainer.optimizers[0].param_groups[0]["lr_scaling"]
    assert record == {"rule": rule, "reference_batch_size": 8, "batch_size": 4, "world_size": 1,
                      "accumulation": accumulation, "base_lr": 0.1, "global_batch_size": 4 * accumulation, "lr": lr}


class _Mixin(OptimizerMixin, _Scaled):
    def __init__(self, lr: float = 0.01, lr_scaling: str | None = None, reference_batch_size: int | None = None,
                 scheduler: Any = None, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size

    def configure_optimizers(self) -> Any:
        return OptimizerMixin.configure_optimizers(self)


def _run(root: Path, model: _Mixin, ckpt: Path | None = None, **trainer: Any) -> Any:
    """Two epochs of 4 batches, a checkpoint after every step."""
    checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_train_steps=1)
    settings = {"max_epochs": 2, "limit_train_batches": 4, "callbacks": [checkpoints], **trainer}
    t = cpu_trainer(root, **settings)
    t.fit(model, ckpt_path=ckpt)
    return t


def _make(**hparams: Any) -> _Mixin:
    torch.manual_seed(0)
    return _Mixin(**hparams)


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
def test_mixin_hparams_scale_and_resume_is_exact(tmp_path: Path) -> None:
    settings = {"lr": 0.02, "lr_scaling": "sqrt", "reference_batch_size": 16, "scheduler": Cosine(warmup=2)}
    straight = _make(**settings)
    _run(tmp_path / "a", straight)
    lr = 0.02 * math.sqrt(4 / 16)
    assert straight.seen[2] == [lr, lr]  # warmup over: the resolved base lr
    resumed = _make(**settings)
    _run(tmp_path / "b", resumed, tmp_path / "a" / "epoch=0-step=4.ckpt")
    assert resumed.seen == straight.seen[4:]
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
def test_resume_with_another_global_batch_keeps_the_checkpoints_lr_and_says_so(tmp_path: Path) -> None:
    settings = {"lr": 0.02, "lr_scaling": "linear", "reference_batch_size": 4}
    _run(tmp_path / "a", _make(**settings))
    resumed = _make(**settings)
    with pytest.warns(UserWarning, match=r"scaled for a global batch of 4 \(lr 0.02\); this run's global batch is 8"
                      r".*The checkpoint's lrs and schedule are kept"):
        _run(tmp_path / "b", resumed, tmp_path / "a" / "epoch=0-step=4.ckpt", accumulate_grad_batches=2)
    assert resumed.seen == [[0.02, 0.02]] * 4  # 2 steps of 2 batches, at 0.02, not 0.04: the checkpoint's lr
    assert resumed.trainer.optimizers[0].param_groups[0]["lr_scaling"]["global_batch_size"] == 4


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_plain_checkpoint_resumed_with_scaling_warns(tmp_path: Path) -> None:
    _run(tmp_path / "a", _make(lr=0.02))
    with pytest.warns(UserWarning, match="whose lr was not batch-scaled"):
        _run(tmp_path / "b", _make(lr=0.02, lr_scaling="sqrt", reference_batch_size=1),
             tmp_path / "a" / "epoch=0-step=4.ckpt")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lr_scaling": "sqr", "reference_batch_size": 8}, r"`lr_scaling` must be one of \['linear', 'sqrt'\], got 'sqr'"
                                                       r". Did you mean 'sqrt'\?"),
    ({"lr_scaling": "linear"}, r"`lr_scaling='linear'` needs `reference_batch_size`"),
    ({"reference_batch_size": 8}, r"`reference_batch_size`=8 is only used with `lr_scaling`"),
    ({"lr_scaling": "sqrt", "reference_batch_size": 0}, r"`reference_batch_size` must be an int >= 1, got 0"),
])
def test_bad_scaling_settings_raise_clearly(kwargs: dict[str, Any], match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        cpu_trainer(tmp_path, max_steps=1).fit(_Scaled(**kwargs))


def test_scaling_needs_a_trainer_and_a_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not attached to one. HINT: call `configure_optimizers` from"):
        configure_optimizers(nn.Linear(2, 1), lr=0.1, lr_scaling="sqrt", reference_batch_size=8)
    model = _Scaled(lr=0.1, lr_scaling="sqrt", reference_batch_size=8)
    del model.batch_size
    with pytest.raises(ValueError, match="needs the per-device batch size: set `batch_size`"):
        cpu_trainer(tmp_path, max_steps=1).fit(model)


def test_describe_names_every_factor() -> None:
    scaling = BatchScaling("linear", 256, batch_size=32, world_size=4, accumulation=2, base_lr=0.1)
    assert scaling.describe() == (
        "lr_scaling='linear': lr 0.1 x (256/256) = 0.1 (global batch 256 = 32 per device x 4 processes x 2 accumulated)"
    )


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from lightning.pytorch import Trainer
from lit_optim import LRRangeTest, configure_optimizers
from tests.models import TinyModule

class Scaled(TinyModule):
    def __init__(self):
        super().__init__(n=64, batch_size=4)
        self.local_losses, self.seen = [], []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.local_losses.append(float(loss.detach()))
        self.seen.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def configure_optimizers(self):
        return configure_optimizers(self, "sgd", lr=0.01, lr_scaling="sqrt", reference_batch_size=4,
                                    overrides={"net.2.*": {"lr_scale": 3.0}})

torch.manual_seed(0)
test = LRRangeTest(min_lr=1e-4, max_lr=0.1, num_steps=15, rule="minimum", skip_end=1, early_stop_threshold=None)
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, limit_val_batches=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[test])
model = Scaled()
trainer.fit(model)
r = test.result
out = {"record": trainer.optimizers[0].param_groups[0]["lr_scaling"], "lrs": list(r.lrs), "raw": list(r.raw_losses),
       "suggestion": r.suggestion, "local": model.local_losses, "seen": model.seen, "ratios": r.ratios,
       "weights": [p.detach().flatten().tolist() for p in model.parameters()]}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.ddp
def test_ddp_resolves_the_two_process_batch_and_both_ranks_share_one_range_test(tmp_path: Path) -> None:
    from tests.ddp import run_ddp

    rank0, rank1 = run_ddp(DDP_SCRIPT, tmp_path)
    lr = 0.01 * math.sqrt(4 * 2 * 1 / 4)  # per-device 4 x 2 processes x no accumulation, reference 4
    assert rank0["record"] == rank1["record"]
    assert rank0["record"]["world_size"] == 2
    assert rank0["record"]["lr"] == lr
    # one sweep: the same lrs, losses (the mean of the ranks' losses) and suggestion on both ranks
    assert rank0["lrs"] == rank1["lrs"]
    assert rank0["raw"] == rank1["raw"]
    assert rank0["suggestion"] == rank1["suggestion"] is not None
    n = len(rank0["raw"])
    means = [(a + b) / 2 for a, b in zip(rank0["local"][:n], rank1["local"][:n], strict=True)]
    assert rank0["raw"] == pytest.approx(means, rel=1e-6)
    assert rank0["local"][:n] != rank1["local"][:n]  # the ranks saw different data
    # the suggestion applied on both ranks, at each group's ratio (the scaled lr was the base)
    assert rank0["ratios"] == {"decay": 1.0, "no_decay": 1.0, "net.2/decay": 3.0, "net.2/no_decay": 3.0}
    assert rank0["seen"][n:] == rank1["seen"][n:] == [rank0["suggestion"]] * 2
    assert rank0["weights"] == rank1["weights"]


class CliModel(OptimizerMixin, _Scaled):
    def __init__(self, lr: float = 0.01, lr_scaling: str | None = None, reference_batch_size: int | None = None,
                 batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size

    def configure_optimizers(self) -> Any:
        return OptimizerMixin.configure_optimizers(self)


# Lightning's CLI calls jsonargparse APIs that jsonargparse 4.49 deprecated; not ours to fix.
@pytest.mark.filterwarnings("ignore::jsonargparse._deprecated.JsonargparseDeprecationWarning")
def test_scaling_and_range_test_from_lightning_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    from lit_optim import LRRangeTest

    monkeypatch.setattr("sys.argv", ["train.py"])
    args = [
        "--model.lr=0.01", "--model.lr_scaling=linear", "--model.reference_batch_size=2",
        "--trainer.callbacks+=lit_optim.LRRangeTest", "--trainer.callbacks.num_steps=14",
        "--trainer.callbacks.max_lr=0.1", "--trainer.callbacks.apply=false",
        "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ]
    cli = LightningCLI(CliModel, run=False, seed_everything_default=False, args=args)
    (test,) = [c for c in cli.trainer.callbacks if isinstance(c, LRRangeTest)]
    assert (test.num_steps, test.max_lr, test.apply) == (14, 0.1, False)
    cli.trainer.fit(cli.model)
    assert test.result is not None
    assert len(test.result.lrs) == 14
    assert test.result.base_lr == 0.01 * 4 / 2  # the range test sweeps around the scaled lr
    assert cli.model.seen[14:] == [[0.02, 0.02]]  # apply=false: training runs at the scaled lr


@pytest.mark.parametrize("scaled", [False, True])
def test_applied_suggestion_updates_the_hparams_lr_it_replaces(scaled: bool, tmp_path: Path) -> None:
    from lit_optim import LRRangeTest

    scaling = {"lr_scaling": "linear", "reference_batch_size": 2} if scaled else {}
    model = CliModel(lr=0.01, **scaling)
    test = LRRangeTest(min_lr=1e-4, max_lr=0.1, num_steps=14, rule="minimum", skip_end=1)
    cpu_trainer(tmp_path, max_steps=1, callbacks=[test]).fit(model)
    assert test.result is not None
    assert test.result.suggestion is not None
    assert model.seen[-1] == [test.result.suggestion] * 2
    # unscaled: hparams' lr is the base lr, now the suggestion; scaled: hparams' lr is the reference-batch lr, kept
    assert model.hparams["lr"] == (0.01 if scaled else test.result.suggestion)
