"""Where schedule-free optimizers, the LR range test, batch-size scaling and param schedules meet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_optim import LRRangeTest, configure_optimizers
from tests.models import TinyModule
from tests.test_lr_range_test import _assert_bit_equal
from tests.trainers import cpu_trainer


class _SF(TinyModule):
    """A schedule-free TinyModule recording the lr each optimizer step really used (``scheduled_lr``)."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = config
        self.used: list[list[float]] = []

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.used.append([float(g["scheduled_lr"]) for g in self.trainer.optimizers[0].param_groups])

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "adamw_schedulefree", **self.config)


class _Before(Callback):
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = _copy(trainer, pl_module)


def _copy(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    import copy

    return copy.deepcopy({"weights": module.state_dict(), "optimizer": trainer.optimizers[0].state_dict()})


def test_lr_range_test_sweeps_a_schedule_free_optimizer_in_train_mode_and_restores_it(tmp_path: Path) -> None:
    pytest.importorskip("schedulefree")

    def run(callbacks: list[Callback]) -> tuple[_SF, L.Trainer]:
        torch.manual_seed(3)
        model = _SF(lr=1e-3, overrides={"net.2.*": {"lr_scale": 3.0}}, warmup_steps=4)
        trainer = cpu_trainer(tmp_path, max_steps=5, callbacks=callbacks)
        trainer.fit(model)
        return model, trainer

    plain, plain_trainer = run([])
    before, after = _Before(), _Before()
    test = LRRangeTest(min_lr=1e-4, max_lr=1e-2, num_steps=8, early_stop_threshold=None, apply=False)
    tested, tested_trainer = run([before, test, after])
    assert test.result is not None
    assert len(test.result.lrs) == 8
    scales = [g["applied_lr_scale"] for g in tested_trainer.optimizers[0].param_groups]
    # the sweep's lr is the lr each step used: the optimizer's own warmup is suspended during the test
    assert tested.used[:8] == [[lr * s for s in scales] for lr in test.result.lrs]
    _assert_bit_equal(before.state, after.state)  # eval mode, no `z` yet: as the optimizer was built
    assert tested.used[8:] == plain.used  # then the run is the run without the test, warmup included
    _assert_bit_equal(_copy(tested_trainer, tested), _copy(plain_trainer, plain))


def test_a_schedule_free_point_depends_on_beta1_so_a_betas0_schedule_is_refused() -> None:
    schedulefree = pytest.importorskip("schedulefree")
    from lit_optim import ParamSchedule, ScheduleLR
    from lit_optim.schedules import OneCycle

    # why: eval() recovers x from y and z with the *current* betas[0]; change it and x is another point
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4))
    opt = schedulefree.AdamWScheduleFree([p], lr=0.1)
    opt.train()
    for _ in range(3):
        p.grad = torch.randn(4)
        opt.step()
    y = p.detach().clone()
    opt.eval()
    x = p.detach().clone()
    opt.train()
    p.data.copy_(y)
    opt.param_groups[0]["betas"] = (0.5, 0.999)
    opt.eval()
    assert not torch.equal(p.detach(), x)

    model = torch.nn.Linear(2, 1)
    built = configure_optimizers(model, "adamw_schedulefree", lr=0.1)["optimizer"]
    with pytest.raises(ValueError, match=r"AdamWScheduleFree is schedule-free.*'betas\[0\]'.*weight_decay"):
        ScheduleLR(built, "constant", 10, params={"betas[0]": ParamSchedule(start=0.9, end=0.95)})
    with pytest.raises(ValueError, match=r"AdamWScheduleFree is schedule-free.*cycles momentum.*cycle_momentum=False"):
        ScheduleLR(built, OneCycle(cycle_momentum=True), 10)
    sgd = configure_optimizers(model, "sgd_schedulefree", lr=0.1)["optimizer"]
    with pytest.raises(ValueError, match=r"SGDScheduleFree is schedule-free.*'momentum'"):
        ScheduleLR(sgd, "constant", 10, params={"momentum": ParamSchedule(start=0.9, end=0.95)})
    # weight decay (and betas[1]) do not enter the switch: allowed
    ScheduleLR(
        built,
        "constant",
        10,
        params={"weight_decay": ParamSchedule(start=0.0, end=0.1), "betas[1]": ParamSchedule(start=0.99, end=0.999)},
    )


class _Everything(TinyModule):
    """Schedule-free AdamW, batch-size scaling, a weight-decay schedule and three named groups."""

    def configure_optimizers(self) -> Any:
        from lit_optim import ParamSchedule

        return configure_optimizers(
            self,
            "adamw_schedulefree",
            lr=1e-3,
            overrides={"net.2.*": {"lr_scale": 3.0}},
            warmup_steps=2,
            lr_scaling="sqrt",
            reference_batch_size=8,
            param_schedules={"weight_decay": ParamSchedule(start=0.01, end=0.1, shape="linear")},
        )


def test_no_logged_key_is_a_path_prefix_of_another(tmp_path: Path) -> None:
    """A key that is a folder of another (``a/b`` and ``a/b/c``) breaks file-backed loggers (MLflow's file store
    writes each key to a file: ``NotADirectoryError``)."""
    pytest.importorskip("schedulefree")
    from lit_optim import GradientClipping, LearningRateLogger
    from tests.loggers import MemoryLogger

    logger = MemoryLogger()
    trainer = cpu_trainer(
        tmp_path,
        max_steps=4,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[GradientClipping(1.0), LearningRateLogger()],
    )
    trainer.fit(_Everything())
    keys = sorted({key for _, metrics in logger.logged for key in metrics})
    assert "grad_clip/norm" in keys
    assert any(k.startswith("effective_lr/") for k in keys)
    assert any(k.startswith("lr_scaling/") for k in keys)
    clashes = [(a, b) for a in keys for b in keys if b.startswith(a + "/")]
    assert clashes == []


class _Scheduled(TinyModule):
    def __init__(self, param_schedules: Any) -> None:
        super().__init__()
        self.param_schedules = param_schedules

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, "adamw", param_schedules=self.param_schedules)


@pytest.mark.parametrize(
    ("param_schedules", "error", "match"),
    [
        (["weight_decay"], TypeError, r"`param_schedules` must map a field name to a ParamSchedule.*\['weight_dec"),
        (
            {"weight_decay": {"ed": 0.1}},
            ValueError,
            r"Unknown parameter of ParamSchedule 'ed'. Valid: \['end', 'exclude', .*Did you mean 'end'\? "
            r"\(in the 'weight_",
        ),
        ({"weight_decay": {"end": 0.1, "shap": "linear"}}, ValueError, r"ParamSchedule 'shap'.*Did you mean 'shape'\?"),
    ],
)
def test_bad_param_schedules_as_a_yaml_would_write_them(
    param_schedules: Any, error: type[Exception], match: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=match):
        cpu_trainer(tmp_path, max_steps=1).fit(_Scheduled(param_schedules))


@pytest.mark.parametrize("threshold", [0.5, 1.0, 1])
def test_an_early_stop_threshold_that_stops_at_once_is_refused(threshold: float) -> None:
    # the smoothed loss is compared with `threshold` x its best: at <= 1 the test stops at its second point
    with pytest.raises(ValueError, match=rf"`early_stop_threshold` must be > 1.*got {threshold!r}.*HINT: 4.0"):
        LRRangeTest(early_stop_threshold=threshold)


class _WeightDecayScheduled(TinyModule):
    """AdamW, a warmup-cosine lr, DINO's weight-decay cosine and batch-size scaling; records every step's values."""

    def __init__(self) -> None:
        super().__init__(n=32, batch_size=4)
        self.seen: list[list[tuple[float, float]]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen.append([(g["lr"], g["weight_decay"]) for g in self.trainer.optimizers[0].param_groups])
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        from lit_optim import Cosine, ParamSchedule

        return configure_optimizers(
            self,
            "adamw",
            lr=1e-3,
            scheduler=Cosine(warmup=2),
            lr_scaling="sqrt",
            reference_batch_size=16,
            overrides={"net.2.*": {"lr_scale": 3.0}},
            param_schedules={"weight_decay": ParamSchedule(start=0.04, end=0.4, shape="cosine")},
        )


def test_lr_range_test_with_param_schedules_and_scaling_leaves_the_run_unchanged(tmp_path: Path) -> None:
    def run(callbacks: list[Callback]) -> tuple[_WeightDecayScheduled, L.Trainer]:
        torch.manual_seed(5)
        model = _WeightDecayScheduled()
        trainer = cpu_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2, callbacks=callbacks)
        trainer.fit(model)
        return model, trainer

    plain, plain_trainer = run([])
    test = LRRangeTest(min_lr=1e-5, max_lr=1e-1, num_steps=6, early_stop_threshold=None, apply=False)
    tested, tested_trainer = run([test])
    assert test.result is not None
    assert test.result.base_lr == pytest.approx(1e-3 * (4 * 2 / 16) ** 0.5, rel=1e-12)  # the scaled lr
    sweep = [{wd for _, wd in row} for row in tested.seen[:12]]
    assert all(s == sweep[0] for s in sweep)  # weight decay is not stepped during the sweep
    assert tested.seen[12:] == plain.seen  # lr and weight decay at every batch after it
    assert len({wd for row in plain.seen for _, wd in row}) > 3  # the weight decay did move
    _assert_bit_equal(tested.state_dict(), plain.state_dict())
    _assert_bit_equal(
        tested_trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        plain_trainer.lr_scheduler_configs[0].scheduler.state_dict(),
    )


@pytest.mark.parametrize(
    ("name", "settings", "match"),
    [
        ("adamw_schedulefree", {"betas": (0.0, 0.9)}, r"`betas\[0\]` of AdamWScheduleFree must be in \(0, 1\], got 0"),
        ("radam_schedulefree", {"betas": (-0.1, 0.999)}, r"`betas\[0\]` of RAdamScheduleFree .* got -0\.1"),
        ("adamw_schedulefree", {"warmup_steps": -3}, r"`warmup_steps` must be an int >= 0, got -3"),
        ("sgd_schedulefree", {"warmup_steps": 2.5}, r"`warmup_steps` must be an int >= 0, got 2\.5"),
    ],
)
def test_schedule_free_settings_that_break_eval_are_refused_when_built(
    name: str, settings: dict[str, Any], match: str
) -> None:
    # betas[0] = 0 made the first validation divide by zero (eval() recovers x with 1 - 1/beta1); a negative
    # warmup was silently no warmup
    pytest.importorskip("schedulefree")
    with pytest.raises(ValueError, match=match):
        configure_optimizers(torch.nn.Linear(2, 1), name, **settings)


class _EpsScheduled(TinyModule):
    def configure_optimizers(self) -> Any:
        from lit_optim import ParamSchedule

        return configure_optimizers(
            self,
            "adamw",
            param_schedules={
                "eps": ParamSchedule(start=1e-8, end=1e-6, shape="linear"),
                "betas[1]": ParamSchedule(start=0.99, end=0.999, shape="linear"),
            },
        )


def test_learning_rate_logger_logs_every_scheduled_field(tmp_path: Path) -> None:
    """Issue 17: the logger logs every scheduled hyper-parameter per named group, not only its built-in four."""
    from lit_optim import LearningRateLogger
    from tests.loggers import MemoryLogger

    logger = MemoryLogger()
    trainer = cpu_trainer(tmp_path, max_steps=4, logger=logger, log_every_n_steps=1, callbacks=[LearningRateLogger()])
    trainer.fit(_EpsScheduled())
    for group in ("decay", "no_decay"):
        # linear from start to end over the 4 steps: v(s) = end + (start - end) * (1 - s / 4)
        eps = [1e-6 + (1e-8 - 1e-6) * (1 - s / 4) for s in range(4)]
        beta2 = [0.999 + (0.99 - 0.999) * (1 - s / 4) for s in range(4)]
        assert logger.series(f"eps/{group}") == pytest.approx(eps, rel=1e-12)
        assert logger.series(f"beta2/{group}") == pytest.approx(beta2, rel=1e-12)
    assert not any(k.startswith("betas[1]/") for _, m in logger.logged for k in m)  # logged once, as beta2


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_schedule_free_with_a_weight_decay_schedule_resumes_bit_for_bit(tmp_path: Path) -> None:
    pytest.importorskip("schedulefree")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_optim import ParamSchedule
    from tests.schedule_free_reference import SFModule, assert_same_weights, initial_state

    def module() -> SFModule:
        return SFModule(warmup_steps=6, param_schedules={"weight_decay": ParamSchedule(start=0.0, end=0.1)})

    def trainer(folder: str) -> L.Trainer:
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, filename="{step}", every_n_train_steps=8, save_top_k=-1)
        return cpu_trainer(tmp_path, max_epochs=2, val_check_interval=5, callbacks=[checkpoint])

    straight = module()
    initial = initial_state(straight)
    first = trainer("a")
    first.fit(straight)
    resumed = module()
    resumed.load_state_dict(initial)
    again = trainer("b")
    # a step checkpoint (train mode at the save), with validations every 5 batches: 16 is not one of them. (A
    # mid-epoch step checkpoint resumes inexactly with any optimizer: Lightning restarts a plain DataLoader.)
    again.fit(resumed, ckpt_path=tmp_path / "a" / "step=16.ckpt")
    assert again.global_step == first.global_step == 32
    assert_same_weights(resumed, straight)
    wds = [[g["weight_decay"] for g in t.optimizers[0].param_groups] for t in (first, again)]
    assert wds[0] == wds[1]
    assert wds[0][0] > 0.09  # the schedule ran: near its end value on the decayed group
    assert all(torch.equal(a, b) for a, b in zip(straight.val_losses[-4:], resumed.val_losses[-4:], strict=True))
