from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import Optimizer

from lit_optim import build_optimizer, param_groups
from lit_optim.optim.optimizers import hyperparameter_names, resolve_optimizer
from tests.models import GPT

TORCH_OPTIMIZERS = [
    obj
    for obj in vars(torch.optim).values()
    if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer
]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW), ("AdamW", torch.optim.AdamW), ("ADAMW", torch.optim.AdamW),
        ("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad), ("nadam", torch.optim.NAdam), ("lbfgs", torch.optim.LBFGS),
    ],
)  # fmt: skip
def test_lookup_by_case_insensitive_name(name: str, cls: type[Optimizer]) -> None:
    assert resolve_optimizer(name) is cls


@pytest.mark.parametrize("cls", TORCH_OPTIMIZERS, ids=lambda c: c.__name__)
def test_every_torch_optimizer_by_name_and_class(cls: type[Optimizer]) -> None:
    assert resolve_optimizer(cls.__name__.lower()) is cls
    assert resolve_optimizer(cls) is cls


def test_unknown_name_lists_valid_and_closest() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'adamm'\. Valid: \['ASGD', .*'SGD', .*\]\. Did you mean 'Adam'\?"
    ):
        build_optimizer("adamm", nn.Linear(2, 2).parameters())


def test_not_an_optimizer_class() -> None:
    with pytest.raises(
        TypeError, match=r"`optimizer` must be a torch.optim name .* got <class 'torch.nn.modules.linear.Linear'>"
    ):
        build_optimizer(nn.Linear, nn.Linear(2, 2).parameters())  # type: ignore[arg-type]


class Lion(Optimizer):
    """A third-party-style optimizer with its own hyper-parameter names."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad), alpha=-group["lr"])


class AnyKwargs(Optimizer):
    def __init__(self, params: Iterable[Any], **defaults: Any) -> None:
        super().__init__(params, {"lr": 1.0, **defaults})


def test_third_party_class_is_checked_against_its_signature() -> None:
    assert hyperparameter_names(Lion) == frozenset({"lr", "betas", "weight_decay"})
    opt = build_optimizer(Lion, param_groups(nn.Linear(2, 2), lr=0.5), betas=(0.8, 0.9))
    assert [(g["name"], g["lr"], g["betas"]) for g in opt.param_groups] == [
        ("decay", 0.5, (0.8, 0.9)),
        ("no_decay", 0.5, (0.8, 0.9)),
    ]
    with pytest.raises(
        ValueError,
        match=r"Unknown Lion hyper-parameter 'beta'\. Valid: \['betas', 'lr', 'weight_decay'\]\. "
        r"Did you mean 'betas'\?",
    ):
        build_optimizer(Lion, nn.Linear(2, 2).parameters(), beta=(0.8, 0.9))


def test_optimizer_taking_kwargs_is_not_checked() -> None:
    assert hyperparameter_names(AnyKwargs) is None
    opt = build_optimizer(AnyKwargs, [{"params": [nn.Parameter(torch.ones(1))], "anything": 3}], other=2)
    assert opt.param_groups[0]["anything"] == 3
    assert opt.defaults["other"] == 2


@pytest.mark.parametrize(("key", "closest"), [("weight_decy", "weight_decay"), ("beta", "betas"), ("Lr", "lr")])
def test_unknown_top_level_kwarg(key: str, closest: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"Unknown AdamW hyper-parameter '{key}'\. Valid: \[.*'amsgrad'.*\]\. Did you mean '{closest}'\?",
    ):
        build_optimizer("adamw", nn.Linear(2, 2).parameters(), **{key: 0.1})


def test_unknown_key_inside_a_group_names_the_group() -> None:
    groups = param_groups(nn.Linear(2, 2))
    groups[1]["lr_sclae"] = 2.0
    with pytest.raises(
        ValueError,
        match=r"Unknown key 'lr_sclae'\. Valid: \[.*\]\. It appears in the parameter "
        r"group 'no_decay' \(index 1\); group keys are the hyper-parameters of AdamW plus lit_optim's "
        r"\['applied_lr_scale', 'name', 'params'\] and the keys torch writes itself\.",
    ):
        build_optimizer("adamw", groups)
    with pytest.raises(ValueError, match=r"Unknown key 'betas'.* It appears in the parameter group 0; .* of SGD"):
        build_optimizer("sgd", [{"params": [nn.Parameter(torch.ones(1))], "betas": (0.9, 0.9)}], lr=0.1)


def test_group_without_params() -> None:
    with pytest.raises(ValueError, match=r"The parameter group 'x' \(index 0\) has no 'params' key"):
        build_optimizer("sgd", [{"name": "x", "lr": 0.1}])


@pytest.mark.parametrize(
    ("hp", "groups", "match"),
    [
        ({"lr": -1.0}, None, r"`lr` must be >= 0 and finite, got -1.0"),
        ({"weight_decay": -0.5}, None, r"`weight_decay` must be >= 0 and finite, got -0.5"),
        ({}, [{"lr": -0.1}], r"In the parameter group 0: `lr` must be >= 0 and finite, got -0.1\."),
        (
            {},
            [{"name": "g", "weight_decay": float("inf")}],
            r"In the parameter group 'g' \(index 0\): `weight_decay` must be >= 0 and finite, got inf\.",
        ),
    ],
)
def test_negative_values(hp: dict[str, Any], groups: list[dict[str, Any]] | None, match: str) -> None:
    params: Any = (
        [{"params": [nn.Parameter(torch.ones(1))], **g} for g in groups] if groups else [nn.Parameter(torch.ones(1))]
    )
    with pytest.raises(ValueError, match=match):
        build_optimizer("adamw", params, **hp)


def test_zero_weight_decay_group_key_accepted_for_optimizer_without_weight_decay() -> None:
    opt = build_optimizer("rprop", param_groups(nn.Linear(2, 2), lr=0.1, weight_decay=0.0))
    # weight_decay=0 makes decay and no_decay identical, so they merge into one group.
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [("decay", 0.0, 2)]
    with pytest.raises(
        ValueError,
        match=r"Rprop has no weight decay, but the parameter group 'decay' \(index 0\) sets weight_decay=0\.1\. "
        r"HINT: build the groups with weight_decay=0 for this optimizer\.",
    ):
        build_optimizer("rprop", param_groups(nn.Linear(2, 2), weight_decay=0.1))


def _train(model: nn.Module, opt: Optimizer, steps: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, 11, (2, 6), generator=g)
        opt.zero_grad()
        model(idx).logsumexp(-1).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("name", "hp"), [("adamw", {"betas": (0.9, 0.95)}), ("sgd", {"momentum": 0.9})])
def test_same_trajectory_as_hand_built_torch_groups(name: str, hp: dict[str, Any]) -> None:
    torch.manual_seed(0)
    ours = GPT()
    theirs = GPT()
    theirs.load_state_dict(ours.state_dict())
    opt = build_optimizer(name, param_groups(ours, lr=0.01, weight_decay=0.1), **hp)
    # The usual hand-written recipe: 2-D weights decayed, biases / norms / 1-D not (GPT's norms are all 1-D).
    decay = [p for n, p in theirs.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in theirs.named_parameters() if p.ndim < 2]
    cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    ref = cls([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=0.01, **hp)
    for a, b in zip(_train(ours, opt), _train(theirs, ref), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_group_names_travel_into_state_dict() -> None:
    opt = build_optimizer("adamw", param_groups(GPT(), layer_decay=0.5))
    saved = opt.state_dict()["param_groups"]
    assert [g["name"] for g in saved] == [g["name"] for g in opt.param_groups]
    assert [g["applied_lr_scale"] for g in saved] == [0.125, 0.25, 0.25, 0.5, 0.5, 1.0]


def test_dotted_import_path() -> None:
    assert resolve_optimizer("torch.optim.SGD") is torch.optim.SGD
    assert resolve_optimizer("tests.test_optimizers.Lion") is Lion
    with pytest.raises(ValueError, match=r"Cannot import optimizer 'tests.test_optimizers.Lino': .*'package.module"):
        resolve_optimizer("tests.test_optimizers.Lino")
    with pytest.raises(TypeError, match=r"'torch.nn.Linear' is not a torch.optim.Optimizer subclass"):
        resolve_optimizer("torch.nn.Linear")


# --- precedence: one test per rule ---


def _two_groups(**second: Any) -> list[dict[str, Any]]:
    return [{"params": [nn.Parameter(torch.ones(2, 2))]}, {"params": [nn.Parameter(torch.ones(2))], **second}]


def test_precedence_top_level_value_is_the_default_of_groups_without_the_key() -> None:
    opt = build_optimizer("sgd", _two_groups(), lr=0.3, momentum=0.9)
    assert [(g["lr"], g["momentum"]) for g in opt.param_groups] == [(0.3, 0.9), (0.3, 0.9)]


def test_precedence_a_groups_own_value_wins_where_it_sets_the_key() -> None:
    opt = build_optimizer("sgd", _two_groups(lr=0.01, momentum=0.5), lr=0.3, momentum=0.9)
    assert [(g["lr"], g["momentum"]) for g in opt.param_groups] == [(0.3, 0.9), (0.01, 0.5)]


def test_precedence_a_top_level_value_every_group_overrides_raises() -> None:
    groups = [{"params": [nn.Parameter(torch.ones(2))], "lr": lr} for lr in (0.01, 0.02)]
    with pytest.raises(
        ValueError,
        match=r"build_optimizer\('SGD', \.\.\., lr=0\.3\) would be ignored: every parameter group sets its own 'lr' "
        r"\(0\.01, 0\.02\), and a group's value wins over the top-level default\. HINT: set it when building the "
        r"groups \(param_groups\(model, lr=\.\.\.\)\), or drop it here\.",
    ):
        build_optimizer("sgd", groups, lr=0.3)


def test_precedence_a_top_level_value_equal_to_every_groups_is_accepted() -> None:
    opt = build_optimizer("adamw", param_groups(GPT(), lr=3e-4, weight_decay=0.1), lr=3e-4)
    assert {g["lr"] for g in opt.param_groups} == {3e-4}


def test_precedence_param_groups_override_lr_replaces_base_then_scales_multiply() -> None:
    model = GPT()  # layer ids: ln_f is on top (scale 1); blocks.1 is one below (scale 0.5)
    groups = param_groups(
        model, lr=1.0, layer_decay=0.5, overrides={"blocks.1.*": {"lr": 0.2, "lr_scale": 0.1}, "ln_f.*": {"lr": 3.0}}
    )
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["layer_02/blocks.1/decay"] == pytest.approx(0.2 * 0.1 * 0.5, rel=1e-12)
    assert lrs["layer_03/ln_f/no_decay"] == 3.0
    assert lrs["layer_01/decay"] == 0.25


def test_precedence_an_overrides_hyperparameter_beats_the_optimizer_default() -> None:
    from lit_optim import configure_optimizers

    config = configure_optimizers(GPT(), "sgd", lr=0.1, momentum=0.9, overrides={"ln_f.*": {"momentum": 0.5}})
    opt = config["optimizer"]
    assert {g["name"]: g["momentum"] for g in opt.param_groups} == {"decay": 0.9, "no_decay": 0.9, "ln_f/no_decay": 0.5}


# --- rebuilding an optimizer from another one's groups (keys torch writes itself) ---


def _rebuilt(opt: Optimizer, name: str) -> Optimizer:
    again = build_optimizer(name, [dict(g) for g in opt.param_groups])
    assert [{k: v for k, v in g.items() if k != "params"} for g in again.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in opt.param_groups
    ]
    return again


def test_rebuild_after_a_torch_scheduler_and_from_named_parameters() -> None:
    model = GPT()
    opt = build_optimizer("adamw", model.named_parameters(), lr=0.1)  # torch adds "param_names"
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # adds "initial_lr"
    assert {"param_names", "initial_lr", "decoupled_weight_decay"} <= set(opt.param_groups[0])
    _rebuilt(opt, "adamw")


def test_rebuild_after_one_cycle_and_swa() -> None:
    opt = build_optimizer("sgd", param_groups(GPT(), lr=0.1), momentum=0.9)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)  # max_lr, min_lr, *_momentum
    torch.optim.swa_utils.SWALR(opt, swa_lr=0.05)  # swa_lr
    assert {"max_lr", "min_lr", "base_momentum", "max_momentum", "swa_lr"} <= set(opt.param_groups[0])
    _rebuilt(opt, "sgd")
