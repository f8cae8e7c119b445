"""Every mistake a user can make with groups and optimizers raises (or warns) with a message that says the fix.

One row per mistake: what was silently accepted or failed deep inside torch before, and the message now.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lit_optim import build_optimizer, configure_optimizers, param_groups
from tests.models import GPT, FrozenBackbone

M = GPT()

CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # --- silently wrong before ---
    ("no_decay-bare-string", lambda: param_groups(M, no_decay="*.pos_embed"), TypeError,
     r"`no_decay` must be a list of rules, got the single rule '\*\.pos_embed' \(str\) \(a string would be read "
     r"character by character\)\. HINT: wrap it in a list: no_decay=\['\*\.pos_embed'\]\."),
    ("no_decay-bare-class", lambda: param_groups(M, no_decay=nn.LayerNorm), TypeError,
     r"`no_decay` must be a list of rules, got the single rule <class .*LayerNorm'> \(type\)\. HINT: wrap it"),
    ("no_decay-glob-matching-nothing", lambda: param_groups(M, no_decay=["*.pos_embd"]), ValueError,
     r"`no_decay` rule '\*\.pos_embd' matched no parameter\. Parameters look like: 'tok_emb\.weight', "
     r"'pos_emb\.weight', 'blocks\.0\.ln1\.weight', \.\.\. HINT: globs match full parameter names"),
    ("no_decay-regex-matching-nothing", lambda: param_groups(M, no_decay=[re.compile("pos_embd")]), ValueError,
     r"`no_decay` rule re\.compile\('pos_embd'\) matched no parameter\..* regexes are searched anywhere"),
    ("no_decay-class-matching-nothing", lambda: param_groups(M, no_decay=[nn.Conv2d]), ValueError,
     r"`no_decay` rule Conv2d matches no module of GPT\. HINT: remove it"),
    ("override-matching-only-frozen", lambda: param_groups(FrozenBackbone(), overrides={"embed.*": {"lr": 0.1}}),
     ValueError, r"Override 'embed\.\*' matches only frozen parameters \(2, e\.g\. 'embed\.weight'\), so it would "
     r"change nothing\. HINT: unfreeze them before grouping, pass include_frozen=True"),
    ("overrides-sharing-a-name", lambda: param_groups(
        M, overrides={"blocks.0.*": {"lr": 0.1, "name": "x"}, "blocks.1.*": {"lr": 0.2, "name": "x"}}),
     ValueError, r"Two parameter groups would be named 'x/no_decay': overrides 'blocks\.0\.\*', 'blocks\.1\.\*' "
     r"share that label but set different values, so their groups cannot merge\. HINT: give each override its own"),
    ("decay_embeddings-string", lambda: param_groups(M, decay_embeddings="False"), TypeError,
     r"`decay_embeddings` must be True or False, got 'False' \(str\)\. HINT: a string such as 'False' is truthy"),
    ("include_frozen-int", lambda: param_groups(M, include_frozen=1), TypeError,
     r"`include_frozen` must be True or False, got 1 \(int\)"),
    ("optimizer-typo-without-overrides", lambda: param_groups(M, optimizer="adamww"), ValueError,
     r"Unknown optimizer 'adamww'\. Valid: \[.*'AdamW'.*\]\. Did you mean 'AdamW'\?"),
    ("top-level-lr-shadowed-by-groups", lambda: build_optimizer("adamw", param_groups(M), lr=3e-4), ValueError,
     r"build_optimizer\('AdamW', \.\.\., lr=0\.0003\) would be ignored: every parameter group sets its own 'lr' "
     r"\(0\.001\), .* HINT: set it when building the groups \(param_groups\(model, lr=\.\.\.\)\)"),
    ("top-level-weight_decay-shadowed", lambda: build_optimizer("adamw", param_groups(M), weight_decay=0.1),
     ValueError, r"weight_decay=0\.1\) would be ignored: every parameter group sets its own 'weight_decay' "
     r"\(0\.0, 0\.01\)"),
    ("timm-lr_scale-group", lambda: build_optimizer("adamw", [{"params": [M.ln_f.weight], "lr_scale": 0.5}]),
     ValueError, r"The parameter group 0 has an 'lr_scale' key: timm's convention"),
    ("adamw-decoupled-false", lambda: build_optimizer(
        "adamw", [{"params": [M.ln_f.weight], "decoupled_weight_decay": False}]), ValueError,
     r"AdamW always uses decoupled_weight_decay=True, but the parameter group 0 sets decoupled_weight_decay=False"),
    # --- poor messages before ---
    ("module-instance-outside-the-model", lambda: param_groups(M, no_decay=[nn.LayerNorm(3)]), ValueError,
     r"`no_decay` rule LayerNorm \(a module instance\) is not a submodule of GPT\. HINT: pass a submodule"),
    ("no_decay-rule-of-wrong-type", lambda: param_groups(M, no_decay=[3]), TypeError,
     r"Each `no_decay` rule must be one of nn\.Module subclasses, .* got 3 \(int\)\."),
    ("param_groups-of-parameters", lambda: param_groups(M.parameters()), TypeError,  # type: ignore[arg-type]
     r"`module` must be an nn\.Module \(the model\), got generator\. HINT: pass the model itself"),
    ("build_optimizer-of-a-model", lambda: build_optimizer("adamw", M), TypeError,  # type: ignore[arg-type]
     r"`params` must be an iterable of tensors or of group dicts, got GPT\. HINT: pass lit_optim\.param_groups"),
    ("build_optimizer-of-strings", lambda: build_optimizer("adamw", ["w"]), TypeError,  # type: ignore[list-item]
     r"`params` must hold tensors, \(name, tensor\) pairs or group dicts, got str at index 0"),
    ("build_optimizer-mixing-kinds", lambda: build_optimizer("adamw", [M.ln_f.weight, {"params": [M.ln_f.bias]}]),
     TypeError, r"`params` mixes tensors and group dicts"),
    ("betas-with-one-value", lambda: build_optimizer("adam", M.parameters(), betas=(0.9,)), TypeError,
     r"`betas` of Adam must be a tuple of 2 like its default \(0\.9, 0\.999\), got \(0\.9,\) \(tuple\)\."),
    ("betas-in-an-override", lambda: param_groups(M, optimizer="adam", overrides={"ln_f.*": {"betas": 0.9}}),
     TypeError, r"`betas` of Adam must be a tuple of 2 .* got 0\.9 \(float\) in the override 'ln_f\.\*'\."),
    ("string-lr-in-a-group", lambda: build_optimizer("adamw", [{"params": [M.ln_f.weight], "lr": "1e-3"}]),
     TypeError, r"`lr` of AdamW must be a number, got '1e-3' \(str\) in the parameter group 0\. HINT: pass the "
     r"number 0\.001; YAML 1\.1 reads"),
    ("string-eps", lambda: build_optimizer("adamw", M.parameters(), eps="1e-8"), TypeError,
     r"`eps` of AdamW must be a number, got '1e-8' \(str\)\. HINT: pass the number 1e-08"),
    ("string-nesterov", lambda: build_optimizer("sgd", M.parameters(), nesterov="yes"), TypeError,
     r"`nesterov` of SGD must be True or False, got 'yes' \(str\)\."),
    ("tensor-lr-of-two-values", lambda: param_groups(M, lr=torch.tensor([0.1, 0.2])), TypeError,
     r"A tensor `lr` must hold one float, got tensor\(\[0\.1000, 0\.2000\]\)\."),
    ("tensor-lr-of-two-values-in-an-override",
     lambda: param_groups(M, overrides={"ln_f.*": {"lr": torch.tensor([0.1, 0.2])}}), TypeError,
     r"A tensor `overrides\['ln_f\.\*'\]\['lr'\]` must hold one float, got tensor\(\[0\.1000, 0\.2000\]\)\."),
    ("negative-tensor-lr-in-an-override", lambda: param_groups(M, overrides={"ln_f.*": {"lr": torch.tensor(-1.0)}}),
     ValueError, r"`overrides\['ln_f\.\*'\]\['lr'\]` must be >= 0 and finite, got -1\.0\."),
    ("negative-tensor-lr_scale-in-an-override",
     lambda: param_groups(M, overrides={"ln_f.*": {"lr_scale": torch.tensor(-0.5)}}), ValueError,
     r"`overrides\['ln_f\.\*'\]\['lr_scale'\]` must be >= 0 and finite, got -0\.5\."),
    ("nan-tensor-weight_decay-in-an-override",
     lambda: param_groups(M, overrides={"ln_f.*": {"weight_decay": torch.tensor(float("nan"))}}), ValueError,
     r"`overrides\['ln_f\.\*'\]\['weight_decay'\]` must be a number, got nan\."),
    ("empty-override-name", lambda: param_groups(M, overrides={"ln_f.*": {"lr": 0.5, "name": " "}}), ValueError,
     r"`overrides\['ln_f\.\*'\]\['name'\]` must be a non-empty label, got ' '\. HINT: use a short label"),
    ("layer_id_fn-not-callable", lambda: param_groups(M, layer_decay=0.5, layer_id_fn="tests.models.head_id"),
     TypeError, r"`layer_id_fn` must be a function name -> int, got 'tests\.models\.head_id' \(str\)\. HINT: pass "
     r"the function itself"),
    ("applied_lr_scale-without-lr", lambda: build_optimizer(
        "adamw", [{"params": [M.ln_f.weight], "applied_lr_scale": 0.5}], lr=0.1), ValueError,
     r"The parameter group 0 has 'applied_lr_scale' \(0\.5\) but no 'lr': the key records a scale already "
     r"multiplied into a group's lr, nothing applies it\. HINT: set the group's 'lr'"),
    ("yaml-string-lr", lambda: param_groups(M, lr="1e-3"), TypeError,  # type: ignore[arg-type]
     r"`lr` must be a number, got '1e-3' \(str\)\. HINT: pass the number 0\.001; YAML 1\.1 reads"),
    ("yaml-string-lr_scale-in-an-override", lambda: param_groups(M, overrides={"ln_f.*": {"lr_scale": "5e-1"}}),
     TypeError, r"`overrides\['ln_f\.\*'\]\['lr_scale'\]` must be a number, got '5e-1' \(str\)\. HINT: pass the "
     r"number 0\.5"),
    ("muon-with-1d-parameters", lambda: param_groups(M, optimizer="muon"), ValueError,
     r"Muon only optimizes 2-D parameters \(weight matrices\), but parameter 'blocks\.0\.ln1\.weight' has shape "
     r"\(8,\)\. HINT: give Muon the 2-D weights"),
    ("muon-built-from-groups", lambda: build_optimizer("muon", param_groups(M)), ValueError,
     r"Muon only optimizes 2-D parameters .* parameter #0 of group 'no_decay' has shape \(8,\)"),
    ("muon-named-parameters", lambda: build_optimizer("muon", M.named_parameters()), ValueError,
     r"Muon only optimizes 2-D parameters .* but parameter 'blocks\.0\.ln1\.weight' has shape \(8,\)"),
    ("lbfgs-with-two-groups", lambda: configure_optimizers(M, "lbfgs", overrides={"ln_f.*": {"lr": 0.5}}),
     ValueError, r"LBFGS takes a single parameter group, got 2: \['decay', 'ln_f/no_decay'\]\. HINT: use weight"),
    ("sparseadam-on-dense-parameters", lambda: configure_optimizers(M, "sparseadam"), ValueError,
     r"SparseAdam needs sparse gradients, but parameter 'tok_emb\.weight' is not the weight of an "
     r"nn\.Embedding/nn\.EmbeddingBag with sparse=True \(torch would fail at the first step\)"),
]


@pytest.mark.parametrize(("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_with_the_fix(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_a_submodule_instance_is_a_no_decay_rule() -> None:
    model = GPT()
    groups = param_groups(model, no_decay=[model.blocks[0].mlp])
    no_decay = {id(p) for g in groups if g["name"] == "no_decay" for p in g["params"]}
    assert {id(p) for p in model.blocks[0].mlp.parameters()} <= no_decay
    assert id(model.blocks[1].mlp[0].weight) not in no_decay


def test_tensor_lr_is_accepted_and_scaled() -> None:
    model = GPT()
    lr = torch.tensor(0.01)
    groups = param_groups(model, lr=lr, layer_decay=0.5)
    top = [g for g in groups if g["applied_lr_scale"] == 1.0]
    assert all(g["lr"] is lr for g in top)  # scale 1: the very tensor the user passed
    for g in groups:
        assert float(g["lr"]) == pytest.approx(0.01 * g["applied_lr_scale"], rel=1e-6)
    build_optimizer("adamw", groups)


def test_sparse_adam_on_sparse_embeddings_is_accepted() -> None:
    model = nn.Embedding(5, 3, sparse=True)
    opt = configure_optimizers(model, "sparseadam")["optimizer"]
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()


def test_tensor_lr_groups_with_equal_settings_still_merge() -> None:
    model = GPT()
    lr = torch.tensor(0.01)
    plain = param_groups(model, lr=0.01, layer_decay=0.5, overrides={"blocks.0.mlp.*": {"weight_decay": 0.01}})
    tensor = param_groups(model, lr=lr, layer_decay=0.5, overrides={"blocks.0.mlp.*": {"weight_decay": 0.01}})
    assert [g["name"] for g in tensor] == [g["name"] for g in plain]
