"""LRRangeTest through a real Trainer: ratios kept, state restored bit for bit, suggestions, Lightning parity."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.tuner import Tuner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_optim import Cosine, LRRangeTest, configure_optimizers, find_lr, preview_schedule
from tests.models import TinyModule, random_regression_data
from tests.trainers import cpu_trainer

# three lr ratios: net.0.weight x0.1, net.0.bias x1, net.2.* x3
THREE_RATIOS = {"net.0.weight": {"lr_scale": 0.1}, "net.2.*": {"lr_scale": 3.0}}


class _Recording(TinyModule):
    """Records the lr of every group and the loss of every batch it trains on."""

    def __init__(self, n: int = 64, batch_size: int = 4, **config: Any) -> None:
        super().__init__(n=n, batch_size=batch_size)
        self.config = config
        self.seen: list[list[float]] = []
        self.batch_losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen.append([float(g["lr"]) for opt in self.trainer.optimizers for g in opt.param_groups])
        loss = super().training_step(batch, batch_idx)
        self.batch_losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, **self.config) if self.config else super().configure_optimizers()


def test_every_step_keeps_the_three_group_ratios(tmp_path: Path) -> None:
    model = _Recording(optimizer="sgd", lr=0.01, overrides=THREE_RATIOS)
    result = find_lr(cpu_trainer(tmp_path), model, min_lr=1e-4, max_lr=0.1, num_steps=15, early_stop_threshold=None)
    assert result is not None
    scales = [g["applied_lr_scale"] for g in model.configure_optimizers()["optimizer"].param_groups]
    assert sorted(set(scales)) == [0.1, 1.0, 3.0]
    assert result.base_lr == 0.01
    assert list(result.ratios.values()) == scales
    base = [1e-4 * (0.1 / 1e-4) ** (k / 14) for k in range(15)]  # the exponential sweep, written out
    assert list(result.lrs) == base
    assert model.seen == [[b * s for s in scales] for b in base]
    for row in model.seen:
        assert [lr / row[1] for lr in row] == pytest.approx([s / scales[1] for s in scales], rel=1e-15)


def test_plain_groups_keep_their_ratio_to_the_largest(tmp_path: Path) -> None:
    class Plain(_Recording):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([{"params": self.net[0].parameters(), "lr": 0.02},
                                    {"params": self.net[2].parameters()}], lr=0.1)

    model = Plain()
    result = find_lr(cpu_trainer(tmp_path), model, min_lr=1e-4, max_lr=1e-2, num_steps=12, rule="minimum")
    assert result is not None
    assert result.base_lr == 0.1
    assert result.ratios == {"group_0": 0.02 / 0.1, "group_1": 1.0}
    assert model.seen == [[lr * (0.02 / 0.1), lr] for lr in result.lrs]  # lr * its ratio


def test_two_optimizers_in_manual_optimization_share_one_sweep(tmp_path: Path) -> None:
    class TwoOptimizers(_Recording):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.seen.append([float(g["lr"]) for opt in self.trainer.optimizers for g in opt.param_groups])
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            for opt in self.optimizers():  # type: ignore[union-attr]
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in self.optimizers():  # type: ignore[union-attr]
                opt.step()
            return loss

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.05), torch.optim.Adam(self.net[2].parameters(),
                                                                                            lr=0.005)]

    model = TwoOptimizers()
    result = find_lr(cpu_trainer(tmp_path), model, min_lr=1e-5, max_lr=1e-2, num_steps=10, skip_begin=0)
    assert result is not None
    assert len(result.lrs) == 10
    assert result.ratios == {"optimizer_0/group_0": 1.0, "optimizer_1/group_0": 0.005 / 0.05}
    assert model.seen == [[lr, lr * (0.005 / 0.05)] for lr in result.lrs]


def test_accumulation_takes_one_sweep_step_per_optimizer_step(tmp_path: Path) -> None:
    model = _Recording()
    result = find_lr(cpu_trainer(tmp_path, accumulate_grad_batches=2), model, min_lr=1e-4, max_lr=1e-2,
                     num_steps=12, early_stop_threshold=None)
    assert result is not None
    assert len(result.lrs) == 12
    assert len(model.seen) == 24
    assert [row[0] for row in model.seen] == [lr for lr in result.lrs for _ in range(2)]  # constant in a window
    pairs = zip(model.batch_losses[::2], model.batch_losses[1::2], strict=True)
    assert list(result.raw_losses) == pytest.approx([(a + b) / 2 for a, b in pairs], rel=1e-12)


class _Prime(Callback):
    """Before the test: give the optimizer state, the schedule progress and the grads values; keep copies."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for p in pl_module.parameters():
            p.grad = torch.randn_like(p)
        trainer.optimizers[0].step()
        trainer.lr_scheduler_configs[0].scheduler.step()
        self.before = _state(trainer, pl_module)


class _Probe(Callback):
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after = _state(trainer, pl_module)


def _state(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    return copy.deepcopy({
        "weights": module.state_dict(),
        "grads": [p.grad for p in module.parameters()],
        "optimizer": trainer.optimizers[0].state_dict(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
        "rng": torch.get_rng_state(),
        "step": trainer.global_step,
    })


def _assert_bit_equal(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_bit_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_bit_equal(x, y)
    else:
        assert a == b


def test_weights_optimizer_and_schedule_are_bit_identical_after_the_test(tmp_path: Path) -> None:
    prime, probe = _Prime(), _Probe()
    model = _Recording(optimizer="adamw", lr=1e-3, overrides=THREE_RATIOS, scheduler=Cosine(warmup=3))
    trainer = cpu_trainer(tmp_path, max_steps=4, callbacks=[prime, LRRangeTest(num_steps=20, apply=False), probe])
    trainer.fit(model)
    assert len(model.seen) == 24  # the sweep, then the real steps
    assert prime.before["optimizer"]["state"]  # Adam moments exist, so their restore is checked
    _assert_bit_equal(prime.before, probe.after)


class _Shuffled(_Recording):
    def train_dataloader(self) -> DataLoader:  # the sampler draws from torch's RNG: its restore matters
        return DataLoader(random_regression_data(self.n, self.features), batch_size=self.batch_size, shuffle=True)


# with a schedule, Lightning sets up the train loader before the test (to count the run's steps); without, after
@pytest.mark.parametrize("scheduler", [Cosine(warmup=2), None])
def test_a_run_after_the_test_equals_a_run_without_it(scheduler: Cosine | None, tmp_path: Path) -> None:
    def run(callbacks: list[Callback]) -> tuple[_Shuffled, L.Trainer]:
        torch.manual_seed(7)
        model = _Shuffled(optimizer="adamw", lr=1e-3, overrides=THREE_RATIOS, scheduler=scheduler)
        trainer = cpu_trainer(tmp_path, max_steps=6, callbacks=callbacks)
        trainer.fit(model)
        return model, trainer

    plain, plain_trainer = run([])
    tested, tested_trainer = run([LRRangeTest(num_steps=15, apply=False)])
    assert tested.seen[15:] == plain.seen
    assert tested.batch_losses[15:] == plain.batch_losses
    _assert_bit_equal(tested.state_dict(), plain.state_dict())
    _assert_bit_equal(tested_trainer.optimizers[0].state_dict(), plain_trainer.optimizers[0].state_dict())


def test_apply_sets_the_suggestion_as_the_schedules_base(tmp_path: Path) -> None:
    test = LRRangeTest(min_lr=1e-5, max_lr=0.1, num_steps=20)
    model = _Recording(optimizer="sgd", lr=0.5, overrides=THREE_RATIOS, scheduler=Cosine(warmup=2))
    trainer = cpu_trainer(tmp_path, max_steps=4, callbacks=[test])
    trainer.fit(model)
    result = test.result
    assert result is not None
    assert result.suggestion is not None
    assert result.suggestion != 0.5
    expected = preview_schedule(Cosine(warmup=2), 4, base_lrs=[result.suggestion * r for r in result.ratios.values()])
    assert [tuple(row) for row in model.seen[20:]] == list(expected.lrs)
    assert test.state_dict() == {"base_lr": 0.5, "suggestion": result.suggestion, "steps": 20, "applied": True}


def test_apply_refuses_a_scheduler_it_cannot_rescale_and_apply_false_restores_it(tmp_path: Path) -> None:
    class Stepped(_Recording):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    with pytest.raises(ValueError, match=r"not under \['StepLR'\].*HINT: use `apply=False`"):
        cpu_trainer(tmp_path, max_steps=2, callbacks=[LRRangeTest(num_steps=20)]).fit(Stepped())
    model = Stepped()
    cpu_trainer(tmp_path, max_steps=2, callbacks=[LRRangeTest(num_steps=20, apply=False)]).fit(model)
    assert [row[0] for row in model.seen[20:]] == [0.1, 0.05]  # StepLR untouched by the sweep


class _Regression(L.LightningModule):
    """Least squares by full-batch gradient descent: diverges exactly above lr = 2 / lambda_max(Hessian)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0])
        self.y = self.x @ torch.randn(4, 1, generator=g)
        self.lin = nn.Linear(4, 1, bias=False)
        nn.init.zeros_(self.lin.weight)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return nn.functional.mse_loss(self.lin(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=32)

    def divergence_lr(self) -> float:
        hessian = 2 / len(self.x) * self.x.double().T @ self.x.double()
        return 2 / float(torch.linalg.eigvalsh(hessian).max())


@pytest.mark.parametrize("rule", ["valley", "minimum"])
def test_convex_regression_suggests_below_the_computed_divergence_point(rule: str, tmp_path: Path) -> None:
    model = _Regression()
    diverge = model.divergence_lr()
    result = find_lr(cpu_trainer(tmp_path), model, min_lr=1e-4, max_lr=1.0, num_steps=80, rule=rule)
    assert result is not None
    assert result.suggestion is not None
    assert diverge / 100 < result.suggestion < diverge  # the classic advice: below divergence, within 2 decades
    assert result.stopped_early
    assert diverge < result.lrs[-1] < 100 * diverge
    assert max(result.losses[: result.suggestion_index]) > result.losses[result.suggestion_index]  # on the way down


@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_single_group_equals_lightnings_tuner(mode: str, tmp_path: Path) -> None:
    class Single(TinyModule):
        def __init__(self) -> None:
            super().__init__(n=400)

    torch.manual_seed(0)
    reference = Tuner(cpu_trainer(tmp_path / "a", max_epochs=5)).lr_find(
        Single(), min_lr=1e-6, max_lr=1.0, num_training=60, mode=mode, update_attr=False
    )
    assert reference is not None
    torch.manual_seed(0)
    ours = find_lr(cpu_trainer(tmp_path / "b", max_epochs=5), Single(), min_lr=1e-6, max_lr=1.0, num_steps=60,
                   mode=mode, rule="steepest", match_lightning=True)
    assert ours is not None
    assert ours.stopped_early
    assert list(ours.lrs) == reference.results["lr"]
    assert list(ours.losses) == reference.results["loss"]
    assert ours.suggestion == reference.suggestion()
    assert ours.suggestion_index == reference._optimal_idx


def test_the_png_marks_the_suggestion(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    test = LRRangeTest(min_lr=1e-4, max_lr=0.1, num_steps=15, apply=False, plot_path=tmp_path / "lr.png")
    cpu_trainer(tmp_path, max_steps=1, callbacks=[test]).fit(_Recording())
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"min_lr": 1.0, "max_lr": 1e-6}, ValueError, r"`max_lr` \(1e-06\) must be > `min_lr` \(1.0\). HINT: swap them"),
    ({"min_lr": 0.1, "max_lr": 0.1}, ValueError, r"`max_lr` \(0.1\) must be > `min_lr` \(0.1\)\.$"),
    ({"min_lr": 0.0}, ValueError, r"`min_lr` must be > 0 and finite, got 0.0"),
    ({"num_steps": 12, "rule": "steepest"}, ValueError, r"`num_steps`=12 is too few.*must be >= 13. HINT"),
    ({"num_steps": 1, "skip_begin": 0, "skip_end": 0}, ValueError, r"`num_steps`=1 is too few.*must be >= 2"),
    ({"num_steps": 20.5}, TypeError, r"`num_steps` must be an int >= 1, got 20.5"),
    ({"rule": "valey"}, ValueError, r"`rule` must be one of \['minimum', 'steepest', 'valley'\].*'valley'\?"),
    ({"mode": "exp"}, ValueError, r"`mode` must be one of \['exponential', 'linear'\], got 'exp'"),
    ({"beta": 1.0}, ValueError, r"`beta` must be a number in \[0, 1\), got 1.0"),
    ({"skip_begin": -1}, ValueError, r"`skip_begin` must be an int >= 0, got -1"),
    ({"early_stop_threshold": 0}, ValueError, r"`early_stop_threshold` must be > 0"),
    ({"apply": "yes"}, TypeError, r"`apply` and `match_lightning` must be bools"),
])
def test_bad_settings_raise_clearly(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LRRangeTest(**kwargs)


@pytest.mark.filterwarnings("ignore:.*`training_step` returned `None`.*")
def test_bad_models_raise_clearly(tmp_path: Path) -> None:
    class Zero(_Recording):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class NoLoss(_Recording):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None

    with pytest.raises(ValueError, match=r"Every param group has lr 0 \(1 groups\).*HINT"):
        find_lr(cpu_trainer(tmp_path), Zero(), num_steps=20)
    with pytest.raises(ValueError, match=r"saw 90 batches but only 0 optimizer steps.*return None"):
        find_lr(cpu_trainer(tmp_path), NoLoss(), num_steps=20)
    with pytest.raises(ValueError, match="find_lr does not take `apply`"):
        find_lr(cpu_trainer(tmp_path), _Recording(), apply=True)


@pytest.mark.filterwarnings("ignore:.*configure_optimizers` returned `None`.*")
def test_no_optimizer_raises_clearly(tmp_path: Path) -> None:
    class NoOptimizer(_Recording):
        def configure_optimizers(self) -> Any:
            return None

    with pytest.raises(ValueError, match="found no optimizer"):
        find_lr(cpu_trainer(tmp_path), NoOptimizer(), num_steps=20)


def test_skipped_with_a_warning_under_fast_dev_run_and_on_resume(
    tmp_path: Path, make_trainer: Callable[..., L.Trainer]
) -> None:
    test = LRRangeTest(num_steps=20)
    with pytest.warns(UserWarning, match="skipped: `fast_dev_run` is on"):
        make_trainer(fast_dev_run=True, callbacks=[test]).fit(_Recording())
    assert test.result is None
    trainer = make_trainer(max_steps=2)
    trainer.fit(_Recording())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.warns(UserWarning, match="skipped: resuming from .*the checkpoint's lrs are kept"):
        make_trainer(max_steps=3, callbacks=[test]).fit(_Recording(), ckpt_path=tmp_path / "a.ckpt")
    assert test.result is None


def test_the_sweep_spans_epochs_under_bf16_and_the_run_then_starts_afresh(tmp_path: Path) -> None:
    model = _Recording(optimizer="adamw", lr=1e-3, scheduler=Cosine(warmup=1))
    test = LRRangeTest(num_steps=10, apply=False, rule="steepest", skip_begin=0, skip_end=0)
    trainer = cpu_trainer(tmp_path, limit_train_batches=3, max_epochs=1, precision="bf16-mixed", callbacks=[test])
    trainer.fit(model)
    assert test.result is not None
    assert len(test.result.lrs) == 10
    assert len(model.seen) == 13
    assert (trainer.current_epoch, trainer.global_step) == (1, 3)  # the real run: one epoch of 3 steps


def test_no_suggestion_warns_and_leaves_the_lr(tmp_path: Path) -> None:
    class Exploding(_Recording):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            return loss * 0 + 10.0 ** len(self.seen)  # x10 per step: diverged at the second step

    model = Exploding(optimizer="sgd", lr=0.1)
    test = LRRangeTest(num_steps=20)
    with pytest.warns(UserWarning, match=r"no suggestion \(too few finite points\); the base lr stays 0.1"):
        cpu_trainer(tmp_path, max_steps=1, callbacks=[test]).fit(model)
    assert test.result is not None
    assert test.result.stopped_early
    assert len(test.result.lrs) == 2
    assert model.seen[-1] == [0.1, 0.1]
    assert test.state_dict()["applied"] is False


def test_plot_path_without_matplotlib_fails_before_any_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs matplotlib: `pip install 'lit_optim\[plot\]'`"):
        LRRangeTest(plot_path="lr.png")
