"""Layer ids and the no-decay split on pure-torch stand-ins of real architectures (module tree and parameter names
copied from Hugging Face transformers, timm and torchvision; sizes tiny).

Expected ids are written by hand: embeddings 0, blocks 1..N in depth order (encoder then decoder), what follows the
last block N + 1; timm's rules where the model has timm's layout. Never computed by the code under test.
"""

from __future__ import annotations

import fnmatch

import lightning as L
import pytest
import torch
from torch import nn

from lit_optim import layer_ids, param_groups

D = 4


def expand(model: nn.Module, rules: dict[str, int]) -> dict[str, int]:
    """Each parameter name -> the id of the first glob that matches it; every name must match."""
    return {n: next(v for g, v in rules.items() if fnmatch.fnmatchcase(n, g)) for n, _ in model.named_parameters()}


def node(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


class Layer(nn.Module):  # a transformer layer: attention projections, a norm, an MLP
    def __init__(self) -> None:
        super().__init__()
        self.attention = node(query=nn.Linear(D, D), output=nn.Linear(D, D))
        self.layernorm = nn.LayerNorm(D)
        self.mlp = node(fc1=nn.Linear(D, D), fc2=nn.Linear(D, D))


def bert() -> nn.Module:  # BertForSequenceClassification
    embeddings = node(word_embeddings=nn.Embedding(10, D), position_embeddings=nn.Embedding(8, D),
                      token_type_embeddings=nn.Embedding(2, D), LayerNorm=nn.LayerNorm(D))  # fmt: skip
    encoder = node(layer=nn.ModuleList(Layer() for _ in range(3)))
    return node(bert=node(embeddings=embeddings, encoder=encoder, pooler=node(dense=nn.Linear(D, D))),
                classifier=nn.Linear(D, 2))  # fmt: skip


def gpt2() -> nn.Module:  # GPT2LMHeadModel, lm_head tied to wte
    model = node(transformer=node(wte=nn.Embedding(10, D), wpe=nn.Embedding(8, D),
                                  h=nn.ModuleList(Layer() for _ in range(2)), ln_f=nn.LayerNorm(D)),
                 lm_head=nn.Linear(D, 10, bias=False))  # fmt: skip
    model.lm_head.weight = model.transformer.wte.weight  # type: ignore[union-attr]
    return model


class LlamaModule(L.LightningModule):  # a LightningModule holding LlamaForCausalLM as `self.model`
    def __init__(self) -> None:
        super().__init__()
        self.model = node(model=node(embed_tokens=nn.Embedding(10, D), layers=nn.ModuleList(Layer() for _ in range(2)),
                                     norm=nn.LayerNorm(D)), lm_head=nn.Linear(D, 10, bias=False))  # fmt: skip


def bart() -> nn.Module:  # BartForConditionalGeneration: shared embeddings, learned positions, lm_head tied
    shared = nn.Embedding(10, D)

    def stack(depth: int) -> nn.Module:
        return node(embed_tokens=shared, embed_positions=nn.Embedding(8, D), layers=nn.ModuleList(
            Layer() for _ in range(depth)), layernorm_embedding=nn.LayerNorm(D))  # fmt: skip

    model = node(model=node(shared=shared, encoder=stack(2), decoder=stack(3)), lm_head=nn.Linear(D, 10, bias=False))
    model.lm_head.weight = shared.weight
    return model


class T5Block(nn.Module):
    def __init__(self, first: bool) -> None:
        super().__init__()
        attention = node(q=nn.Linear(D, D, bias=False), o=nn.Linear(D, D, bias=False))
        if first:  # only block 0 holds the relative position bias (an nn.Embedding)
            attention.relative_attention_bias = nn.Embedding(8, 2)
        self.layer = nn.ModuleList([node(SelfAttention=attention, layer_norm=nn.LayerNorm(D)),
                                    node(DenseReluDense=node(wi=nn.Linear(D, D, bias=False)))])  # fmt: skip


def t5() -> nn.Module:  # T5ForConditionalGeneration (v1.1: untied lm_head)
    shared = nn.Embedding(10, D)

    def stack(depth: int) -> nn.Module:
        blocks = nn.ModuleList(T5Block(i == 0) for i in range(depth))
        return node(embed_tokens=shared, block=blocks, final_layer_norm=nn.LayerNorm(D))

    return node(shared=shared, encoder=stack(2), decoder=stack(2), lm_head=nn.Linear(D, 10, bias=False))


class SwinTransformerStage(nn.Module):  # timm: downsample (PatchMerging) first, then blocks
    def __init__(self, depth: int, downsample: bool) -> None:
        super().__init__()
        merging = node(norm=nn.LayerNorm(D), reduction=nn.Linear(D, D, bias=False))
        self.downsample = merging if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[Layer() for _ in range(depth)])


class TimmSwin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = node(proj=nn.Conv2d(3, D, 2), norm=nn.LayerNorm(D))
        self.layers = nn.Sequential(SwinTransformerStage(2, False), SwinTransformerStage(1, True),
                                    SwinTransformerStage(2, True))  # fmt: skip
        self.norm = nn.LayerNorm(D)
        self.head = node(fc=nn.Linear(D, 2))

    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}  # timm lists it even when the model has none: ignored, as timm does


class SwinStage(nn.Module):  # Hugging Face: blocks, then the downsample
    def __init__(self, depth: int, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Layer() for _ in range(depth))
        self.downsample = node(norm=nn.LayerNorm(D), reduction=nn.Linear(D, D, bias=False)) if downsample else None


def hf_swin() -> nn.Module:  # SwinForImageClassification
    swin = node(embeddings=node(patch_embeddings=node(projection=nn.Conv2d(3, D, 2))),
                encoder=node(layers=nn.ModuleList([SwinStage(2, True), SwinStage(1, True), SwinStage(1, False)])),
                layernorm=nn.LayerNorm(D))  # fmt: skip
    return node(swin=swin, classifier=nn.Linear(D, 2))


class ConvBNAct(nn.Sequential):  # torchvision's Conv2dNormActivation
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(D, D, 1, bias=False), nn.BatchNorm2d(D), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBNAct(), nn.Conv2d(D, D, 1, bias=False), nn.BatchNorm2d(D))


def mobilenet_v2() -> nn.Module:  # torchvision: features = stem, inverted residuals, last conv; then classifier
    features = nn.Sequential(ConvBNAct(), InvertedResidual(), InvertedResidual(), ConvBNAct())
    return node(features=features, classifier=nn.Sequential(nn.Dropout(), nn.Linear(D, 2)))


def gpt_neox() -> nn.Module:  # GPTNeoXForCausalLM: the untied LM head is `embed_out`, after the blocks
    return node(gpt_neox=node(embed_in=nn.Embedding(10, D), layers=nn.ModuleList(Layer() for _ in range(2)),
                              final_layer_norm=nn.LayerNorm(D)), embed_out=nn.Linear(D, 10, bias=False))  # fmt: skip


class DinoV2(nn.Module):  # facebookresearch/dinov2's DinoVisionTransformer with registers, as torch.hub loads it
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, 4, D))
        self.mask_token = nn.Parameter(torch.zeros(1, D))
        self.patch_embed = node(proj=nn.Conv2d(3, D, 2))
        self.blocks = nn.ModuleList(Layer() for _ in range(2))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Identity()


CASES = {
    "bert": (bert, {"bert.embeddings.*": 0, "bert.encoder.layer.0.*": 1, "bert.encoder.layer.1.*": 2,
                    "bert.encoder.layer.2.*": 3, "bert.pooler.*": 4, "classifier.*": 4}),
    "gpt2-tied": (gpt2, {"transformer.wte.*": 0, "transformer.wpe.*": 0, "transformer.h.0.*": 1,
                         "transformer.h.1.*": 2, "transformer.ln_f.*": 3}),
    "llama-in-a-lightning-module": (LlamaModule, {"model.model.embed_tokens.*": 0, "model.model.layers.0.*": 1,
                                                  "model.model.layers.1.*": 2, "model.model.norm.*": 3,
                                                  "model.lm_head.*": 3}),
    # the encoder's 2 layers are 1-2, the decoder's 3 layers 3-5; the decoder's embeddings are embeddings (0),
    # its `layernorm_embedding` too, though Hugging Face registers it after the decoder's layers
    "bart": (bart, {"model.shared.*": 0, "model.encoder.embed_positions.*": 0, "model.encoder.layers.0.*": 1,
                    "model.encoder.layers.1.*": 2, "model.encoder.layernorm_embedding.*": 0,
                    "model.decoder.embed_positions.*": 0, "model.decoder.layers.0.*": 3,
                    "model.decoder.layers.1.*": 4, "model.decoder.layers.2.*": 5,
                    "model.decoder.layernorm_embedding.*": 0}),
    # block 0's relative attention bias is block 0's; the encoder's final norm follows its last block
    "t5": (t5, {"shared.*": 0, "encoder.block.0.*": 1, "encoder.block.1.*": 2, "encoder.final_layer_norm.*": 2,
                "decoder.block.0.*": 3, "decoder.block.1.*": 4, "decoder.final_layer_norm.*": 5, "lm_head.*": 5}),
    # timm's rule: a stage's downsample shares its first block's id
    "timm-swin": (TimmSwin, {"patch_embed.*": 0, "layers.0.blocks.0.*": 1, "layers.0.blocks.1.*": 2,
                             "layers.1.*": 3, "layers.2.downsample.*": 4, "layers.2.blocks.0.*": 4,
                             "layers.2.blocks.1.*": 5, "norm.*": 6, "head.*": 6}),
    # Hugging Face downsamples after a stage's blocks: the downsample follows the stage's last block
    "hf-swin": (hf_swin, {"swin.embeddings.*": 0, "swin.encoder.layers.0.blocks.0.*": 1,
                          "swin.encoder.layers.0.*": 2, "swin.encoder.layers.1.*": 3, "swin.encoder.layers.2.*": 4,
                          "swin.layernorm.*": 5, "classifier.*": 5}),
    # torchvision keeps the stem and the last conv in `features`: each is one block
    "mobilenet-v2": (mobilenet_v2, {"features.0.*": 1, "features.1.*": 2, "features.2.*": 3, "features.3.*": 4,
                                    "classifier.*": 5}),
    # learned tokens the model holds itself are input side, `register_tokens` too
    "dinov2-registers": (DinoV2, {"cls_token": 0, "pos_embed": 0, "register_tokens": 0, "mask_token": 0,
                                  "patch_embed.*": 0, "blocks.0.*": 1, "blocks.1.*": 2, "norm.*": 3}),
    "gpt-neox": (gpt_neox, {"gpt_neox.embed_in.*": 0, "gpt_neox.layers.0.*": 1, "gpt_neox.layers.1.*": 2,
                            "gpt_neox.final_layer_norm.*": 3, "embed_out.*": 3}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_id_of_every_tensor(case: str) -> None:
    build, rules = CASES[case]
    model = build()
    assert layer_ids(model) == expand(model, rules)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_decay_is_every_one_d_tensor(case: str) -> None:
    # biases and norms are 1-D in all of these; embeddings and 2-D+ weights decay (decay_embeddings=True)
    model = CASES[case][0]()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=0.1, layer_decay=0.5)
    got = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert got == {n: 0.0 if p.ndim <= 1 else 0.1 for n, p in model.named_parameters()}


# torch.compile's first use imports torch internals that still call the deprecated torch.jit.script_method
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("wrap", ["compile", "ddp-prefix"])
def test_wrapped_models_keep_the_ids_under_their_prefix(wrap: str) -> None:
    inner = gpt_neox()
    if wrap == "compile":
        model, prefix = torch.compile(inner), "_orig_mod."
    else:
        model, prefix = node(module=inner), "module."
    expected = {prefix + name: layer for name, layer in layer_ids(inner).items()}
    assert layer_ids(model) == expected == expand(model, {prefix + k: v for k, v in CASES["gpt-neox"][1].items()})


def test_a_unet_down_and_up_path_raises_naming_both() -> None:
    # diffusers' UNet2DModel: down_blocks, mid_block, up_blocks: no depth order is safe to guess
    model = node(conv_in=nn.Conv2d(3, D, 3), down_blocks=nn.ModuleList(Layer() for _ in range(2)), mid_block=Layer(),
                 up_blocks=nn.ModuleList(Layer() for _ in range(2)), conv_out=nn.Conv2d(D, 3, 3))  # fmt: skip
    with pytest.raises(ValueError, match=r"several block lists in Module .*'down_blocks' \(2 blocks\), 'up_blocks' "
                       r"\(2 blocks\)\. .* HINT: pass `layer_id_fn="):
        layer_ids(model)
