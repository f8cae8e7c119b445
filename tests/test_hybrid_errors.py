"""HybridOptimizer and its routing: bad input, each refused with a message naming the parameter, group or key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_optim import HybridOptimizer, build_hybrid, configure_optimizers
from tests.models import CNN, GPT


def test_one_d_parameter_forced_to_muon_names_it() -> None:
    with pytest.raises(ValueError, match=r"Parameter 'ln_f.weight' \(shape \(8,\)\) is routed to Muon \(group "
                       r"'muon/ln_f/no_decay'\), but Muon only takes 2-D matrices"):
        configure_optimizers(GPT(), "muon", overrides={"ln_f.*": {"optimizer": "muon"}})


def test_unknown_inner_optimizer_name() -> None:
    with pytest.raises(ValueError, match=r"In override 'blocks.\*': Unknown optimizer 'adamww'\. Valid: \[.*\]\. "
                       r"Did you mean 'AdamW'\?"):
        configure_optimizers(GPT(), "muon", overrides={"blocks.*": {"optimizer": "adamww"}})
    with pytest.raises(ValueError, match=r"Unknown optimizer 'muonn'.*Did you mean 'Muon'"):
        configure_optimizers(GPT(), "muonn")


def test_key_the_owning_optimizer_does_not_take_names_group_and_optimizer() -> None:
    with pytest.raises(ValueError, match=r"Unknown AdamW hyper-parameter 'momentum'.*set on the group "
                       r"'adamw/blocks/no_decay', which AdamW owns"):
        configure_optimizers(GPT(), "muon", overrides={"blocks.*": {"momentum": 0.9}})
    with pytest.raises(ValueError, match=r"Unknown Muon hyper-parameter 'betas'.*`optimizer_kwargs` \('muon'\)"):
        configure_optimizers(GPT(), "muon", betas=(0.9, 0.95))
    with pytest.raises(ValueError, match=r"Unknown AdamW hyper-parameter 'nesterov'.*`fallback_kwargs`"):
        configure_optimizers(GPT(), "muon", fallback_kwargs={"nesterov": True})
    with pytest.raises(ValueError, match=r"goes to Rprop, which has no weight decay, but sets weight_decay=0.01"):
        configure_optimizers(GPT(), "muon", overrides={"tok_emb.*": {"optimizer": "rprop"}})


def test_empty_muon_half_and_unused_fallback_settings_raise() -> None:
    with pytest.raises(ValueError, match=r"No parameter of CNN goes to Muon.*HINT: route patterns to it"):
        configure_optimizers(CNN(), "muon")  # conv kernels are 4-D, the last matrix is the head
    everything = {"*": {"optimizer": "muon"}}
    matrices = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    assert list(build_hybrid(matrices, overrides=everything).optimizers) == ["muon"]  # no AdamW half: fine
    with pytest.raises(ValueError, match=r"`fallback_lr`/`fallback_kwargs` were given, but no parameter goes to"):
        build_hybrid(matrices, overrides=everything, fallback_lr=0.1)
    with pytest.raises(ValueError, match=r"SGD takes every parameter and no override routes any to AdamW"):
        configure_optimizers(GPT(), "sgd", fallback_lr=0.1)
    with pytest.raises(ValueError, match=r"AdamW takes every parameter and no override routes any to AdamW"):
        configure_optimizers(GPT(), "adamw", fallback_kwargs={"betas": (0.9, 0.95)})
    mixed = build_hybrid(GPT(), "adamw", overrides={"ln_f.*": {"optimizer": "sgd"}}, fallback="sgd",
                         fallback_kwargs={"momentum": 0.5})  # a routed fallback takes the fallback settings
    assert [(g["name"], g.get("momentum")) for g in mixed.param_groups][-1] == ("sgd/ln_f/no_decay", 0.5)


def test_hybrid_container_rejects_bad_parts() -> None:
    weight = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="non-empty mapping"):
        HybridOptimizer({})
    with pytest.raises(TypeError, match="takes a mapping label -> optimizer, got list"):
        HybridOptimizer([torch.optim.SGD([weight], lr=0.1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in both inner optimizers 'a' and 'b'"):
        HybridOptimizer({"a": torch.optim.SGD([weight], lr=0.1), "b": torch.optim.Muon([weight])})
    with pytest.raises(TypeError, match=r"Inner optimizer 'a' must be a torch.optim.Optimizer"):
        HybridOptimizer({"a": "adamw"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="without '/'"):
        HybridOptimizer({"a/b": torch.optim.SGD([weight], lr=0.1)})


def test_bad_fallback_and_label_clashes() -> None:
    with pytest.raises(ValueError, match=r"`fallback` must differ from the main optimizer Muon, got 'muon'"):
        build_hybrid(GPT(), fallback="muon")
    with pytest.raises(ValueError, match=r"`fallback`: Unknown optimizer 'adamm'.*Did you mean 'Adam'"):
        build_hybrid(GPT(), fallback="adamm")
    with pytest.raises(TypeError, match=r"In override 'blocks.\*': `optimizer` must be a torch.optim name"):
        build_hybrid(GPT(), overrides={"blocks.*": {"optimizer": 3}})

    class AdamW(torch.optim.AdamW):  # a look-alike: its label would be 'adamw' too
        pass

    with pytest.raises(ValueError, match=r"Two optimizer classes share the label 'adamw'"):
        build_hybrid(GPT(), overrides={"ln_f.*": {"optimizer": AdamW}})
    opt = build_hybrid(GPT(), fallback=AdamW)  # alone, it is the fallback
    assert type(opt.optimizers["adamw"]) is AdamW


def test_add_param_group_checks_like_the_build() -> None:
    # a group added later (BaseFinetuning's unfreeze) was taken as given: a parameter of the other half was then
    # stepped by both optimizers, a key the owner ignores was dropped silently, a vector reached Muon
    opt = build_hybrid(GPT())
    muon_param = opt.optimizers["muon"].param_groups[0]["params"][0]
    with pytest.raises(ValueError, match=r"shape \(24, 8\) is already optimized by the inner optimizer 'muon'.*"
                       r"cannot also go to 'adamw'"):
        opt.add_param_group({"params": [muon_param], "optimizer": "adamw"})
    with pytest.raises(ValueError, match=r"Unknown AdamW hyper-parameter 'momentum'.*'adamw/late'"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "optimizer": "adamw", "name": "late",
                             "momentum": 0.9})
    with pytest.raises(ValueError, match=r"shape \(3,\)\) is routed to Muon.*only takes 2-D matrices"):
        opt.add_param_group({"params": nn.Parameter(torch.zeros(3)), "optimizer": "muon"})
    with pytest.raises(ValueError, match=r"one of \['adamw', 'muon'\], got 'adam'\. Did you mean 'adamw'\?"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "optimizer": "adam"})
    assert [len(g["params"]) for g in opt.param_groups] == [8, 2, 16]  # nothing was added by a refused call
    opt.add_param_group({"params": nn.Parameter(torch.zeros(3)), "optimizer": "adamw", "initial_lr": 1e-3})
    assert opt.param_groups[-1]["name"] == "adamw/2"


def test_bad_fallback_lr_is_named_as_given() -> None:
    # it was reported as `lr`, the argument the user did not set
    with pytest.raises(ValueError, match=r"`fallback_lr` must be >= 0 and finite, got -1.0"):
        configure_optimizers(GPT(), "muon", fallback_lr=-1.0)
    with pytest.raises(TypeError, match=r"`fallback_lr` must be a number, got '1e-3'"):
        configure_optimizers(GPT(), "muon", fallback_lr="1e-3")  # type: ignore[arg-type]
