"""Layer ids for layer-wise decay: timm's group_matcher convention and the structures of real models.

Expected ids are written by hand from the documented rules (timm's for the ``Timm*`` models), never computed by
the code under test.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
import torch
from torch import nn

from lit_optim import format_layer_ids, layer_ids, param_groups
from tests.models import (
    CaiTLike,
    CLIPLike,
    ConvNeXtLike,
    EfficientNetLike,
    MoELike,
    ResNetLike,
    T5Like,
    TimmConvNeXt,
    TimmViT,
    ViTLike,
)


def expand(model: nn.Module, rules: dict[str, int]) -> dict[str, int]:
    """Each parameter name -> the id of the first glob (hand-written) that matches it; every name must match."""
    out = {}
    for name, _ in model.named_parameters():
        out[name] = next(v for glob, v in rules.items() if fnmatch.fnmatchcase(name, glob))
    return out


def scales_by_name(model: nn.Module, groups: list[dict[str, Any]]) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["applied_lr_scale"] for g in groups for p in g["params"]}


# timm's rules for its ViT: stem (cls_token, pos_embed, patch_embed) is group 0; `blocks.<i>` sorts as (1, i);
# `norm` as (1, 99999), i.e. MATCH_PREV_GROUP: the last block's layer; unmatched names (the head) sort last.
TIMM_VIT_IDS = {"cls_token": 0, "pos_embed": 0, "patch_embed.*": 0, "blocks.0.*": 1, "blocks.1.*": 2,
                "blocks.2.*": 3, "norm.*": 3, "head.*": 4}  # fmt: skip


def test_timm_group_matcher_vit_ids_and_scales_equal_timms() -> None:
    model = TimmViT()
    expected = expand(model, TIMM_VIT_IDS)
    assert layer_ids(model) == expected
    # timm: num_layers = max id + 1 = 5, scale = layer_decay ** (num_layers - 1 - id)
    groups = param_groups(model, lr=1.0, layer_decay=0.5)
    assert scales_by_name(model, groups) == {n: 0.5 ** (4 - i) for n, i in expected.items()}
    for g in groups:
        assert g["lr"] == g["applied_lr_scale"]


def test_timm_group_matcher_convnext_downsample_joins_its_stage_first_block() -> None:
    # timm: `stages.<s>.downsample` sorts as (1, s, 0), the same key as `stages.<s>.blocks.0` (1, s, 0);
    # `norm_pre` is (1, 99999): the last block's layer; the head is unmatched: last.
    model = TimmConvNeXt()
    expected = expand(model, {"stem.*": 0, "stages.0.blocks.0.*": 1, "stages.0.blocks.1.*": 2,
                              "stages.1.downsample.*": 3, "stages.1.blocks.0.*": 3, "stages.1.blocks.1.*": 4,
                              "norm_pre.*": 4, "head.*": 5})  # fmt: skip
    assert layer_ids(model) == expected
    groups = param_groups(model, lr=1.0, layer_decay=0.75)
    assert scales_by_name(model, groups) == {n: 0.75 ** (5 - i) for n, i in expected.items()}


def test_group_matcher_of_a_submodule_is_used_and_outside_parameters_get_the_top() -> None:
    class Wrapper(nn.Module):  # a LightningModule holding a timm model and a new head of its own
        def __init__(self) -> None:
            super().__init__()
            self.backbone = TimmViT()
            self.extra_head = nn.Linear(4, 3)

    model = Wrapper()
    inner = {f"backbone.{k}": v for k, v in TIMM_VIT_IDS.items()}
    assert layer_ids(model) == expand(model, {**inner, "extra_head.*": 4})


def test_group_matcher_returning_a_callable() -> None:
    class Net(ViTLike):
        def group_matcher(self, coarse: bool = False) -> Any:
            return lambda name: (0,) if name.startswith("blocks") else (1, 99999) if name.startswith("norm") else 2

    model = Net()
    # keys sort (0,) < (1, 99999) < (2,): blocks open layer 0; norm's key ends in 99999 (MATCH_PREV_GROUP), so it
    # joins layer 0; everything else, (2,), is layer 1.
    assert layer_ids(model) == expand(model, {"blocks.*": 0, "norm.*": 0, "*": 1})


def test_group_matcher_rule_capturing_a_non_number_raises() -> None:
    class Net(ViTLike):
        def group_matcher(self, coarse: bool = False) -> Any:
            return {"blocks": [(r"^(blocks)\.", None)]}

    with pytest.raises(ValueError, match=r"Net\.group_matcher rule '\^\(blocks\)\\\\\.' captured \('blocks',\) from "):
        layer_ids(Net())


def test_blocks_in_an_nn_sequential() -> None:
    # lit_optim's own rules: tokens and patch embed 0, blocks 1..3, the final norm after the blocks: the head's 4
    model = ViTLike()
    assert layer_ids(model) == expand(model, {"cls_token": 0, "pos_embed": 0, "patch_embed.*": 0, "blocks.0.*": 1,
                                              "blocks.1.*": 2, "blocks.2.*": 3, "norm.*": 4, "head.*": 4})  # fmt: skip


def test_stages_of_blocks_count_block_by_block() -> None:
    model = ConvNeXtLike()  # a class named *Stage* holding one block list is a stage; its downsample joins block 1
    assert layer_ids(model) == expand(model, {"stem.*": 0, "stages.0.blocks.0.*": 1, "stages.0.blocks.1.*": 2,
                                              "stages.1.downsample.*": 3, "stages.1.blocks.0.*": 3,
                                              "stages.1.blocks.1.*": 4, "norm_pre.*": 5, "head.*": 5})  # fmt: skip


def test_numbered_stages_stack_in_order() -> None:
    model = ResNetLike()  # layer1..layer3 are attributes, not in a list: numbered siblings stack
    assert layer_ids(model) == expand(model, {"conv1.*": 0, "bn1.*": 0, "layer1.0.*": 1, "layer1.1.*": 2,
                                              "layer2.0.*": 3, "layer2.1.*": 4, "layer3.0.*": 5, "layer3.1.*": 6,
                                              "fc.*": 7})  # fmt: skip


def test_nested_sequential_stages() -> None:
    model = EfficientNetLike()  # blocks = Sequential(Sequential(b), Sequential(b, b))
    assert layer_ids(model) == expand(model, {"conv_stem.*": 0, "bn1.*": 0, "blocks.0.0.*": 1, "blocks.1.0.*": 2,
                                              "blocks.1.1.*": 3, "conv_head.*": 4, "bn2.*": 4,
                                              "classifier.*": 4})  # fmt: skip


def test_encoder_then_decoder() -> None:
    # the encoder's 2 blocks are 1..2, its final norm sits between blocks: the previous block's id; the decoder's
    # 3 blocks are 3..5; the decoder's final norm and lm_head come after the last block: 6. (T5 and BART.)
    model = T5Like()
    expected = expand(model, {"shared.weight": 0, "encoder.block.0.*": 1, "encoder.block.1.*": 2,
                              "encoder.final_layer_norm.*": 2, "decoder.block.0.*": 3, "decoder.block.1.*": 4,
                              "decoder.block.2.*": 5, "decoder.final_layer_norm.*": 6, "lm_head.*": 6})  # fmt: skip
    assert layer_ids(model) == expected
    groups = param_groups(model, lr=1.0, layer_decay=0.5)
    assert scales_by_name(model, groups) == {n: 0.5 ** (6 - i) for n, i in expected.items()}


def test_parallel_towers_each_by_their_own_depth() -> None:
    # vision: 3 blocks (1..3), text: 2 blocks, shifted by 1 so both towers' tops meet at 4: the text embedding's
    # scale is layer_decay ** 3 = its own depth + 1. Projections and logit_scale sit on top.
    model = CLIPLike()
    expected = expand(model, {"text_model.embeddings.*": 1, "text_model.encoder.layers.0.*": 2,
                              "text_model.encoder.layers.1.*": 3, "text_model.final_layer_norm.*": 4,
                              "vision_model.embeddings.*": 0, "vision_model.encoder.layers.0.*": 1,
                              "vision_model.encoder.layers.1.*": 2, "vision_model.encoder.layers.2.*": 3,
                              "vision_model.final_layer_norm.*": 4, "*_projection.*": 4,
                              "logit_scale": 4})  # fmt: skip
    assert layer_ids(model) == expected
    groups = param_groups(model, lr=1.0, layer_decay=0.5)
    assert scales_by_name(model, groups) == {n: 0.5 ** (4 - i) for n, i in expected.items()}


def test_ambiguous_block_lists_raise_naming_them() -> None:
    with pytest.raises(
        ValueError,
        match=r"found several block lists in CaiTLike and no rule says how they stack: 'blocks' \(3 blocks\), "
        r"'blocks_token_only' \(2 blocks\)\. .* HINT: pass `layer_id_fn=lambda name: \.\.\.`",
    ):
        param_groups(CaiTLike(), layer_decay=0.5)


def test_a_list_inside_a_block_is_not_the_blocks() -> None:
    model = MoELike()  # each block holds a ModuleList of experts
    assert layer_ids(model) == expand(model, {"embed.*": 0, "layers.0.*": 1, "layers.1.*": 2, "head.*": 3})


def test_a_sequential_of_plain_layers_is_not_a_block_list() -> None:
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    model.mlp_head = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 1))  # an MLP, not blocks
    assert layer_ids(model) == expand(model, {"blocks.0.*": 1, "blocks.1.*": 2, "mlp_head.*": 3})


def test_format_layer_ids_table() -> None:
    model = nn.Module()
    model.embed = nn.Embedding(3, 2)
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)])
    assert format_layer_ids(model, 0.5).splitlines() == [
        "name             layer  scale",
        "---------------  -----  -----",
        "embed.weight     0      0.25",
        "blocks.0.weight  1      0.5",
        "blocks.1.weight  2      1",
    ]


def test_layer_id_fn_that_raises_names_the_parameter() -> None:
    ids = {"blocks.0.weight": 0}
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False)])
    model.head = nn.Linear(2, 1, bias=False)
    with pytest.raises(ValueError, match=r"`layer_id_fn` raised KeyError\('head\.weight'\) for parameter 'head\."):
        param_groups(model, layer_decay=0.5, layer_id_fn=ids.__getitem__)


def test_frozen_parameters_keep_their_ids_under_a_group_matcher() -> None:
    model = TimmViT()
    model.blocks[0].requires_grad_(False)
    groups = param_groups(model, lr=1.0, layer_decay=0.5)
    expected = {n: 0.5 ** (4 - i) for n, i in expand(model, TIMM_VIT_IDS).items() if not n.startswith("blocks.0.")}
    assert scales_by_name(model, groups) == expected


def test_a_sequential_of_plain_layers_inside_a_block_list_is_one_block() -> None:
    model = nn.Module()
    model.blocks = nn.ModuleList(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)) for _ in range(2))
    assert layer_ids(model) == expand(model, {"blocks.0.*": 1, "blocks.1.*": 2})


def test_two_submodules_with_group_matchers_are_towers_aligned_at_the_top() -> None:
    model = nn.Module()
    model.image = TimmViT(depth=3)  # ids 0..4 as timm
    model.text = TimmViT(depth=2)  # ids 0..3 as timm, shifted by 1 so both heads meet at 4
    model.scale = nn.Parameter(torch.ones(()))
    shifted = {"cls_token": 1, "pos_embed": 1, "patch_embed.*": 1, "blocks.0.*": 2, "blocks.1.*": 3, "norm.*": 3,
               "head.*": 4}  # fmt: skip
    rules = {"scale": 4, **{f"image.{k}": v for k, v in TIMM_VIT_IDS.items()}}
    rules.update({f"text.{k}": v for k, v in shifted.items()})
    assert layer_ids(model) == expand(model, rules)


def test_a_parameter_held_by_the_model_itself_is_on_top_unless_an_embedding() -> None:
    # a module's own parameters always come before its children's in named_parameters(), whatever the order they
    # were registered in, so "before the first block" cannot be read from them: a temperature is a head parameter
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    model.temperature = nn.Parameter(torch.ones(()))
    model.mask_token = nn.Parameter(torch.zeros(2))
    assert layer_ids(model) == expand(model, {"temperature": 3, "mask_token": 0, "blocks.0.*": 1, "blocks.1.*": 2})


def test_group_matcher_without_coarse_raises_naming_the_convention() -> None:
    class Net(ViTLike):
        def group_matcher(self) -> Any:
            return {}

    with pytest.raises(TypeError, match=r"Net\.group_matcher\(coarse=False\) failed: .* timm's convention"):
        layer_ids(Net())


class _NeoXLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Linear(4, 4)
        self.input_layernorm = nn.LayerNorm(4)


def test_an_output_head_named_embed_after_the_blocks_is_on_top() -> None:
    # GPT-NeoX/Pythia's untied LM head is `embed_out` (after the blocks), TransformerLens' is `unembed`: a name
    # containing "embed" must not pull the output head down to the embeddings' id 0 (the smallest scale).
    model = nn.Module()
    model.gpt_neox = nn.Module()
    model.gpt_neox.embed_in = nn.Embedding(10, 4)
    model.gpt_neox.layers = nn.ModuleList([_NeoXLayer(), _NeoXLayer()])
    model.gpt_neox.final_layer_norm = nn.LayerNorm(4)
    model.embed_out = nn.Linear(4, 10, bias=False)
    model.unembed = nn.Module()
    model.unembed.W_U = nn.Parameter(torch.ones(4, 10))
    expected = expand(model, {"gpt_neox.embed_in.*": 0, "gpt_neox.layers.0.*": 1, "gpt_neox.layers.1.*": 2,
                              "gpt_neox.final_layer_norm.*": 3, "embed_out.*": 3, "unembed.*": 3})  # fmt: skip
    assert layer_ids(model) == expected


def test_an_embed_named_parameter_after_the_towers_is_on_top() -> None:
    model = CLIPLike()
    model.embed_out = nn.Linear(4, 4)  # registered after both towers
    ids = layer_ids(model)
    assert ids["embed_out.weight"] == max(ids.values())


def test_the_first_stages_downsample_joins_its_first_block_as_in_timm() -> None:
    # Every stage's downsample shares its first block's id (timm's ConvNeXt/Swin rule), the first stage's too:
    # the stage rule, not "registered before the first block", decides parameters inside a stage.
    model = ConvNeXtLike()
    model.stages[0].downsample = nn.Linear(4, 4)  # type: ignore[index]
    expected = expand(model, {"stem.*": 0, "stages.0.downsample.*": 1, "stages.0.blocks.0.*": 1,
                              "stages.0.blocks.1.*": 2, "stages.1.downsample.*": 3, "stages.1.blocks.0.*": 3,
                              "stages.1.blocks.1.*": 4, "norm_pre.*": 5, "head.*": 5})  # fmt: skip
    assert layer_ids(model) == expected
    timm = TimmConvNeXt()
    timm.stages[0].downsample = nn.Linear(4, 4)  # type: ignore[index]
    ids = layer_ids(timm)
    assert ids["stages.0.downsample.weight"] == ids["stages.0.blocks.0.fc.weight"] == 1


def test_a_new_head_on_a_headless_timm_backbone_is_a_layer_above_its_last_block() -> None:
    # timm.create_model(..., num_classes=0) has no head; timm sorts names no rule matches last, in a layer of their
    # own. A LightningModule's own head is such a name: one layer above the last block (scale 1 vs layer_decay),
    # exactly as when the backbone keeps timm's head, never sharing the last block's scale.
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = TimmViT()
            self.backbone.head = nn.Identity()
            self.extra_head = nn.Linear(4, 3)

    model = Wrapper()
    inner = {f"backbone.{k}": v for k, v in TIMM_VIT_IDS.items() if not k.startswith("head")}
    assert layer_ids(model) == expand(model, {**inner, "extra_head.*": 4})
    headless = TimmViT()
    headless.head = nn.Identity()  # alone, timm's own ids: the last block and norm on top
    assert max(layer_ids(headless).values()) == 3


def test_layer_id_fn_may_return_any_integer_type() -> None:
    # a lookup into a numpy/torch array returns np.int64 / a 0-d int tensor: integers, accepted as such
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    table = torch.tensor([0, 0, 1, 1])
    names = [n for n, _ in model.named_parameters()]
    assert layer_ids(model, layer_id_fn=lambda n: table[names.index(n)]) == dict(zip(names, [0, 0, 1, 1], strict=True))
    assert type(layer_ids(model, layer_id_fn=lambda n: table[names.index(n)])["0.weight"]) is int
    with pytest.raises(TypeError, match=r"`layer_id_fn` must return an int >= 0, got True \(bool\)"):
        layer_ids(model, layer_id_fn=lambda n: True)
