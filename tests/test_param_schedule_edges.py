"""ParamSchedule edge cases: groups added later and resumed, tensor values, changed schedules, absolute shapes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_optim import (
    Cosine,
    Linear,
    OptimizerMixin,
    ParamSchedule,
    Schedule,
    ScheduleLR,
    ScheduleName,
    TrainingLength,
    Warmup,
)
from tests.models import TinyModule
from tests.test_plateau import Unfreeze  # BaseFinetuning's recipe: net[0] added as a new group at epoch 1

STEPS = 8  # 4 batches per epoch, 2 epochs


def cosine(step: int, start: float, end: float) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / STEPS))


class Finetuned(TinyModule):
    """SGD over the unfrozen layers, an absolute weight-decay cosine; records the groups at every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[tuple[float, float]]] = []

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, weight_decay=0.05)
        sched = ScheduleLR(opt, Cosine(), STEPS, params={"weight_decay": ParamSchedule(start=0.04, end=0.4)})
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.seen.append([(g["lr"], g["weight_decay"]) for g in optimizer.param_groups])


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`:UserWarning")  # no checkpointing on resume
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # mid-epoch: values compared, not weights
def test_a_group_added_later_stays_on_the_schedule_after_resume(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    straight = Finetuned()
    every_step = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer_args = {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 0}
    make_trainer(callbacks=[Unfreeze(), every_step], **trainer_args).fit(straight)
    assert [len(groups) for groups in straight.seen] == [1] * 4 + [2] * 4
    for step in range(5, STEPS):  # the added group follows the absolute curve from the step after it joined
        assert [wd for _, wd in straight.seen[step]] == [pytest.approx(cosine(step, 0.04, 0.4), rel=1e-12)] * 2

    resumed = Finetuned()
    make_trainer(callbacks=[Unfreeze()], **trainer_args).fit(resumed, ckpt_path=tmp_path / "epoch=1-step=6.ckpt")
    assert resumed.seen == straight.seen[6:]


def _adam_with_tensors() -> torch.optim.Optimizer:
    param = torch.nn.Parameter(torch.zeros(2))
    betas = (torch.tensor(0.9), torch.tensor(0.999))
    return torch.optim.Adam([param], lr=torch.tensor(0.01), betas=betas, eps=torch.tensor(1e-8), weight_decay=0.1)


def test_tensor_valued_hyper_parameters_are_filled_in_place() -> None:
    opt = _adam_with_tensors()
    group = opt.param_groups[0]
    beta1, eps = group["betas"][0], group["eps"]
    params = {"betas[0]": ParamSchedule(start=0.9, end=0.99, shape="linear"), "eps": ParamSchedule(end=1e-6)}
    sched = ScheduleLR(opt, "constant", 4, params=params)
    for step in range(4):
        # the same tensors (a compiled or capturable step keeps reading them), holding the scheduled values
        assert group["betas"][0] is beta1
        assert group["eps"] is eps
        assert isinstance(group["betas"][1], torch.Tensor)
        assert beta1.item() == pytest.approx(0.9 + 0.09 * step / 4, rel=1e-6)
        param = group["params"][0]
        param.grad = torch.ones_like(param)
        opt.step()
        sched.step()
    opt2 = _adam_with_tensors()
    ScheduleLR(opt2, "constant", 4, params=params).load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["betas"][0].item() == beta1.item()
    assert isinstance(opt2.param_groups[0]["eps"], torch.Tensor)


def _sgd() -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "name": "decay", "weight_decay": 0.1},
        {"params": [torch.nn.Parameter(torch.zeros(1))], "name": "no_decay", "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


WD = {"weight_decay": ParamSchedule(start=0.04, end=0.4)}


@pytest.mark.parametrize(
    ("saved", "now", "match"),
    [
        (WD, {"weight_decay": ParamSchedule(start=0.04, end=0.8)}, r"different 'weight_decay' schedule.*0.4.*end=0.8"),
        (WD, {"weight_decay": ParamSchedule(start=0.04, end=0.4, shape="linear")}, r"'weight_decay'.*Linear"),
        (WD, None, r"saved 'weight_decay' schedule.*not scheduled now"),
        (None, WD, r"'weight_decay' schedule.*not in the checkpoint.*own value"),
        (WD, {**WD, "momentum": ParamSchedule(end=0.99)}, r"'momentum' schedule.*not in the checkpoint"),
    ],
)
def test_resume_with_a_changed_param_schedule_warns(saved: Any, now: Any, match: str) -> None:
    opt = _sgd()
    sched = ScheduleLR(opt, "cosine", 10, params=saved)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    resumed = ScheduleLR(_sgd(), "cosine", 10, params=now)
    with pytest.warns(UserWarning, match=match):
        resumed.load_state_dict(state)


def test_resume_with_the_same_param_schedule_does_not_warn() -> None:
    opt = _sgd()
    sched = ScheduleLR(opt, Cosine(warmup="20%"), 10, params=WD)
    opt.step()
    sched.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScheduleLR(_sgd(), Cosine(warmup="20%"), 10, params=WD).load_state_dict(sched.state_dict())


@pytest.mark.parametrize(
    "shape",
    [Cosine(min_lr_abs=0.01), Linear(warmup=Warmup(duration=2, start_lr=0.5)), {"name": "cosine", "min_lr_abs": 0.1}],
)
def test_a_shape_with_an_absolute_lr_is_refused(shape: Any) -> None:
    with pytest.raises(ValueError, match=r"absolute lr.*(min_lr_abs|start_lr).*ParamSchedule.*`start`/`end`"):
        ParamSchedule(start=0.04, end=0.4, shape=shape)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"weight_decay": {"ned": 0.4}}, r"Unknown parameter of ParamSchedule 'ned'.*Did you mean 'end'"),
        (
            {"weight_decay": {"class_path": "lit_optim.ParamSchedule", "init_args": {"end": 0.4, "relatve": True}}},
            r"Unknown parameter of ParamSchedule 'relatve'.*Did you mean 'relative'",
        ),
        (
            {"weight_decay": {"end": 0.4, "shape": {"class_path": "lit_optim.Cosine", "init_args": {"min_lr_ab": 1}}}},
            r"Unknown parameter of Cosine 'min_lr_ab'.*Did you mean 'min_lr_abs'",
        ),
    ],
)
def test_a_misspelled_key_in_a_config_mapping_names_the_close_match(config: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScheduleLR(_sgd(), "constant", 4, params=config)


def test_params_take_the_class_path_form() -> None:
    config = {"class_path": "lit_optim.ParamSchedule", "init_args": {"end": 0.4, "start": 0.04, "shape": "linear"}}
    opt = _sgd()
    ScheduleLR(opt, "constant", 4, params={"weight_decay": config})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.04, 0.0]


@pytest.mark.parametrize("shape", ["cosine", "linear", Cosine(warmup=2)])
def test_the_curve_starts_and_ends_exactly_at_the_values_given(shape: Any) -> None:
    spec = ParamSchedule(start=0.04, end=0.4, shape=shape)
    steps = [spec.value(s, 10, own=0.1) for s in range(11)]
    assert steps[2 if isinstance(shape, Cosine) else 0] == 0.04  # not 0.03999999999999998
    assert steps[10] == 0.4


def _grouped(**param_schedules: Any) -> torch.optim.Optimizer:
    from lit_optim import configure_optimizers

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    overrides = {"1.*": {"weight_decay": 0.2, "name": "head"}}
    config = configure_optimizers(net, "sgd", weight_decay=0.1, overrides=overrides, param_schedules=param_schedules)
    return config["optimizer"]


def test_an_absolute_start_over_groups_with_their_own_weight_decays_is_refused() -> None:
    # the overrides gave the head its own weight decay: one absolute curve for every group would silently drop it
    with pytest.raises(
        ValueError, match=r"'weight_decay'.*absolute.*start=0.04.*'decay': 0.1.*'head/decay': 0.2.*relative"
    ):
        ScheduleLR(_grouped(), "constant", 10, params=WD)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            ParamSchedule(start=1.0, end=4.0, relative=True),
            {"decay": 0.1, "head/decay": 0.2, "no_decay": 0.0, "head/no_decay": 0.0},
        ),
        (
            ParamSchedule(end=0.4),
            {"decay": 0.1, "head/decay": 0.2, "no_decay": 0.0, "head/no_decay": 0.0},
        ),  # from each group's own value
        (
            ParamSchedule(start=0.04, end=0.4, groups=["decay"]),
            {"decay": 0.04, "head/decay": 0.2, "no_decay": 0.0, "head/no_decay": 0.0},
        ),
        (
            ParamSchedule(start=0.04, end=0.4, scale={"head*": 2.0}),
            {"decay": 0.04, "head/decay": 0.08, "no_decay": 0.0, "head/no_decay": 0.0},
        ),
    ],
)
def test_per_group_weight_decays_are_kept_or_chosen_explicitly(spec: ParamSchedule, expected: dict[str, float]) -> None:
    opt = _grouped()
    ScheduleLR(opt, "constant", 10, params={"weight_decay": spec})
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == pytest.approx(expected, rel=1e-12)


class ScheduledEps(TinyModule):
    """Adam with an ``eps`` schedule and one on a custom group key the optimizer carries along."""

    def configure_optimizers(self) -> Any:
        weights = [p for p in self.parameters() if p.ndim > 1]
        biases = [p for p in self.parameters() if p.ndim == 1]
        extra = {"ema": 1.0, "decays": (1.0, 1.0)}
        groups = [{"params": weights, "name": "decay", **extra}, {"params": biases, "name": "no_decay", **extra}]
        opt = torch.optim.Adam(groups, lr=0.01)
        params = {
            "eps": ParamSchedule(start=1e-8, end=1e-6, shape="linear"),
            "ema": ParamSchedule(end=0.5),
            "decays[1]": ParamSchedule(end=0.5),
        }
        sched = ScheduleLR(opt, "constant", STEPS, params=params)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_learning_rate_logger_logs_scheduled_fields_it_does_not_already_log(
    make_trainer: Callable[..., L.Trainer],
) -> None:
    from lit_optim import LearningRateLogger
    from tests.loggers import MemoryLogger

    logger = MemoryLogger()
    trainer = make_trainer(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateLogger()],
    )
    trainer.fit(ScheduledEps())
    rows = [metrics for _, metrics in logger.logged if "lr/decay" in metrics]
    assert len(rows) == STEPS
    for step, row in enumerate(rows):
        for group in ("decay", "no_decay"):
            assert row[f"eps/{group}"] == pytest.approx(1e-8 + (1e-6 - 1e-8) * step / STEPS, rel=1e-12)
            assert row[f"ema/{group}"] == pytest.approx(cosine(step, 1.0, 0.5), rel=1e-12)
            # an item of a tuple: a name every logger takes (MLflow refuses brackets)
            assert row[f"decays_1/{group}"] == row[f"ema/{group}"]
    assert not any(key.startswith(("betas", "weight_decay/decay/")) for key in rows[0])  # no double keys


def test_momentum_cycling_fills_tensor_betas_in_place() -> None:
    from lit_optim import OneCycle

    opt = _adam_with_tensors()
    beta1 = opt.param_groups[0]["betas"][0]
    sched = ScheduleLR(opt, OneCycle(cycle_momentum=True), 10)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["betas"][0] is beta1
    assert beta1.item() == pytest.approx(OneCycle(cycle_momentum=True).momentum(3, 10), rel=1e-6)


def test_an_open_ended_run_refuses_a_param_shape_that_needs_the_total() -> None:
    # the lr spec runs without a total; a cosine weight decay over 2**53 steps would never move
    from types import SimpleNamespace

    from lit_optim import lightning_scheduler_config

    trainer = SimpleNamespace(
        estimated_stepping_batches=float("inf"),
        num_training_batches=float("inf"),
        accumulate_grad_batches=1,
        max_steps=-1,
        max_epochs=-1,
    )
    with pytest.raises(
        ValueError, match=r"total number of optimizer steps is unknown.*'weight_decay' schedule.*Cosine"
    ):
        lightning_scheduler_config(_sgd(), "constant", trainer, params=WD)
    # a shape in steps needs no total
    shape = {"weight_decay": ParamSchedule(start=0.04, end=0.4, shape=Linear(decay_end=100))}
    config = lightning_scheduler_config(_sgd(), "constant", trainer, params=shape)
    assert config["scheduler"].params is not None


@pytest.mark.parametrize(
    "spec", [ParamSchedule(end=1.01, relative=True), ParamSchedule(start=1.002, end=1.0, relative=True)]
)
def test_a_relative_betas_schedule_reaching_one_is_refused(spec: ParamSchedule) -> None:
    # 0.999 * 1.01 = 1.009: Adam's bias correction breaks silently; torch checks betas only when built
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match=r"'betas\[1\]' values must be < 1.*got 1.00.*own value 0.999"):
        ScheduleLR(opt, "constant", 10, params={"betas[1]": spec})


class CLIModel(OptimizerMixin, TinyModule):
    """What a LightningCLI user writes: the arguments of ``configure_optimizers`` as saved hyper-parameters."""

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 0.1,
        scheduler: Schedule | ScheduleName | dict[str, Any] | None = None,
        param_schedules: dict[str, ParamSchedule | dict[str, Any]] | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.seen: list[float] = []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.seen.append(optimizer.param_groups[0]["weight_decay"])


CLI_FORMS = {
    "mapping": "{weight_decay: {start: 0.04, end: 0.4, shape: cosine}}",
    "class_path": "{weight_decay: {class_path: lit_optim.ParamSchedule, init_args: {start: 0.04, end: 0.4}}}",
    "shape-mapping": "{weight_decay: {start: 0.04, end: 0.4, shape: {name: cosine}}}",
    "shape-class_path": "{weight_decay: {start: 0.04, end: 0.4, shape: {class_path: lit_optim.Cosine}}}",
}


@pytest.mark.parametrize("form", list(CLI_FORMS))
def test_lightning_cli_yaml_forms_of_param_schedules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    from jsonargparse import set_parsing_settings
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli.py"])
    set_parsing_settings(subclasses_enabled=[Schedule])
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  param_schedules: {CLI_FORMS[form]}\n  scheduler: linear\n")
    trainer_args = [
        "--seed_everything=0",
        "--trainer.max_steps=8",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
    ]
    trainer_args += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    cli = LightningCLI(
        CLIModel,
        args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}", *trainer_args],
        run=False,
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model)
    assert cli.model.seen == [pytest.approx(cosine(s, 0.04, 0.4), rel=1e-12) for s in range(STEPS)]
    path = tmp_path / "last.ckpt"
    cli.trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=True)["hyper_parameters"]["param_schedules"]["weight_decay"]  # plain data
    restored = ScheduleLR(
        torch.optim.SGD(CLIModel().parameters(), lr=0.1, weight_decay=0.1),
        "linear",
        8,
        params=CLIModel.load_from_checkpoint(path).hparams["param_schedules"],
    )
    assert restored.params is not None
    assert restored.params.fields["weight_decay"][2] == ParamSchedule(start=0.04, end=0.4).resolve(TrainingLength(8))
    assert isinstance(stored, dict)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [  # the preview's stand-in optimizer must not lend its own values (SGD's momentum 0.9, weight decay 0)
        ({"params": {"momentum": ParamSchedule(end=0.99)}}, r"own 'momentum'.*values=\{'momentum': \.\.\.\}"),
        ({"params": {"eps": ParamSchedule(end=1e-6)}}, r"own 'eps'.*groups \['a', 'b'\]"),
        ({"params": WD}, r"own 'weight_decay'.*values="),
        (
            {"params": {"weight_decay": ParamSchedule(end=0.4)}, "values": {"weight_dcay": 0.1}},
            r"Unknown `values` key 'weight_dcay'.*Did you mean 'weight_decay'.*not a scheduled field",
        ),
    ],
)
def test_preview_needs_the_groups_own_values(kwargs: dict[str, Any], match: str) -> None:
    from lit_optim import preview_schedule

    with pytest.raises(ValueError, match=match):
        preview_schedule("cosine", 4, base_lrs={"a": 0.1, "b": 0.01}, **kwargs)


def test_preview_of_an_adam_momentum_schedule_says_betas() -> None:
    from lit_optim import preview_schedule

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match=r"have no 'momentum' \(for this optimizer write 'betas\[0\]'\)"):
        preview_schedule("cosine", 4, base_lrs=opt, params={"momentum": ParamSchedule(end=0.99)})
    curve = preview_schedule("cosine", 4, base_lrs=opt, params={"betas[0]": ParamSchedule(end=0.99)})
    assert curve.value("betas[0]", "group_0")[0] == 0.9  # Adam's own beta1


@pytest.mark.parametrize("key", ["applied_lr_scale", "lr_scale"])
def test_scheduling_lr_scale_is_refused(key: str) -> None:
    # the scale is applied once, when the groups are built: a schedule on it would change nothing, silently
    with pytest.raises(ValueError, match=rf"'{key}' cannot be scheduled.*applied once.*`scheduler=`"):
        ScheduleLR(_grouped(), "constant", 10, params={key: ParamSchedule(end=0.5, relative=True)})


@pytest.mark.parametrize(("field", "shown"), [("amsgrad", "False"), ("foreach", "None"), ("capturable", "False")])
def test_a_field_that_is_not_a_number_is_refused(field: str, shown: str) -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match=rf"'{field}' of group 'group0' is {shown}, not a number: it cannot be sched"):
        ScheduleLR(opt, "constant", 10, params={field: ParamSchedule(end=1.0)})


def test_an_absolute_weight_decay_schedule_over_zero_weight_decay_groups_says_how_to_select_them() -> None:
    # weight_decay=0 everywhere: every group looks like a no-decay group, which an absolute schedule leaves alone
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"selects no param group.*weight decay 0.*no-decay.*groups=\['group0'\]"):
        ScheduleLR(opt, "constant", 10, params=WD)
    ScheduleLR(opt, "constant", 10, params={"weight_decay": ParamSchedule(start=0.04, end=0.4, groups=["group0"])})
    assert opt.param_groups[0]["weight_decay"] == 0.04


@pytest.mark.parametrize(
    ("param_schedules", "match"),
    [
        ([{"weight_decay": {"end": 0.4}}], r"`param_schedules` must map a field name to a ParamSchedule.*got \["),
        ("weight_decay", r"`param_schedules` must map a field name to a ParamSchedule.*got 'weight_decay'"),
        ({"weight_decay": 0.4}, r"schedule for 'weight_decay' must be a ParamSchedule.*got 0.4.*ParamSchedule\(end="),
    ],
)
def test_ill_typed_param_schedules_raise_before_the_run_is_known(param_schedules: Any, match: str) -> None:
    from lit_optim import configure_optimizers

    with pytest.raises(TypeError, match=match):
        configure_optimizers(torch.nn.Linear(2, 1), "sgd", param_schedules=param_schedules)


@pytest.mark.parametrize("shape", ["one_cycle", "cyclic"])
def test_a_shape_that_cycles_momentum_is_refused(shape: str) -> None:
    # the shape's own momentum curve would be dropped: only its factor shapes the hyper-parameter
    spec = {"name": shape, "cycle_momentum": True, **({"up": 2} if shape == "cyclic" else {})}
    with pytest.raises(ValueError, match=r"cycles momentum.*no meaning.*cycle_momentum=False"):
        ParamSchedule(end=0.4, shape=spec)
