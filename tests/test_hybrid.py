"""HybridOptimizer and its routing, without a Trainer: groups, exact steps against torch's Muon + AdamW, state."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lit_optim import Cosine, HybridOptimizer, ScheduleLR, build_hybrid, configure_optimizers, format_groups
from tests.models import GPT, gpt_block_names


def names_by_group(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: [names[id(p)] for p in g["params"]] for g in optimizer.param_groups}


def gpt_split() -> dict[str, list[str]]:
    """The documented rule on :class:`GPT`, written out: block matrices to Muon; embeddings, norms, biases not."""
    blocks = [gpt_block_names(0), gpt_block_names(1)]
    return {
        "muon/decay": blocks[0]["decay"] + blocks[1]["decay"],
        "adamw/decay": ["tok_emb.weight", "pos_emb.weight"],  # lm_head is tied to tok_emb
        "adamw/no_decay": blocks[0]["no_decay"] + blocks[1]["no_decay"] + ["ln_f.weight", "ln_f.bias"],
    }


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def hand_built(model: nn.Module, lr: float, wd: float, **adamw: Any) -> list[torch.optim.Optimizer]:
    """torch's Muon and AdamW built by hand on the split of :func:`gpt_split` (the reference)."""
    params = dict(model.named_parameters())
    split = gpt_split()
    muon = torch.optim.Muon(
        [params[n] for n in split["muon/decay"]], lr=lr, weight_decay=wd, adjust_lr_fn="match_rms_adamw"
    )
    adam = torch.optim.AdamW(
        [
            {"params": [params[n] for n in split["adamw/decay"]], "weight_decay": wd},
            {"params": [params[n] for n in split["adamw/no_decay"]], "weight_decay": 0.0},
        ],
        lr=lr,
        **adamw,
    )
    return [muon, adam]


def train(model: nn.Module, optimizers: list[Any], steps: int, schedulers: Sequence[Any] = (), start: int = 0) -> None:
    data = torch.randint(0, 11, (16, 2, 7), generator=torch.Generator().manual_seed(1))
    for tokens in data[start : start + steps]:
        lm_loss(model, tokens).backward()
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad()
        for scheduler in schedulers:
            scheduler.step()


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(x, y), name


# --- routing -------------------------------------------------------------------------------------------------


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = GPT()
    opt = configure_optimizers(model, "muon", lr=0.02)["optimizer"]
    assert isinstance(opt, HybridOptimizer)
    assert names_by_group(model, opt) == gpt_split()
    assert [type(o).__name__ for o in opt.optimizers.values()] == ["Muon", "AdamW"]
    muon_group = opt.param_groups[0]
    assert muon_group["adjust_lr_fn"] == "match_rms_adamw"  # one lr for both halves (Moonlight)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.02, 0.01), (0.02, 0.01), (0.02, 0.0)]
    # the hybrid's groups are the inner optimizers' own dicts: a write reaches them
    inner = [g for o in opt.optimizers.values() for g in o.param_groups]
    assert all(a is b for a, b in zip(opt.param_groups, inner, strict=True))


def test_format_groups_shows_the_owner_of_each_group() -> None:
    table = format_groups(build_hybrid(GPT(), "muon", lr=0.02))
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"muon/decay", "adamw/decay", "adamw/no_decay"}
    assert rows["muon/decay"].endswith("optimizer=muon")
    assert rows["adamw/no_decay"].endswith("optimizer=adamw")  # only what differs from its owner's defaults


def test_model_without_blocks_keeps_its_input_and_output_layers_out_of_muon() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    opt = build_hybrid(model, "muon")
    assert names_by_group(model, opt) == {
        "muon/decay": ["2.weight", "4.weight"],
        "adamw/decay": ["0.weight", "5.weight"],
        "adamw/no_decay": ["0.bias", "2.bias", "4.bias", "5.bias"],
    }


def test_overrides_move_patterns_either_way_in_separate_groups() -> None:
    model = GPT()
    opt = build_hybrid(
        model,
        overrides={
            "blocks.1.mlp.*.weight": {"optimizer": "adamw", "lr_scale": 0.5, "name": "mlp1"},
            "pos_emb.weight": {"optimizer": torch.optim.Muon},
        },
    )
    got = names_by_group(model, opt)
    split = gpt_split()
    assert got["muon/decay"] == [n for n in split["muon/decay"] if not n.startswith("blocks.1.mlp")]
    assert got["muon/pos_emb.weight/decay"] == ["pos_emb.weight"]
    assert got["adamw/mlp1/decay"] == ["blocks.1.mlp.0.weight", "blocks.1.mlp.2.weight"]
    assert got["adamw/decay"] == ["tok_emb.weight"]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["adamw/mlp1/decay"] == 0.5e-3


def test_any_pattern_to_any_torch_optimizer() -> None:
    model = GPT()
    config = configure_optimizers(
        model, "adamw", lr=0.01, overrides={"blocks.*": {"optimizer": "SGD", "momentum": 0.9, "weight_decay": 0}}
    )
    opt = config["optimizer"]
    got = names_by_group(model, opt)
    assert list(got) == ["adamw/decay", "adamw/no_decay", "sgd/blocks/no_decay"]
    block_params = [n for n, _ in model.named_parameters() if n.startswith("blocks.")]
    assert got["sgd/blocks/no_decay"] == block_params
    assert opt.param_groups[2]["momentum"] == 0.9
    assert isinstance(opt.optimizers["sgd"], torch.optim.SGD)


def test_fallback_lr_and_kwargs_reach_only_the_fallback_and_keep_override_lrs() -> None:
    model = GPT()
    opt = build_hybrid(
        model, lr=0.02, weight_decay=0.1, fallback_lr=3e-3, fallback_kwargs={"betas": (0.8, 0.9), "weight_decay": 0.05},
        overrides={"ln_f.*": {"lr": 1e-4}}, momentum=0.9,
    )  # fmt: skip
    groups = {g["name"]: g for g in opt.param_groups}
    assert (groups["muon/decay"]["lr"], groups["muon/decay"]["weight_decay"], groups["muon/decay"]["momentum"]) == (
        0.02, 0.1, 0.9,
    )  # fmt: skip
    assert (groups["adamw/decay"]["lr"], groups["adamw/decay"]["weight_decay"]) == (3e-3, 0.05)
    assert groups["adamw/no_decay"]["weight_decay"] == 0.0
    assert groups["adamw/decay"]["betas"] == (0.8, 0.9)
    assert groups["adamw/ln_f/no_decay"]["lr"] == 1e-4  # an override's own lr is not replaced


def test_explicit_adjust_lr_fn_is_kept() -> None:
    opt = build_hybrid(GPT(), adjust_lr_fn="original")
    assert opt.param_groups[0]["adjust_lr_fn"] == "original"


# --- exact steps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduled", [False, True])
def test_steps_are_bit_identical_to_muon_and_adamw_built_by_hand(scheduled: bool) -> None:
    model = GPT()
    reference = copy.deepcopy(model)
    opt = configure_optimizers(model, "muon", lr=0.02, fallback_kwargs={"betas": (0.9, 0.95)})["optimizer"]
    by_hand = hand_built(reference, lr=0.02, wd=0.01, betas=(0.9, 0.95))
    schedule = Cosine(warmup=2, min_lr=0.1)
    mine = [ScheduleLR(opt, schedule, total_steps=6)] if scheduled else []
    theirs = [ScheduleLR(o, schedule, total_steps=6) for o in by_hand] if scheduled else []
    train(model, [opt], 6, mine)
    train(reference, by_hand, 6, theirs)
    assert_same_weights(model, reference)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for o in by_hand for g in o.param_groups]
    if scheduled:
        assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * schedule.factor(6, 6))


def test_state_dict_round_trips_through_weights_only_load_and_resumes_exactly() -> None:
    model = GPT()
    straight = copy.deepcopy(model)
    opt = build_hybrid(straight, lr=0.02)
    train(straight, [opt], 6)

    first = build_hybrid(model, lr=0.02)
    train(model, [first], 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert [g["name"] for g in saved["optimizer"]["param_groups"]] == list(gpt_split())
    resumed_model = GPT()
    resumed_model.load_state_dict(saved["model"])
    resumed = build_hybrid(resumed_model, lr=0.02)
    resumed.load_state_dict(saved["optimizer"])
    assert len(resumed.state) == len(list(resumed_model.parameters()))
    train(resumed_model, [resumed], 3, start=3)
    assert_same_weights(resumed_model, straight)


def test_load_refuses_a_state_dict_with_another_routing() -> None:
    saved = build_hybrid(GPT()).state_dict()
    other = build_hybrid(GPT(), overrides={"pos_emb.weight": {"optimizer": "muon"}})
    with pytest.raises(ValueError, match=r"The state dict has 3 parameter groups \(\['muon/decay', 'adamw/decay', "
                       r"'adamw/no_decay'\]\), this HybridOptimizer has 4 .*different grouping or routing.*HINT"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"Group 1 of the state dict is 'adamw/decay' \(owner 'adamw'\) but this "
                       r"optimizer's is 'muon/pos_emb.weight/decay' \(owner 'muon'\).*different routing"):
        other.load_state_dict(build_hybrid(GPT(), overrides={"ln_f.*": {"lr": 0.5}}).state_dict())


def test_step_hooks_fire_once_per_step_and_torch_schedulers_accept_it() -> None:
    model = GPT()
    opt = build_hybrid(model, lr=0.1)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, [opt], 2, [scheduler])
    assert calls == ["pre", "post", "pre", "post"]
    assert [g["lr"] for o in opt.optimizers.values() for g in o.param_groups] == [0.025] * 3


def test_closure_is_called_once_with_grad_enabled() -> None:
    model = GPT()
    opt = build_hybrid(model)
    tokens = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        expected = float(lm_loss(model, tokens))
    calls = []

    def closure() -> float:
        calls.append(torch.is_grad_enabled())
        loss = lm_loss(model, tokens)
        loss.backward()
        return float(loss.detach())

    with torch.no_grad():
        assert opt.step(closure) == expected
    assert calls == [True]


def test_state_is_a_live_view_pickles_and_zero_grad_reaches_every_part() -> None:
    model = GPT()
    opt = build_hybrid(model)
    train(model, [opt], 1)
    state = opt.state
    assert len(state) == len(list(model.parameters()))
    muon_param = opt.param_groups[0]["params"][0]
    assert state[muon_param] is opt.optimizers["muon"].state[muon_param]
    with pytest.raises(AttributeError, match="view of its inner optimizers"):
        opt.state = {}  # type: ignore[assignment]
    clone = pickle.loads(pickle.dumps(opt))
    assert [g["name"] for g in clone.param_groups] == [g["name"] for g in opt.param_groups]
    lm_loss(model, torch.randint(0, 11, (2, 7))).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_add_param_group_goes_to_the_named_owner() -> None:
    model = GPT()
    extra = nn.Linear(3, 3, bias=False)
    opt = build_hybrid(model)
    opt.add_param_group({"params": [extra.weight], "optimizer": "muon", "name": "new"})
    assert opt.param_groups[1]["name"] == "muon/new"
    assert opt.param_groups[1] is opt.optimizers["muon"].param_groups[1]
    with pytest.raises(ValueError, match=r"needs an 'optimizer' key naming its owner, one of \['adamw', 'muon'\]"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})


def test_hybrid_of_hand_built_optimizers_names_groups_and_keeps_only_shared_defaults() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    muon = torch.optim.Muon([model[0].weight], lr=0.1, weight_decay=0)
    head = list(model[1].parameters())
    sgd = torch.optim.SGD([{"params": [model[0].bias]}, {"params": head, "name": "head"}], lr=0.1)
    opt = HybridOptimizer({"muon": muon, "sgd": sgd})
    assert [g["name"] for g in opt.param_groups] == ["muon/0", "sgd/0", "sgd/head"]
    assert opt.defaults == {"lr": 0.1, "weight_decay": 0}  # SGD's nesterov=False is not Muon's nesterov=True
    assert opt.defaults_for(opt.param_groups[0]) is muon.defaults


def test_muon_on_sharded_dtensor_parameters_is_refused(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = GPT()
        mesh = init_device_mesh("cpu", (1,))
        layer = model.blocks[0].mlp[0]
        layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"Parameter 'blocks.0.mlp.0.weight' is a sharded DTensor \(placements "
                           r"\(Shard\(dim=0\),\)\).*lit_optim refuses Muon on sharded parameters"):
            configure_optimizers(model, "muon")
        routed = configure_optimizers(model, "muon", overrides={"blocks.0.mlp.0.weight": {"optimizer": "adamw"}})
        moved = names_by_group(model, routed["optimizer"])["adamw/blocks.0.mlp.0.weight/decay"]
        assert moved == ["blocks.0.mlp.0.weight"]
        weight = nn.Parameter(distribute_tensor(torch.zeros(2, 2), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"Parameter 0 of group 'muon/0' is a sharded DTensor"):
            HybridOptimizer({"muon": torch.optim.Muon([weight])})
    finally:
        dist.destroy_process_group()


def test_no_decay_matrices_stay_with_adamw_whatever_the_weight_decay() -> None:
    model = GPT()
    declared = "blocks.0.mlp.0.weight"
    for weight_decay, overrides in [(0.0, None), (0.1, {"blocks.*": {"weight_decay": 0.0}})]:
        opt = build_hybrid(model, weight_decay=weight_decay, no_decay=[declared], overrides=overrides)
        muon = [n for name, names in names_by_group(model, opt).items() if name.startswith("muon/") for n in names]
        assert declared not in muon
        assert muon == [n for n in gpt_split()["muon/decay"] if n != declared]


def test_layer_decay_and_frozen_parameters_route_per_layer() -> None:
    model = GPT()
    model.blocks[1].mlp.requires_grad_(False)
    opt = build_hybrid(model, lr=0.1, layer_decay=0.5)
    got = names_by_group(model, opt)
    assert got["muon/layer_01/decay"] == gpt_block_names(0)["decay"]
    assert got["muon/layer_02/decay"] == gpt_block_names(1)["decay"][:2]  # the frozen MLP is left out
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["muon/layer_01/decay"] == 0.025
    assert lrs["muon/layer_02/decay"] == 0.05
    assert lrs["adamw/layer_00/decay"] == 0.0125


def test_state_writes_reach_the_owning_inner_optimizer() -> None:
    from lit_optim import build_hybrid
    from tests.models import GPT

    hybrid = build_hybrid(GPT(), "muon", lr=0.02, weight_decay=0.1)
    muon, adamw = hybrid.optimizers["muon"], hybrid.optimizers["adamw"]
    matrix = muon.param_groups[0]["params"][0]
    vector = adamw.param_groups[-1]["params"][0]
    assert matrix not in muon.state
    hybrid.state[matrix]["note"] = 1.0  # a parameter with no state yet: created where its owner keeps it
    hybrid.state[vector] = {"note": 2.0}
    assert muon.state[matrix] == {"note": 1.0}
    assert adamw.state[vector] == {"note": 2.0}
    assert hybrid.state[matrix] is muon.state[matrix]
    with pytest.raises(KeyError, match=r"No inner optimizer of this HybridOptimizer holds the parameter \(3,\)"):
        hybrid.state[torch.nn.Parameter(torch.zeros(3))]
