"""Layer ids for layer-wise learning-rate decay (BEiT/ELECTRA style), and a table to check them.

A parameter's layer-decay scale is ``layer_decay ** (top - layer_id)``, where ``top`` is the largest id (the head,
scale 1). Ids come from, in this order of precedence:

1. ``layer_id_fn(name) -> int``, when given (``top`` is its largest id);
2. timm's ``group_matcher(coarse=False)``, when the model or a submodule's class defines it: ids exactly as
   timm's ``param_groups_layer_decay`` assigns them (see :mod:`lit_optim.optim._group_matcher`); parameters
   outside that submodule sort with the names no rule matches, as timm sorts a head: in its head's layer, or
   one above its last block when it has none (``num_classes=0`` and a head of your own). Several such
   submodules are parallel towers, aligned at that layer;
3. the model's structure: its blocks, numbered ``1..N`` in depth order. Blocks are the children of an
   ``nn.ModuleList`` (or an ``nn.Sequential`` of composite modules); a child that is itself a container of
   composite modules, or a class named ``*Stage*`` holding one block list, is a stage whose blocks count one by
   one (its other parameters, such as a downsampling layer before its blocks, share its first block's id).
   Several block lists: numbered siblings (``layer1``, ``layer2``, ...) stack in that order; an ``encoder`` and
   a ``decoder`` stack encoder first; towers named after a modality (``vision_model``, ``text_model``) each
   count their own depth, aligned at the top; any other combination raises. Outside the blocks: embeddings
   (``nn.Embedding``, a name part containing ``embed`` but not an output layer such as GPT-NeoX's ``embed_out`` or
   an ``unembed``, or ending in ``_token``/``_tokens``) and parameters registered before the first block get 0,
   parameters between blocks the id of the block before them, and parameters after the last block, or held
   directly by a module around the blocks (a model's own ``logit_scale``), ``N + 1``.

Ids are computed over every parameter, frozen ones included, so freezing never shifts them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

from torch import nn

from lit_optim._validation import check_ratio
from lit_optim.optim._blocks import Chain, find_chains, iter_modules, iter_params
from lit_optim.optim._group_matcher import defines_group_matcher, matcher_layers
from lit_optim.optim._table import text_table

__all__ = ["format_layer_ids", "layer_ids"]

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def _is_embedding_name(name: str) -> bool:
    """``embed`` in a name part, or learned tokens (``cls_token``, ``mask_token``, DINOv2's ``register_tokens``).

    Not an output layer named after the embedding it inverts: GPT-NeoX's ``embed_out``, TransformerLens' ``unembed``.
    """
    for part in name.lower().split("."):
        output = part.startswith("unembed") or part.endswith("_out")
        if part.endswith(("_token", "_tokens")) or ("embed" in part and not output):
            return True
    return False


def _ancestors(paths: Sequence[str]) -> set[str]:
    """Every module path that contains one of ``paths`` (the root is ``""``)."""
    found = {""}
    for path in paths:
        parts = path.split(".") if path else []
        found.update(".".join(parts[:k]) for k in range(1, len(parts)))
    return found


def _from_fn(names: Sequence[str], layer_id_fn: Callable[[str], int]) -> tuple[list[int], int]:
    if not callable(layer_id_fn):
        raise TypeError(
            f"`layer_id_fn` must be a function name -> int, got {layer_id_fn!r} ({type(layer_id_fn).__name__}). "
            "HINT: pass the function itself (a dotted path is read only from OptimizerMixin's hparams)."
        )
    ids: list[int] = []
    for name in names:
        try:
            returned: object = layer_id_fn(name)
        except Exception as error:
            raise ValueError(
                f"`layer_id_fn` raised {error!r} for parameter {name!r}; it must return an int >= 0 for every "
                "parameter name (frozen ones included). HINT: use dict.get(name, default) or a fallback id."
            ) from error
        try:  # any integer type: numpy's, a 0-d integer tensor
            if isinstance(returned, bool):
                raise TypeError
            layer_id = operator.index(returned)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"`layer_id_fn` must return an int >= 0, got {returned!r} ({type(returned).__name__}) "
                f"for parameter {name!r}."
            ) from None
        if layer_id < 0:
            raise ValueError(f"`layer_id_fn` must return an int >= 0, got {layer_id!r} for parameter {name!r}.")
        ids.append(layer_id)
    return ids, max(ids)


def _matcher_owners(module: nn.Module) -> list[nn.Module]:
    """The outermost modules whose class defines ``group_matcher``, in module order."""
    return [m for m in iter_modules(module, stop=defines_group_matcher) if defines_group_matcher(m)]


def _from_matchers(owners: list[nn.Module], params: Sequence[nn.Parameter]) -> tuple[list[int], int]:
    relative: dict[int, tuple[int, int]] = {}  # id(param) -> (its id in its owner, the owner's index)
    tops = []  # each owner's unmatched layer (its head's; one above its last block when it has no head)
    for index, owner in enumerate(owners):
        named = dict(owner.named_parameters())
        by_name, unmatched = matcher_layers(owner, named)
        tops.append(unmatched)
        for name, param in named.items():
            relative.setdefault(id(param), (by_name[name], index))
    top = max(tops)
    ids = []
    for param in params:
        found = relative.get(id(param))
        ids.append(top if found is None else found[0] + top - tops[found[1]])
    return ids, max(ids)


def _chain_ids(
    chain: Chain, params: Sequence[nn.Parameter], names: Sequence[str], embeddings: set[int], holders: set[str]
) -> tuple[dict[int, int], int]:
    """Ids (by parameter index) of the parameters in the chain's scope, and the chain's top id (N + 1)."""
    block_of: dict[int, int] = {}
    stage_first: dict[int, int] = {}  # a stage's parameter outside its blocks -> the stage's first block id
    stages: set[int] = set()
    for number, (block, stage) in enumerate(chain.blocks, start=1):
        for param in iter_params(block):
            block_of.setdefault(id(param), number)
        if stage is not None and id(stage) not in stages:  # once per stage, at its first block
            stages.add(id(stage))
            for param in iter_params(stage):
                stage_first.setdefault(id(param), number)
    scope = None if chain.scope is None else {id(p) for p in iter_params(chain.scope)}
    top = len(chain.blocks) + 1
    positions = [i for i, p in enumerate(params) if id(p) in block_of]
    first, last = positions[0], positions[-1]
    ids: dict[int, int] = {}
    previous = 0
    for index, param in enumerate(params):
        if scope is not None and id(param) not in scope:
            continue
        key = id(param)
        if key in block_of:
            previous = ids[index] = block_of[key]
        elif key in embeddings or _is_embedding_name(names[index]):
            ids[index] = 0
        elif names[index].rpartition(".")[0] in holders:  # held by a module around the blocks: order unknown
            ids[index] = top
        elif key in stage_first and stage_first[key] > previous:  # e.g. a stage's downsampling before its blocks
            ids[index] = stage_first[key]
        elif index < first:
            ids[index] = 0
        else:
            ids[index] = top if index > last else previous
    return ids, top


def _from_structure(
    module: nn.Module, params: Sequence[nn.Parameter], names: Sequence[str]
) -> tuple[list[int], int]:
    chains = find_chains(module)
    embeddings = {id(p) for m in iter_modules(module) if isinstance(m, _EMBEDDING_TYPES) for p in iter_params(m)}
    holders = _ancestors([path for chain in chains for path in chain.paths])
    results = [_chain_ids(chain, params, names, embeddings, holders) for chain in chains]
    top = max(chain_top for _, chain_top in results)
    ids: list[int | None] = [None] * len(params)
    for chain_ids, chain_top in results:
        for index, layer_id in chain_ids.items():
            ids[index] = layer_id + top - chain_top  # towers: each by its own depth, aligned at the top
    first_in_scope = min((i for i, v in enumerate(ids) if v is not None), default=len(params))
    final = []
    for index, (param, found) in enumerate(zip(params, ids, strict=True)):
        if found is None:  # outside every tower
            held = names[index].rpartition(".")[0] in holders
            before = index < first_in_scope and not held
            found = 0 if id(param) in embeddings or _is_embedding_name(names[index]) or before else top
        final.append(found)
    return final, top


def assign_layer_ids(
    module: nn.Module,
    params: Sequence[nn.Parameter],
    names: Sequence[str],
    layer_id_fn: Callable[[str], int] | None,
) -> tuple[list[int], int]:
    """Return one layer id per parameter and the top id (whose scale is 1); see the module docstring."""
    if layer_id_fn is not None:
        return _from_fn(names, layer_id_fn)
    owners = _matcher_owners(module)
    if owners:
        return _from_matchers(owners, params)
    return _from_structure(module, params, names)


def layer_ids(module: nn.Module, *, layer_id_fn: Callable[[str], int] | None = None) -> dict[str, int]:
    """The layer id of every parameter (frozen ones included), by its first name, as layer-wise decay uses them.

    Examples:
        >>> model = nn.Module()
        >>> model.embed = nn.Embedding(5, 2)
        >>> model.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        >>> model.head = nn.Linear(2, 1)
        >>> layer_ids(model)
        {'embed.weight': 0, 'blocks.0.weight': 1, 'blocks.0.bias': 1, 'blocks.1.weight': 2, 'blocks.1.bias': 2, \
'head.weight': 3, 'head.bias': 3}
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    named = list(module.named_parameters())
    ids, _ = assign_layer_ids(module, [p for _, p in named], [n for n, _ in named], layer_id_fn)
    return {name: layer_id for (name, _), layer_id in zip(named, ids, strict=True)}


def format_layer_ids(
    module: nn.Module, layer_decay: float = 0.75, *, layer_id_fn: Callable[[str], int] | None = None
) -> str:
    """A table of every parameter's layer id and layer-decay scale, to check the assignment before training.

    Examples:
        >>> model = nn.Module()
        >>> model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)])
        >>> model.head = nn.Linear(2, 1, bias=False)
        >>> print(format_layer_ids(model, 0.5))
        name             layer  scale
        ---------------  -----  -----
        blocks.0.weight  1      0.25
        blocks.1.weight  2      0.5
        head.weight      3      1
    """
    check_ratio("layer_decay", layer_decay)
    ids = layer_ids(module, layer_id_fn=layer_id_fn)
    top = max(ids.values())
    rows = [(name, str(layer), f"{layer_decay ** (top - layer):.4g}") for name, layer in ids.items()]
    return text_table(("name", "layer", "scale"), rows)
