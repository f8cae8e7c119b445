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
    save_every: int | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, Any, list[torch.Tensor], list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The schedulefree README's loop in plain torch: ``optimizer.train()`` before training, ``optimizer.eval()``
    before evaluating and saving. Returns the model, optimizer, validation losses at x, the same batches' losses at
    y (what a run without mode switching would report) and the weights saved: after each epoch's validation, or
    every ``save_every`` optimizer steps."""
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
            optimizer.train()
            loss = nn.functional.mse_loss(model(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad()
                if save_every is not None and optimizer.param_groups[0]["k"] % save_every == 0:
                    optimizer.eval()
                    saved.append({k: v.clone() for k, v in model.state_dict().items()})
        model.eval()
        with torch.no_grad():
            train_point_losses += [nn.functional.mse_loss(model(x), y) for x, y in val]
            optimizer.eval()
            val_losses += [nn.functional.mse_loss(model(x), y) for x, y in val]
        if save_every is None:
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


# ------------------------------------------------------------------ resume
def _checkpoints(folder: Path) -> list[ModelCheckpoint]:
    # one saving from a training step (train mode: the callback switches to eval for the save), one after validation
    return [
        ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=16, save_top_k=-1),
        ModelCheckpoint(dirpath=folder, filename="val-{epoch}", save_top_k=-1),
    ]


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.parametrize("ckpt_name", ["step=16.ckpt", "val-epoch=0.ckpt", "step=32.ckpt"])
def test_resume_from_a_checkpoint_continues_bit_for_bit(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path, ckpt_name: str
) -> None:
    straight = SFModule(warmup_steps=20)  # the warmup straddles the checkpoint
    initial = _initial(straight)
    trainer, straight = _fit(make_trainer, straight, max_epochs=3, callbacks=_checkpoints(tmp_path / "a"))

    resumed = SFModule(warmup_steps=20)
    resumed.load_state_dict(initial)
    again = make_trainer(max_epochs=3, callbacks=_checkpoints(tmp_path / "b"))
    again.fit(resumed, ckpt_path=tmp_path / "a" / ckpt_name)

    assert again.global_step == trainer.global_step == 48
    _assert_same_weights(resumed, straight)
    opt_a, opt_b = trainer.optimizers[0], again.optimizers[0]
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        for key in ("z", "exp_avg_sq"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key])
    assert [g["k"] for g in opt_a.param_groups] == [g["k"] for g in opt_b.param_groups] == [48, 48]
    assert all(torch.equal(a, b) for a, b in zip(straight.val_losses[-4:], resumed.val_losses[-4:], strict=True))
    # the later checkpoints of both runs hold the same evaluation weights
    for name in ("step=48.ckpt", "val-epoch=2.ckpt"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / name, weights_only=True)
        _assert_same_weights(a["state_dict"], b["state_dict"])


def test_checkpoints_saved_from_training_steps_hold_x_as_the_reference_saves_it(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    module = SFModule()
    initial = _initial(module)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=5, save_top_k=-1)
    _fit(make_trainer, module, callbacks=[checkpoint])
    ref, _, ref_val, _, ref_saved = _reference(initial, 2, save_every=5)
    _assert_same_weights(module, ref)
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, ref_val, strict=True))
    assert len(ref_saved) == 6
    for index, want in enumerate(ref_saved):
        saved = torch.load(tmp_path / f"step={5 * (index + 1)}.ckpt", weights_only=True)
        _assert_same_weights(saved["state_dict"], want)
        # the optimizer state says eval mode, so resuming recomputes y = x + (1 - beta1)(z - x) with train()
        assert [g["train_mode"] for g in saved["optimizer_states"][0]["param_groups"]] == [False, False]


# ------------------------------------------------------------------ validate / test / predict
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`:UserWarning")  # validate on a new Trainer
def test_validate_test_and_predict_after_fit_and_without_fit_use_x(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    module = SFModule()
    initial = _initial(module)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last-{epoch}")
    trainer, module = _fit(make_trainer, module, callbacks=[checkpoint])
    _, _, ref_val, _, _ = _reference(initial, 2)
    final = ref_val[-4:]

    module.val_losses.clear()
    trainer.validate(module, verbose=False)  # same Trainer, after fit
    trainer.test(module, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, final, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(module.test_losses, final, strict=True))
    x = next(iter(module.val_dataloader()))[0]
    (predicted,) = trainer.predict(module, DataLoader([x], batch_size=None))  # type: ignore[misc]
    assert torch.equal(predicted, module(x))
    assert train_mode(trainer.optimizers[0]) is False

    fresh = SFModule()  # without fit: a new Trainer restores the checkpoint's weights, which are x
    make_trainer().validate(fresh, ckpt_path=checkpoint.best_model_path, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.val_losses, final, strict=True))
    loaded = SFModule.load_from_checkpoint(checkpoint.best_model_path)
    make_trainer().test(loaded, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.test_losses, final, strict=True))


def test_sanity_check_validation_and_val_check_interval_switch_both_ways(
    make_trainer: Callable[..., L.Trainer],
) -> None:
    module = SFModule()
    initial = _initial(module)
    # sanity check before any step: eval() and train() on a fresh optimizer move nothing
    _fit(make_trainer, module, max_epochs=1, num_sanity_val_steps=2)
    ref, _, ref_val, _, _ = _reference(initial, 1)
    _assert_same_weights(module, ref)
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses[2:], ref_val, strict=True))


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
    from lit_optim import LearningRateLogger
    from tests.loggers import MemoryLogger

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

    from lit_optim import OptimizerMixin

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
class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_recompute_batchnorm_precise_equals_torch_update_bn() -> None:
    from lit_optim import recompute_batchnorm

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
    from lit_optim import recompute_batchnorm

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
    import itertools

    from lit_optim import recompute_batchnorm

    class BNModule(SFModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = BNNet().net

        def on_validation_start(self) -> None:  # ScheduleFreeMode's hook ran first: the weights are x
            assert train_mode(self.trainer.optimizers[0]) is False
            recompute_batchnorm(self, itertools.islice(self.train_dataloader(), 4))

    module = BNModule()
    initial = _initial(module)
    _fit(make_trainer, module)

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
    _assert_same_weights(module, model)  # running statistics included
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, val_losses, strict=True))
