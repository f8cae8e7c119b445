from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from lit_optim import format_groups, param_groups
from lit_optim.optim._no_decay import _type_flags
from tests.models import CNN, GPT, FrozenBackbone, GPTModule, RMSNorm, WithEncoder, gpt_block_names


def named(module: nn.Module, groups: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Group name -> the (first) names of its parameters, in order."""
    names: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    return {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}


def assert_partition(module: nn.Module, groups: list[dict[str, Any]], include_frozen: bool = False) -> None:
    """Every (trainable) parameter is in exactly one group; group names are unique."""
    grouped = [id(p) for g in groups for p in g["params"]]
    expected = {id(p) for p in module.parameters() if include_frozen or p.requires_grad}
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == expected
    assert len({g["name"] for g in groups}) == len(groups)


GPT_DECAY = ["tok_emb.weight", "pos_emb.weight", *gpt_block_names(0)["decay"], *gpt_block_names(1)["decay"]]
GPT_NO_DECAY = [*gpt_block_names(0)["no_decay"], *gpt_block_names(1)["no_decay"], "ln_f.weight", "ln_f.bias"]


def test_gpt_default_groups() -> None:
    model = GPT()
    groups = param_groups(model, lr=3e-4, weight_decay=0.1)
    assert named(model, groups) == {"decay": GPT_DECAY, "no_decay": GPT_NO_DECAY}
    assert [(g["lr"], g["applied_lr_scale"], g["weight_decay"]) for g in groups] == [(3e-4, 1.0, 0.1), (3e-4, 1.0, 0.0)]
    assert set(groups[0]) == {"params", "name", "lr", "applied_lr_scale", "weight_decay"}
    assert_partition(model, groups)


def test_tied_lm_head_appears_once_under_first_name() -> None:
    model = GPT()
    assert model.lm_head.weight is model.tok_emb.weight
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert ids.count(id(model.tok_emb.weight)) == 1
    assert "lm_head.weight" not in [n for names in named(model, groups).values() for n in names]


def test_exclude_embeddings_also_excludes_the_tied_head() -> None:
    model = GPT()
    groups = param_groups(model, decay_embeddings=False)
    assert named(model, groups) == {
        "no_decay": ["tok_emb.weight", "pos_emb.weight", *GPT_NO_DECAY],
        "decay": GPT_DECAY[2:],
    }


def test_tied_parameter_is_not_decayed_if_any_occurrence_says_so() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 2, bias=False)
            self.norm = nn.LayerNorm((2, 2))  # 2-D weight: only the norm rule excludes it
            self.norm.weight = self.proj.weight

    model = Tied()
    assert named(model, param_groups(model)) == {"no_decay": ["proj.weight", "norm.bias"]}


def test_cnn_batchnorm_groupnorm() -> None:
    model = CNN()
    groups = param_groups(model)
    assert named(model, groups) == {
        "decay": ["conv1.weight", "conv2.weight", "fc.weight"],
        "no_decay": ["conv1.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "fc.bias"],
    }
    assert_partition(model, groups)


NORM_CLASSES = [
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LazyInstanceNorm2d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.LocalResponseNorm, RMSNorm,
]  # fmt: skip


@pytest.mark.parametrize("cls", NORM_CLASSES, ids=lambda c: c.__name__)
def test_every_norm_class_is_a_no_decay_module(cls: type[nn.Module]) -> None:
    assert _type_flags(cls)[0]


@pytest.mark.parametrize("cls", [nn.Linear, nn.Conv2d, nn.Embedding, nn.MultiheadAttention, nn.Dropout])
def test_other_classes_are_not_norms(cls: type[nn.Module]) -> None:
    assert not _type_flags(cls)[0]


def test_norm_rule_applies_to_multi_dimensional_norm_weights() -> None:
    class LayerNorm2d(nn.Module):  # timm's ConvNeXt naming
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2, 3))

    class Odd(nn.LayerNorm):  # a subclass with an unrelated name: caught through its base class
        pass

    model = nn.Sequential(nn.LayerNorm((2, 3)), nn.RMSNorm((2, 3)), LayerNorm2d(), Odd((2, 3)), nn.Linear(3, 3))
    assert named(model, param_groups(model)) == {
        "no_decay": ["0.weight", "0.bias", "1.weight", "2.weight", "3.weight", "3.bias", "4.bias"],
        "decay": ["4.weight"],
    }


def test_frozen_parameters_left_out_or_included() -> None:
    model = FrozenBackbone()
    groups = param_groups(model)
    assert named(model, groups) == {
        "decay": ["layers.1.weight", "head.weight"],
        "no_decay": ["layers.1.bias", "head.bias"],
    }
    assert_partition(model, groups)
    groups = param_groups(model, include_frozen=True)
    assert named(model, groups) == {
        "decay": ["embed.weight", "layers.0.weight", "layers.1.weight", "head.weight"],
        "no_decay": ["embed.bias", "layers.0.bias", "layers.1.bias", "head.bias"],
    }
    assert_partition(model, groups, include_frozen=True)


def test_frozen_parameters_do_not_shift_layer_ids() -> None:
    frozen, trainable = FrozenBackbone(), FrozenBackbone().requires_grad_(True)
    # layers: 2 blocks -> ids 1, 2; embed -> 0; head -> 3 = num_layers.
    expected = {
        "layer_00/decay": (["embed.weight"], 0.125),
        "layer_00/no_decay": (["embed.bias"], 0.125),
        "layer_01/decay": (["layers.0.weight"], 0.25),
        "layer_01/no_decay": (["layers.0.bias"], 0.25),
        "layer_02/decay": (["layers.1.weight"], 0.5),
        "layer_02/no_decay": (["layers.1.bias"], 0.5),
        "layer_03/decay": (["head.weight"], 1.0),
        "layer_03/no_decay": (["head.bias"], 1.0),
    }
    groups = param_groups(trainable, layer_decay=0.5)
    got = {g["name"]: (named(trainable, [g])[g["name"]], g["applied_lr_scale"]) for g in groups}
    assert got == expected
    groups = param_groups(frozen, layer_decay=0.5)
    got = {g["name"]: (named(frozen, [g])[g["name"]], g["applied_lr_scale"]) for g in groups}
    assert got == {k: v for k, v in expected.items() if k[:8] in ("layer_02", "layer_03")}


def test_nested_in_lightning_module() -> None:
    module = GPTModule()
    groups = param_groups(module)
    assert named(module, groups) == {
        "decay": ["model." + n for n in GPT_DECAY],
        "no_decay": ["model." + n for n in GPT_NO_DECAY],
    }
    assert_partition(module, groups)


def test_no_weight_decay_names_resolved_with_submodule_prefix() -> None:
    model = WithEncoder()
    groups = param_groups(model)
    assert named(model, groups) == {
        "no_decay": ["encoder.cls_token", "encoder.pos_embed", "encoder.proj.bias", "head.bias"],
        "decay": ["encoder.proj.weight", "head.weight"],
    }
    assert_partition(model, groups)


def test_extra_no_decay_rules() -> None:
    model = GPT()
    groups = param_groups(
        model,
        no_decay=[
            nn.Embedding,  # a module class
            "blocks.0.mlp.*",  # a glob
            re.compile(r"out_proj\.weight$"),  # a regex (searched)
            lambda name, p: name == "blocks.1.attn.in_proj_weight",  # a predicate
        ],
    )
    assert named(model, groups)["decay"] == [
        "blocks.0.attn.in_proj_weight",
        "blocks.1.mlp.0.weight",
        "blocks.1.mlp.2.weight",
    ]
    assert_partition(model, groups)


def test_layer_decay_gpt_closed_form() -> None:
    model = GPT()
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.75)
    # 2 blocks: embeddings id 0, blocks 1..2, head (ln_f) id 3 = num_layers; scale = 0.75 ** (3 - id).
    by_name = named(model, groups)
    assert list(by_name) == [
        "layer_00/decay", "layer_01/no_decay", "layer_01/decay", "layer_02/no_decay", "layer_02/decay",
        "layer_03/no_decay",
    ]  # fmt: skip
    assert by_name["layer_00/decay"] == ["tok_emb.weight", "pos_emb.weight"]
    assert by_name["layer_01/decay"] == gpt_block_names(0)["decay"]
    assert by_name["layer_02/no_decay"] == gpt_block_names(1)["no_decay"]
    assert by_name["layer_03/no_decay"] == ["ln_f.weight", "ln_f.bias"]
    for g in groups:
        layer = int(g["name"][6:8])
        assert g["applied_lr_scale"] == 0.75 ** (3 - layer)
        assert g["lr"] == 1.0 * 0.75 ** (3 - layer)
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else 0.1)
    assert_partition(model, groups)


def test_layer_id_fn_overrides_automatic_assignment() -> None:
    model = GPT()
    groups = param_groups(
        model, lr=1.0, layer_decay=0.5, layer_id_fn=lambda name: 0 if name.startswith("blocks") else 2
    )
    assert {g["name"]: g["lr"] for g in groups} == {
        "layer_02/decay": 1.0, "layer_00/no_decay": 0.25, "layer_00/decay": 0.25, "layer_02/no_decay": 1.0,
    }  # fmt: skip


def test_override_by_glob_and_by_module() -> None:
    model = GPT()
    groups = param_groups(
        model,
        lr=1.0,
        weight_decay=0.1,
        overrides={"blocks.1.*": {"lr_scale": 0.5, "betas": (0.9, 0.95)}, model.ln_f: {"lr": 2.0, "name": "final"}},
    )
    by_name = named(model, groups)
    assert by_name == {
        "decay": GPT_DECAY[:6],
        "no_decay": gpt_block_names(0)["no_decay"],
        "blocks.1/no_decay": gpt_block_names(1)["no_decay"],
        "blocks.1/decay": gpt_block_names(1)["decay"],
        "final/no_decay": ["ln_f.weight", "ln_f.bias"],
    }
    settings = {g["name"]: {k: v for k, v in g.items() if k not in ("params", "name")} for g in groups}
    assert settings["blocks.1/decay"] == {
        "lr": 0.5, "applied_lr_scale": 0.5, "weight_decay": 0.1, "betas": (0.9, 0.95)
    }  # fmt: skip
    assert settings["final/no_decay"] == {"lr": 2.0, "applied_lr_scale": 1.0, "weight_decay": 0.0}
    assert_partition(model, groups)


def test_override_weight_decay_never_applies_to_no_decay_parameters() -> None:
    model = CNN()
    groups = param_groups(model, weight_decay=0.1, overrides={"fc.*": {"weight_decay": 0.5}})
    assert {g["name"]: (named(model, [g])[g["name"]], g["weight_decay"]) for g in groups} == {
        "decay": (["conv1.weight", "conv2.weight"], 0.1),
        "no_decay": (["conv1.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "fc.bias"], 0.0),
        "fc/decay": (["fc.weight"], 0.5),
    }


@pytest.mark.parametrize("reverse", [False, True])
def test_more_specific_override_wins_whatever_the_order(reverse: bool) -> None:
    model = GPT()
    items = [("blocks.*", {"lr": 0.1, "momentum": 0.8}), ("blocks.1.mlp.*", {"lr": 0.2})]
    groups = param_groups(model, lr=1.0, overrides=dict(reversed(items) if reverse else items), optimizer="sgd")
    lrs = {n: g["lr"] for g in groups for n in named(model, [g])[g["name"]]}
    moms = {n: g.get("momentum") for g in groups for n in named(model, [g])[g["name"]]}
    assert (lrs["blocks.1.mlp.0.weight"], moms["blocks.1.mlp.0.weight"]) == (0.2, 0.8)
    assert (lrs["blocks.1.attn.in_proj_weight"], lrs["ln_f.bias"]) == (0.1, 1.0)
    assert {g["name"] for g in groups} >= {"blocks+blocks.1.mlp/decay", "blocks/decay"}


def test_equally_specific_overrides_later_wins() -> None:
    model = CNN()
    groups = param_groups(model, lr=1.0, overrides={"fc.*": {"lr": 0.1}, model.fc: {"lr": 0.3}})
    assert [g["lr"] for g in groups if "fc.weight" in named(model, [g])[g["name"]]] == [0.3]


def test_override_equal_to_defaults_merges_groups() -> None:
    model = CNN()
    groups = param_groups(model, lr=1.0, overrides={"fc.*": {"lr": 1.0, "lr_scale": 1.0}})
    assert named(model, groups) == named(model, param_groups(model, lr=1.0))


def test_override_glob_matches_tied_alias() -> None:
    model = GPT()
    groups = param_groups(model, lr=1.0, overrides={"lm_head.*": {"lr": 0.5}})
    assert named(model, groups)["lm_head/decay"] == ["tok_emb.weight"]


def test_format_groups_table() -> None:
    table = format_groups(param_groups(GPT(), lr=3e-4, weight_decay=0.1, overrides={"ln_f.*": {"betas": (0.9, 0.95)}}))
    assert table.splitlines() == [
        "name           tensors  parameters  lr      lr_scale  weight_decay  other",
        "-------------  -------  ----------  ------  --------  ------------  -----------------",
        "decay          10       1,672       0.0003  1         0.1",
        "no_decay       14       192         0.0003  1         0",
        "ln_f/no_decay  2        16          0.0003  1         0             betas=(0.9, 0.95)",
    ]


def test_groups_are_deterministic() -> None:
    model = GPT()
    first = param_groups(model, layer_decay=0.8, overrides={"blocks.0.*": {"lr_scale": 2.0}})
    second = param_groups(model, layer_decay=0.8, overrides={"blocks.0.*": {"lr_scale": 2.0}})
    assert [(g["name"], [id(p) for p in g["params"]]) for g in first] == [
        (g["name"], [id(p) for p in g["params"]]) for g in second
    ]


# --- bad input ---


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -0.1}, ValueError, r"`lr` must be >= 0 and finite, got -0.1"),
        ({"weight_decay": -1.0}, ValueError, r"`weight_decay` must be >= 0 and finite, got -1.0"),
        ({"layer_decay": 0.0}, ValueError, r"`layer_decay` must be in \(0, 1\], got 0.0"),
        ({"layer_decay": 1.5}, ValueError, r"`layer_decay` must be in \(0, 1\], got 1.5"),
        ({"layer_id_fn": lambda n: 0}, ValueError, r"`layer_id_fn` is only used with `layer_decay`"),
        ({"layer_decay": 0.5, "layer_id_fn": lambda n: -1}, ValueError, r"int >= 0, got -1 for parameter 'tok_emb"),
        ({"layer_decay": 0.5, "layer_id_fn": lambda n: "1"}, TypeError, r"int >= 0, got '1' \(str\)"),
        ({"no_decay": [3]}, TypeError, r"Each `no_decay` rule must be .*, got 3 \(int\)"),
        ({"overrides": {3: {"lr": 1.0}}}, TypeError, r"glob string or an nn.Module, got 3 \(int\)"),
        ({"overrides": {"blocks.*": 0.1}}, TypeError, r"Override 'blocks.\*' must map to a dict of settings, got 0.1"),
        ({"overrides": {"blocks.*": {"lr": -1.0}}}, ValueError, r"`overrides\['blocks.\*'\]\['lr'\]` must be >= 0"),
        ({"overrides": {"blocks.*": {"params": []}}}, ValueError, r"Unknown setting 'params'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        param_groups(GPT(), **kwargs)


@pytest.mark.parametrize(
    ("key", "closest"), [("weight_decy", "weight_decay"), ("lr_sclae", "lr_scale"), ("beta", "betas")]
)
def test_misspelled_override_key(key: str, closest: str) -> None:
    with pytest.raises(ValueError, match=rf"Unknown setting '{key}'\. Valid: \[.*\]\. Did you mean '{closest}'\?"):
        param_groups(GPT(), overrides={"blocks.*": {key: 0.1}})


def test_override_key_checked_against_the_given_optimizer() -> None:
    with pytest.raises(
        ValueError,
        match=r"Unknown setting 'betas'\. Valid: \['dampening', .*\]\. It appears in override 'blocks.\*'; "
        r"settings are the hyper-parameters of SGD plus lit_optim's 'lr_scale' and 'name'\.",
    ):
        param_groups(GPT(), overrides={"blocks.*": {"betas": (0.9, 0.9)}}, optimizer="sgd")
    groups = param_groups(GPT(), overrides={"blocks.*": {"momentum": 0.5}}, optimizer="sgd")
    assert [(g["name"], g.get("momentum")) for g in groups] == [
        ("decay", None), ("blocks/no_decay", 0.5), ("blocks/decay", 0.5), ("no_decay", None),
    ]  # fmt: skip


def test_pattern_matching_nothing_shows_names_and_closest() -> None:
    with pytest.raises(
        ValueError,
        match=r"Override pattern 'blocks.9.\*' matched no parameter\. Parameters look like: 'tok_emb.weight', "
        r"'pos_emb.weight', 'blocks.0.ln1.weight', \.\.\. Did you mean 'blocks.1.\*'\? "
        r"HINT: patterns are fnmatch globs",
    ):
        param_groups(GPT(), overrides={"blocks.9.*": {"lr": 0.1}})


def test_pattern_that_is_a_module_name_gets_a_hint() -> None:
    with pytest.raises(ValueError, match=r"'ln_f' is a module name; use 'ln_f.\*' or pass the module itself"):
        param_groups(GPT(), overrides={"ln_f": {"lr": 0.1}})


def test_override_module_outside_the_model() -> None:
    with pytest.raises(ValueError, match=r"Override module Linear is not a submodule of GPT"):
        param_groups(GPT(), overrides={nn.Linear(2, 2): {"lr": 0.1}})


def test_partly_overlapping_overrides_with_different_values_are_ambiguous() -> None:
    with pytest.raises(
        ValueError,
        match=r"Parameter 'blocks.0.attn.in_proj_weight' is claimed by overrides 'blocks.0.\*' \(lr=0.1\) and "
        r"'\*.attn.\*' \(lr=0.2\), which overlap only partly",
    ):
        param_groups(GPT(), overrides={"blocks.0.*": {"lr": 0.1}, "*.attn.*": {"lr": 0.2}})


def test_ambiguity_settled_by_an_override_for_the_overlap() -> None:
    model = GPT()
    overrides = {"blocks.0.*": {"lr": 0.1}, "*.attn.*": {"lr": 0.2}, "blocks.0.attn.*": {"lr": 0.3}}
    groups = param_groups(model, overrides=overrides)
    lrs = {n: g["lr"] for g in groups for n in named(model, [g])[g["name"]]}
    assert (lrs["blocks.0.attn.in_proj_weight"], lrs["blocks.0.mlp.0.weight"], lrs["blocks.1.attn.in_proj_bias"]) == (
        0.3, 0.1, 0.2,
    )  # fmt: skip


def test_same_values_in_overlapping_overrides_are_fine() -> None:
    groups = param_groups(GPT(), overrides={"blocks.0.*": {"lr": 0.1}, "*.attn.*": {"lr": 0.1}})
    assert {g["lr"] for g in groups} == {0.1, 1e-3}


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (
            FrozenBackbone().requires_grad_(False),
            r"FrozenBackbone has no trainable parameters to optimize \(all 8 are frozen; pass include_frozen=True",
        ),
        (nn.ReLU(), r"ReLU has no trainable parameters to optimize \(it has none\)"),
    ],
)
def test_no_trainable_parameters(model: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        param_groups(model)


def test_layer_decay_without_module_list_asks_for_layer_id_fn() -> None:
    with pytest.raises(
        ValueError, match=r"Sequential has no nn.ModuleList or nn.Sequential of blocks \(at least two\)\. HINT: pass"
    ):
        param_groups(nn.Sequential(nn.Linear(2, 2)), layer_decay=0.5)


def test_format_groups_of_an_optimizer_shows_only_non_default_settings() -> None:
    model = CNN()
    groups = param_groups(model, lr=0.1, overrides={"fc.*": {"betas": (0.8, 0.9)}}, optimizer="adam")
    opt = torch.optim.Adam(groups, lr=0.1, betas=(0.9, 0.99))
    assert format_groups(opt).splitlines() == [
        "name         tensors  parameters  lr   lr_scale  weight_decay  other",
        "-----------  -------  ----------  ---  --------  ------------  ----------------",
        "decay        2        252         0.1  1         0.01",
        "no_decay     5        20          0.1  1         0",
        "fc/decay     1        8           0.1  1         0.01          betas=(0.8, 0.9)",
        "fc/no_decay  1        2           0.1  1         0             betas=(0.8, 0.9)",
    ]


def test_include_frozen_with_layer_decay_keeps_ids() -> None:
    model = FrozenBackbone()
    groups = param_groups(model, layer_decay=0.5, include_frozen=True)
    assert [(g["name"], g["applied_lr_scale"]) for g in groups] == [
        ("layer_00/decay", 0.125), ("layer_00/no_decay", 0.125), ("layer_01/decay", 0.25),
        ("layer_01/no_decay", 0.25), ("layer_02/decay", 0.5), ("layer_02/no_decay", 0.5),
        ("layer_03/decay", 1.0), ("layer_03/no_decay", 1.0),
    ]  # fmt: skip
    assert_partition(model, groups, include_frozen=True)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ([("blocks.*", {"lr": 0.1})], TypeError, r"`overrides` must be a mapping pattern -> settings, got list"),
        ({"blocks.*": {"name": 3}}, TypeError, r"`overrides\['blocks.\*'\]\['name'\]` must be a string, got 3"),
        ({"blocks.*": {"lr_scale": -2.0}}, ValueError, r"`overrides\['blocks.\*'\]\['lr_scale'\]` must be >= 0"),
    ],
)
def test_bad_overrides(overrides: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        param_groups(GPT(), overrides=overrides)


@pytest.mark.parametrize("model_cls", [GPT, CNN, FrozenBackbone, WithEncoder, GPTModule])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"decay_embeddings": False, "include_frozen": True},
        {"layer_decay": 0.7, "layer_id_fn": lambda name: name.count(".")},
        {
            "overrides": {"*.weight": {"lr_scale": 0.5}, "*.bias": {"lr": 0.2}},
            "no_decay": [re.compile(r"\.0\.|conv1|proj")],
        },
    ],
    ids=["defaults", "frozen-embeddings", "layer-fn", "overrides"],
)
def test_every_parameter_in_exactly_one_group(model_cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    model = model_cls()
    groups = param_groups(model, **kwargs)
    assert_partition(model, groups, include_frozen=kwargs.get("include_frozen", False))
    for g in groups:
        assert g["lr"] == pytest.approx(g["applied_lr_scale"] * (0.2 if "bias" in g["name"] else 1e-3))
        assert (g["weight_decay"] == 0.0) == g["name"].endswith("no_decay")


def test_docs_table_is_the_real_output() -> None:
    from pathlib import Path

    section = (Path(__file__).resolve().parent.parent / "docs" / "param-groups.md").read_text()
    table = section[section.index("```text\n") + 8 :].split("```")[0].rstrip("\n")
    model = GPT()
    overrides = {model.ln_f: {"lr_scale": 2.0}, "blocks.*.mlp.*": {"betas": (0.9, 0.95)}}
    assert table == format_groups(param_groups(model, lr=3e-4, weight_decay=0.1, layer_decay=0.8, overrides=overrides))


def test_lazy_parameters_must_be_materialized_first() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"Parameter '1.weight' of LazyLinear is not initialized yet .*forward pass"):
        param_groups(model)
    model(torch.ones(1, 2))
    assert named(model, param_groups(model)) == {"decay": ["0.weight", "1.weight"], "no_decay": ["0.bias", "1.bias"]}


class SharedModule(nn.Module):
    """One module instance reachable under two names (`out` is `emb`), as in weight-shared heads or ALBERT."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 2)
        self.mid = nn.Linear(2, 2)
        self.out = self.emb

    def no_weight_decay(self) -> set[str]:
        return {"out.weight"}


def test_shared_module_second_path_matches_globs_rules_and_declared_names() -> None:
    model = SharedModule()
    groups = param_groups(model, lr=1.0, overrides={"out.*": {"lr": 0.5}})
    assert named(model, groups) == {"out/no_decay": ["emb.weight"], "decay": ["mid.weight"], "no_decay": ["mid.bias"]}
    assert [g["lr"] for g in groups] == [0.5, 1.0, 1.0]
    plain = nn.Module()
    plain.emb = nn.Embedding(4, 2)
    plain.out = plain.emb
    assert named(plain, param_groups(plain, no_decay=["out.*"])) == {"no_decay": ["emb.weight"]}


# torch.compile's first use imports torch internals that still call the deprecated torch.jit.script_method
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_submodule_patterns_may_leave_out_orig_mod() -> None:
    model = nn.Module()
    model.backbone = torch.compile(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    model.head = nn.Linear(2, 1)
    groups = param_groups(model, lr=1.0, overrides={"backbone.0.*": {"lr": 0.5}}, no_decay=["backbone.0.weight"])
    assert named(model, groups) == {
        "backbone.0/no_decay": ["backbone._orig_mod.0.weight", "backbone._orig_mod.0.bias"],
        "no_decay": ["backbone._orig_mod.1.weight", "backbone._orig_mod.1.bias", "head.bias"],
        "decay": ["head.weight"],
    }
    assert [g["lr"] for g in groups] == [0.5, 1.0, 1.0]
    same = param_groups(
        model,
        lr=1.0,
        overrides={"backbone._orig_mod.0.*": {"lr": 0.5, "name": "backbone.0"}},
        no_decay=["backbone._orig_mod.0.weight"],
    )
    assert named(model, same) == named(model, groups)
    # both spellings in one mapping: the more specific override wins (not a tied-parameter conflict)
    mixed = param_groups(model, lr=1.0, overrides={"backbone._orig_mod.*": {"lr": 0.1}, "backbone.0.*": {"lr": 0.5}})
    assert [(g["name"], g["lr"]) for g in mixed] == [
        ("backbone._orig_mod+backbone.0/decay", 0.5), ("backbone._orig_mod+backbone.0/no_decay", 0.5),
        ("backbone._orig_mod/no_decay", 0.1),
        ("decay", 1.0), ("no_decay", 1.0),
    ]  # fmt: skip


def test_attention_key_value_biases_are_biases() -> None:
    model = nn.MultiheadAttention(4, 2, add_bias_kv=True)
    assert model.bias_k.ndim == 3  # neither the ndim rule nor "ends in bias" catches it
    assert named(model, param_groups(model)) == {
        "decay": ["in_proj_weight", "out_proj.weight"],
        "no_decay": ["in_proj_bias", "bias_k", "bias_v", "out_proj.bias"],
    }


def test_merged_group_takes_the_plain_name_not_a_no_op_override_label() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = param_groups(model, lr=0.1, overrides={"0.*": {"lr": 0.1}, "1.weight": {"lr": 0.2}})
    # 0.bias (override "0", a no-op) and 1.bias (no override) merge under the plainer name
    assert named(model, groups) == {
        "0/decay": ["0.weight"],
        "no_decay": ["0.bias", "1.bias"],
        "1.weight/decay": ["1.weight"],
    }


def test_layer_decay_puts_a_stem_before_the_blocks_at_layer_0() -> None:
    class ConvNeXtLike(nn.Module):  # timm's ConvNeXt shape: stem, stages, final norm, head
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 2, bias=False)
            self.stages = nn.ModuleList([nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False)])
            self.head = nn.Linear(4, 2, bias=False)

    model = ConvNeXtLike()
    groups = param_groups(model, lr=1.0, layer_decay=0.5)
    assert [(g["name"], g["lr"], named(model, [g])[g["name"]]) for g in groups] == [
        ("layer_00/decay", 0.125, ["stem.weight"]),
        ("layer_01/decay", 0.25, ["stages.0.weight"]),
        ("layer_02/decay", 0.5, ["stages.1.weight"]),
        ("layer_03/decay", 1.0, ["head.weight"]),
    ]


def test_layer_decay_of_one_is_no_layer_decay() -> None:
    # every layer scale is 1, so all layers merge: naming them all "layer_00" would mislabel the LR logs
    model = GPT()
    groups = param_groups(model, lr=0.1, layer_decay=1.0)
    assert named(model, groups) == named(model, param_groups(model, lr=0.1)) == {
        "decay": GPT_DECAY,
        "no_decay": GPT_NO_DECAY,
    }
    assert [(g["lr"], g["applied_lr_scale"]) for g in groups] == [(0.1, 1.0), (0.1, 1.0)]


def test_tied_parameter_named_differently_by_two_overrides_is_ambiguous() -> None:
    model = GPT()  # lm_head.weight is tok_emb.weight
    with pytest.raises(
        ValueError,
        match=r"Parameter 'tok_emb\.weight' is tied \(also named \['lm_head\.weight'\]\); overrides 'tok_emb\.\*' "
        r"\(lr=0\.1\) and 'lm_head\.\*' \(lr=0\.5\) reach it by different names and disagree\. HINT: a tied "
        r"parameter has one 'lr'",
    ):
        param_groups(model, overrides={"tok_emb.*": {"lr": 0.1}, "lm_head.*": {"lr": 0.5}})
    tied = GPT()
    tied.ln_f.weight = nn.Parameter(torch.ones(11, 8))
    tied.lm_head.weight = tied.ln_f.weight
    with pytest.raises(ValueError, match=r"overrides LayerNorm \(lr=0\.1\) and 'lm_head\.\*'"):
        param_groups(tied, overrides={tied.ln_f: {"lr": 0.1}, "lm_head.*": {"lr": 0.5}})
    # agreeing values, or an override naming the parameter by both names, are fine
    agree = param_groups(model, lr=1.0, overrides={"tok_emb.*": {"lr": 0.5}, "lm_head.*": {"lr": 0.5}})
    assert named(model, agree)["tok_emb+lm_head/decay"] == ["tok_emb.weight"]
    specific = param_groups(model, lr=1.0, overrides={"*.weight": {"lr": 0.1}, "lm_head.*": {"lr": 0.5}})
    assert [g["lr"] for g in specific if "tok_emb.weight" in named(model, [g])[g["name"]]] == [0.5]


def test_data_parallel_wrapper_patterns_may_leave_out_module() -> None:
    inner = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    wrapped = nn.DataParallel(inner)  # DistributedDataParallel names its parameters the same way
    groups = param_groups(wrapped, lr=1.0, overrides={"1.*": {"lr": 0.5}})
    assert named(wrapped, groups) == {
        "decay": ["module.0.weight"],
        "no_decay": ["module.0.bias"],
        "1/decay": ["module.1.weight"],
        "1/no_decay": ["module.1.bias"],
    }
    assert [g["lr"] for g in groups] == [1.0, 1.0, 0.5, 0.5]
    assert named(wrapped, param_groups(wrapped, lr=1.0, overrides={"module.1.*": {"lr": 0.5, "name": "1"}})) == (
        named(wrapped, groups)
    )


def test_no_decay_module_class_covers_all_its_parameters() -> None:
    model = GPT()
    # nn.MultiheadAttention's parameters include its out_proj submodule's, as attn.parameters() does
    groups = param_groups(model, no_decay=[nn.MultiheadAttention])
    assert named(model, groups)["decay"] == [
        "tok_emb.weight", "pos_emb.weight", "blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight",
        "blocks.1.mlp.0.weight", "blocks.1.mlp.2.weight",
    ]  # fmt: skip
    assert_partition(model, groups)


class OneRuleEach(nn.Module):
    """Parameters each caught by exactly one no-decay rule (and one caught by none), so each rule is tested alone."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.PReLU(4)  # 1-D `weight` of a non-norm module: only the ndim <= 1 rule
        self.gamma = nn.Parameter(torch.ones(4))  # a layer-scale gamma: only the ndim <= 1 rule
        self.logit_scale = nn.Parameter(torch.tensor(2.0))  # 0-D: only the ndim <= 1 rule
        self.rel_pos_bias = nn.Parameter(torch.zeros(3, 3))  # 2-D, ends in "bias": only the bias-suffix rule
        self.bias_table = nn.Parameter(torch.zeros(3, 3))  # 2-D, starts with "bias_": only the bias-prefix rule
        self.proj = nn.Linear(4, 4, bias=False)  # 2-D weight: decayed


@pytest.mark.parametrize(
    ("name", "decayed"),
    [("act.weight", False), ("gamma", False), ("logit_scale", False), ("rel_pos_bias", False),
     ("bias_table", False), ("proj.weight", True)],
)  # fmt: skip
def test_each_no_decay_rule_alone(name: str, decayed: bool) -> None:
    model = OneRuleEach()
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1)}
    param = model.get_parameter(name)
    group = next(g for g in groups.values() if any(p is param for p in g["params"]))
    assert group["name"] == ("decay" if decayed else "no_decay")
    assert group["weight_decay"] == (0.1 if decayed else 0.0)


def test_a_no_decay_rule_excluding_an_already_excluded_parameter_is_not_matching_nothing() -> None:
    model = OneRuleEach()
    groups = param_groups(model, no_decay=["gamma"])  # already no-decay by the 1-D rule; the rule did match
    assert [g["name"] for g in groups] == ["no_decay", "decay"]


def test_an_override_that_only_names_keeps_its_own_groups() -> None:
    # `{"head": {"name": ...}}` asks for the head's own groups (to log its lr apart); merging them back into
    # "decay"/"no_decay" because the settings are equal would silently drop the request.
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    groups = param_groups(model, lr=0.1, overrides={"1.*": {"name": "head"}})
    assert named(model, groups) == {
        "decay": ["0.weight"],
        "no_decay": ["0.bias"],
        "head/decay": ["1.weight"],
        "head/no_decay": ["1.bias"],
    }
    assert {g["lr"] for g in groups} == {0.1}
    # two overrides with the same name and settings still share one group
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    groups = param_groups(model, overrides={"1.weight": {"name": "mid"}, "2.weight": {"name": "mid"}})
    assert named(model, groups)["mid/decay"] == ["1.weight", "2.weight"]


def test_no_weight_decay_keywords_of_the_swin_repo_are_honoured() -> None:
    # microsoft/Swin-Transformer (and models built on it) declare `no_weight_decay_keywords()`: every parameter
    # whose name contains one gets no decay; its `relative_position_bias_table` is 2-D, so no other rule catches it
    class WindowAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
            self.qkv = nn.Linear(2, 6)

    class SwinTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, 2))
            self.layers = nn.ModuleList(WindowAttention() for _ in range(2))

        def no_weight_decay(self) -> set[str]:
            return {"absolute_pos_embed"}

        def no_weight_decay_keywords(self) -> set[str]:
            return {"relative_position_bias_table"}

    model = nn.Module()
    model.backbone = SwinTransformer()  # as a LightningModule holds it: keywords apply under its prefix
    model.head = nn.Linear(2, 1)
    model.head.relative_position_bias_table = nn.Parameter(torch.zeros(2, 2))  # outside the declaring module
    groups = named(model, param_groups(model))
    assert groups["no_decay"] == ["backbone.absolute_pos_embed", "backbone.layers.0.relative_position_bias_table",
                                  "backbone.layers.0.qkv.bias", "backbone.layers.1.relative_position_bias_table",
                                  "backbone.layers.1.qkv.bias", "head.bias"]  # fmt: skip
    assert groups["decay"] == ["backbone.layers.0.qkv.weight", "backbone.layers.1.qkv.weight", "head.weight",
                               "head.relative_position_bias_table"]  # fmt: skip
