"""OptimizerMixin applies or refuses every optimizer hparam, and its checkpoints hold plain data only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from lit_optim import OptimizerMixin
from tests.models import TinyModule


class SignSGD(torch.optim.Optimizer):
    """A third-party optimizer (not in torch.optim), importable by its dotted path."""

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(torch.sign(p.grad), alpha=-group["lr"])
        return loss


def head_last(name: str) -> int:
    """A module-level layer_id_fn: the head on top, everything else at 0."""
    return 1 if name.startswith("net.2.") else 0


class Model(OptimizerMixin, TinyModule):
    def __init__(self, optimizer: Any = "adamw", lr: float = 0.1, n: int = 64, **kwargs: Any) -> None:
        super().__init__(n=n)
        self.save_hyperparameters()


def built(**hparams: Any) -> torch.optim.Optimizer:
    return Model(**hparams).configure_optimizers()["optimizer"]


def test_hyperparameters_of_the_chosen_optimizer_are_applied() -> None:
    sgd = built(optimizer="sgd", momentum=0.9, nesterov=True, dampening=0.0)
    assert [(g["momentum"], g["nesterov"]) for g in sgd.param_groups] == [(0.9, True), (0.9, True)]
    adam = built(optimizer="adam", betas=(0.8, 0.9), eps=1e-6)
    assert [(g["betas"], g["eps"]) for g in adam.param_groups] == [((0.8, 0.9), 1e-6), ((0.8, 0.9), 1e-6)]


def test_a_hyperparameter_of_another_optimizer_warns() -> None:
    with pytest.warns(UserWarning, match=r"The hparam 'momentum' is a hyper-parameter of some torch optimizers but "
                      r"not of AdamW, so OptimizerMixin does not apply it\. HINT: .*`ignored_hparams`"):  # fmt: skip
        opt = built(momentum=0.9)
    assert "momentum" not in opt.param_groups[0]

    class Own(Model):
        ignored_hparams = frozenset({"momentum"})

    Own(momentum=0.9).configure_optimizers()  # no warning: warnings are errors in this suite


def test_the_same_hyperparameter_twice_raises() -> None:
    with pytest.raises(ValueError, match=r"The hparams set \['momentum'\] both as their own keys and in "):
        built(optimizer="sgd", momentum=0.9, optimizer_kwargs={"momentum": 0.5})


def test_no_decay_and_layer_id_fn_are_read_from_hparams() -> None:
    opt = built(no_decay=["net.0.weight"], layer_decay=0.5, layer_id_fn=head_last)
    names = [(g["name"], g["lr"]) for g in opt.param_groups]
    assert names == [("layer_00/no_decay", 0.05), ("layer_01/decay", 0.1), ("layer_01/no_decay", 0.1)]
    by_path = built(no_decay=["net.0.weight"], layer_decay=0.5, layer_id_fn="tests.test_optimizer_mixin.head_last")
    assert [(g["name"], g["lr"]) for g in by_path.param_groups] == names


def test_forgotten_save_hyperparameters_raises() -> None:
    class Forgot(OptimizerMixin, TinyModule):
        def __init__(self, lr: float = 0.1, momentum: float = 0.9, optimizer: str = "sgd") -> None:
            super().__init__()

    with pytest.raises(
        ValueError,
        match=r"Forgot\.__init__ takes \['lr', 'optimizer'\], but they are not in `self\.hparams` "
        r"\(self\.save_hyperparameters\(\) was never called\), so OptimizerMixin cannot see them and would build "
        r"its default optimizer \(AdamW, lr=0\.001\)\. HINT: call self\.save_hyperparameters\(\)",
    ):
        Forgot().configure_optimizers()


def test_lr_left_out_of_save_hyperparameters_raises() -> None:
    class LeftOut(OptimizerMixin, TinyModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["lr"])

    with pytest.raises(ValueError, match=r"LeftOut\.__init__ takes \['lr'\], .*\(they were left out of it\)"):
        LeftOut().configure_optimizers()


def test_a_lambda_layer_id_fn_cannot_go_into_a_checkpoint() -> None:
    with pytest.raises(ValueError, match=r"The `layer_id_fn` <function .*<lambda>.* cannot be stored in a checkpoint"):
        built(layer_decay=0.5, layer_id_fn=lambda name: 0)


@pytest.mark.parametrize(
    "optimizer",
    ["sgd", torch.optim.SGD, "torch.optim.SGD", SignSGD, "tests.test_optimizer_mixin.SignSGD"],
    ids=["name", "class", "dotted", "third-party-class", "third-party-dotted"],
)
def test_checkpoint_loads_weights_only_and_resumes_exactly(
    optimizer: Any, make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    def model() -> Model:
        torch.manual_seed(0)
        return Model(optimizer=optimizer, lr=0.05, n=16, layer_decay=0.5, layer_id_fn=head_last, no_decay=[nn.ReLU])

    straight = model()
    make_trainer(max_epochs=2).fit(straight)  # 4 optimizer steps an epoch
    first = model()
    trainer = make_trainer(max_epochs=1)
    trainer.fit(first)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    hparams = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]
    assert isinstance(hparams["optimizer"], str)
    assert hparams["layer_id_fn"] == "tests.test_optimizer_mixin.head_last"
    resumed = Model.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    make_trainer(max_epochs=2).fit(resumed, ckpt_path=tmp_path / "m.ckpt", weights_only=True)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_generic_name_is_never_applied_implicitly() -> None:
    with pytest.raises(
        ValueError,
        match=r"The hparam 'alpha' is a hyper-parameter of RMSprop, but models often use that name for their own "
        r"settings, so OptimizerMixin will not guess\. HINT: pass it in `optimizer_kwargs`",
    ):
        built(optimizer="rmsprop", alpha=0.5)
    assert built(optimizer="rmsprop", optimizer_kwargs={"alpha": 0.5}).param_groups[0]["alpha"] == 0.5
    assert "alpha" not in built(alpha=0.5).param_groups[0]  # AdamW: the model's own alpha, no warning


def test_none_defaults_in_init_are_fine() -> None:
    class Defaults(OptimizerMixin, TinyModule):
        def __init__(self, no_decay: list[str] | None = None, layer_id_fn: str | None = None) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert [g["name"] for g in Defaults().configure_optimizers()["optimizer"].param_groups] == ["decay", "no_decay"]
