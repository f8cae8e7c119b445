"""Schedule-free optimizers with other optimizers' modes, LearningRateLogger, LightningCLI and batch norm."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_optim import LearningRateLogger, OptimizerMixin, ScheduleFreeMode, recompute_batchnorm
from lit_optim.optim.schedule_free import train_mode
from tests.loggers import MemoryLogger
from tests.models import TinyModule, random_regression_data
from tests.schedule_free_reference import LR, WD, BNNet, SFModule, assert_same_weights, fit, initial_state

schedulefree = pytest.importorskip("schedulefree")


class ModalSGD(torch.optim.SGD):
    """An optimizer with train()/eval() of its own (not from schedulefree): records the calls."""

    calls: list[str]

    def __init__(self, params: Any, lr: float = 0.1, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.calls, self.train_mode = [], False

    def train(self) -> None:
        if not self.train_mode:
            self.calls.append("train")
        self.train_mode = True

    def eval(self) -> None:
        if self.train_mode:
            self.calls.append("eval")
        self.train_mode = False


def test_any_optimizer_with_train_and_eval_is_switched(make_trainer: Callable[..., L.Trainer]) -> None:
    module = SFModule(ModalSGD)  # type: ignore[arg-type]
    trainer = make_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module)
    trainer.validate(module, verbose=False)
    assert trainer.optimizers[0].calls == ["train", "eval", "train", "eval"]  # per epoch: steps, then validation
    assert any(isinstance(c, ScheduleFreeMode) for c in trainer.callbacks)



# ------------------------------------------------------------------ logging, OptimizerMixin / LightningCLI
def test_learning_rate_logger_logs_the_scheduled_and_the_effective_lr(make_trainer: Callable[..., L.Trainer]) -> None:

    logger = MemoryLogger()
    module = SFModule(warmup_steps=4)
    make_trainer(max_steps=6, logger=logger, callbacks=[LearningRateLogger(log_every_n_steps=1)]).fit(module)
    rows = [(step, m) for step, m in logger.logged if "lr/decay" in m]
    assert [step for step, _ in rows] == list(range(6))
    assert [m["lr/decay"] for _, m in rows] == [LR] * 6
    # schedulefree's own warmup inside step(): lr * min(1, (k + 1) / warmup_steps) at step k
    assert [m["effective_lr/decay"] for _, m in rows] == [LR * min(1.0, (k + 1) / 4) for k in range(6)]
    assert [m["effective_lr/no_decay"] for _, m in rows] == [LR * min(1.0, (k + 1) / 4) for k in range(6)]
    assert [m["momentum/decay"] for _, m in rows] == [0.9] * 6  # betas[0]


@pytest.mark.filterwarnings("ignore::jsonargparse._deprecated.JsonargparseDeprecationWarning")
def test_lightning_cli_resolves_the_name_and_attaches_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI


    class Model(OptimizerMixin, TinyModule):
        def __init__(self, optimizer: str = "adamw", lr: float = 1e-3, optimizer_kwargs: dict | None = None) -> None:
            super().__init__()
            self.save_hyperparameters()

    monkeypatch.setattr("sys.argv", ["train.py"])
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  optimizer: sgd_schedulefree\n  lr: 0.5\n  optimizer_kwargs:\n    momentum: 0.95\n")
    args = ["--config", str(config), "--trainer.accelerator=cpu", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0"]
    cli = LightningCLI(
        Model, run=False, seed_everything_default=False, save_config_callback=None,
        args=[*args, f"--trainer.default_root_dir={tmp_path}"],
    )
    cli.trainer.fit(cli.model)
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is schedulefree.SGDScheduleFree
    assert [(g["lr"], g["momentum"], g["k"], g["train_mode"]) for g in optimizer.param_groups] == [
        (0.5, 0.95, 3, False),
        (0.5, 0.95, 3, False),
    ]
    assert any(isinstance(c, ScheduleFreeMode) for c in cli.trainer.callbacks)


# ------------------------------------------------------------------ batch norm

def test_recompute_batchnorm_precise_equals_torch_update_bn() -> None:

    loader = DataLoader(random_regression_data(64, 8, seed=0), batch_size=8)
    model = BNNet().eval()
    reference = BNNet()
    reference.load_state_dict(model.state_dict())
    torch.optim.swa_utils.update_bn(loader, reference)  # torch's PreciseBN: exact average over the loader
    assert recompute_batchnorm(model, loader, precise=True) == 8
    bn, ref = model.net[1], reference.net[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert bn.momentum == 0.1
    assert not model.training


def test_recompute_batchnorm_default_is_the_authors_recipe() -> None:

    batches = [torch.randn(8, 8) for _ in range(5)]
    model = BNNet().eval()
    reference = BNNet()
    reference.load_state_dict(model.state_dict())
    reference.train()  # schedulefree README: model.train(); with no_grad: forward training batches; model.eval()
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    assert recompute_batchnorm(model, batches, forward=lambda m, b: m(b)) == 5
    assert torch.equal(model.net[1].running_mean, reference.net[1].running_mean)
    assert torch.equal(model.net[1].running_var, reference.net[1].running_var)
    assert recompute_batchnorm(nn.Linear(2, 1), batches) == 0  # nothing to do: nothing is run


def test_batchnorm_recomputed_in_on_validation_start_matches_the_authors_loop(
    make_trainer: Callable[..., L.Trainer],
) -> None:

    from lit_optim import recompute_batchnorm

    class BNModule(SFModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = BNNet().net

        def on_validation_start(self) -> None:  # ScheduleFreeMode's hook ran first: the weights are x
            assert train_mode(self.trainer.optimizers[0]) is False
            recompute_batchnorm(self, itertools.islice(self.train_dataloader(), 4))

    module = BNModule()
    initial = initial_state(module)
    fit(make_trainer, module)

    model = BNModule()
    model.load_state_dict(initial)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = schedulefree.AdamWScheduleFree(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    val_losses = []
    for _ in range(2):
        model.train()
        optimizer.train()
        for x, y in model.train_dataloader():
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        optimizer.eval()
        with torch.no_grad():  # the schedulefree README's batch-norm recipe
            for x, _ in itertools.islice(model.train_dataloader(), 4):
                model(x)
        model.eval()
        with torch.no_grad():
            val_losses += [nn.functional.mse_loss(model(x), y) for x, y in model.val_dataloader()]
    assert_same_weights(module, model)  # running statistics included
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, val_losses, strict=True))


def test_a_dotted_path_is_a_schedule_free_optimizer_too(make_trainer: Callable[..., L.Trainer]) -> None:
    module = SFModule("schedulefree.SGDScheduleFree")
    trainer = make_trainer(max_steps=2)
    trainer.fit(module)
    assert type(trainer.optimizers[0]) is schedulefree.SGDScheduleFree
    assert any(isinstance(c, ScheduleFreeMode) for c in trainer.callbacks)


def test_a_failed_fit_leaves_the_evaluation_weights(make_trainer: Callable[..., L.Trainer]) -> None:
    class Failing(SFModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(max_steps=10)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing())
    assert train_mode(trainer.optimizers[0]) is False
