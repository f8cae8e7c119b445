"""Layer ids for layer-wise learning-rate decay (BEiT/ELECTRA style), and a table to check them.

A parameter's layer-decay scale is ``layer_decay ** (top - layer_id)``, where ``top`` is the largest id (the head,
scale 1). Ids come from, in this order of precedence:

1. ``layer_id_fn(name) -> int``, when given (``top`` is its largest id);
2. timm's ``group_matcher(coarse=False)``, when the model or a submodule's class defines it: ids exactly as
   timm's ``param_groups_layer_decay`` assigns them (see :mod:`lit_optim.optim._group_matcher`); parameters
   outside that submodule get ``top``. Several such submodules are parallel towers, aligned at the top;
3. the model's structure: its blocks, numbered ``1..N`` in depth order. Blocks are the children of an
   ``nn.ModuleList`` (or an ``nn.Sequential`` of composite modules); a child that is itself a container of
   composite modules, or a class named ``*Stage*`` holding one block list, is a stage whose blocks count one by
   one (its other parameters, such as a downsampling layer before its blocks, share its first block's id).
   Several block lists: numbered siblings (``layer1``, ``layer2``, ...) stack in that order; an ``encoder`` and
   a ``decoder`` stack encoder first; towers named after a modality (``vision_model``, ``text_model``) each
   count their own depth, aligned at the top; any other combination raises. Outside the blocks: embeddings
   (``nn.Embedding``, a name part containing ``embed`` or ending in ``_token``) and parameters registered
   before the first block get 0, parameters between blocks the id of the block before them, and parameters
   after the last block, or held directly by a module around the blocks (a model's own ``logit_scale``),
   ``N + 1``.

Ids are computed over every parameter, frozen ones included, so freezing never shifts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from lit_optim._validation import check_ratio
from lit_optim.optim._blocks import Chain, find_chains
from lit_optim.optim._group_matcher import defines_group_matcher, matcher_layer_ids

__all__ = ["format_layer_ids", "layer_ids"]

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def _is_embedding_name(name: str) -> bool:
    """``embed`` in a name part, or a learned token (``cls_token``, ``reg_token``, ``dist_token``, ``mask_token``)."""
    return any("embed" in part.lower() or part.endswith("_token") for part in name.split("."))


def _ancestors(paths: Sequence[str]) -> set[str]:
    """Every module path that contains one of ``paths`` (the root is ``""``)."""
    found = {""}
    for path in paths:
        parts = path.split(".") if path else []
        found.update(".".join(parts[:k]) for k in range(1, len(parts)))
    return found


def _from_fn(names: Sequence[str], layer_id_fn: Callable[[str], int]) -> tuple[list[int], int]:
    ids = []
    for name in names:
        try:
            layer_id = layer_id_fn(name)
        except Exception as error:
            raise ValueError(
                f"`layer_id_fn` raised {error!r} for parameter {name!r}; it must return an int >= 0 for every "
                "parameter name (frozen ones included). HINT: use dict.get(name, default) or a fallback id."
            ) from error
        if isinstance(layer_id, bool) or not isinstance(layer_id, int):
            raise TypeError(
                f"`layer_id_fn` must return an int >= 0, got {layer_id!r} ({type(layer_id).__name__}) "
                f"for parameter {name!r}."
            )
        if layer_id < 0:
            raise ValueError(f"`layer_id_fn` must return an int >= 0, got {layer_id!r} for parameter {name!r}.")
        ids.append(layer_id)
    return ids, max(ids)


def _matcher_owners(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if defines_group_matcher(module):
        return [(prefix, module)]
    found = []
    for name, child in module.named_children():
        found += _matcher_owners(child, prefix + name + ".")
    return found


def _from_matchers(owners: list[tuple[str, nn.Module]], params: Sequence[nn.Parameter]) -> tuple[list[int], int]:
    per_owner: list[dict[int, int]] = []
    for _, owner in owners:
        named = dict(owner.named_parameters())
        by_name = matcher_layer_ids(owner, named)
        per_owner.append({id(p): by_name[n] for n, p in named.items()})
    tops = [max(ids.values()) for ids in per_owner]
    top = max(tops)
    ids = []
    for param in params:
        found = next(((d, t) for d, t in zip(per_owner, tops, strict=True) if id(param) in d), None)
        ids.append(top if found is None else found[0][id(param)] + top - found[1])
    return ids, top


def _chain_ids(
    chain: Chain, params: Sequence[nn.Parameter], names: Sequence[str], embeddings: set[int], holders: set[str]
) -> tuple[dict[int, int], int]:
    """Ids (by parameter index) of the parameters in the chain's scope, and the chain's top id (N + 1)."""
    block_of: dict[int, int] = {}
    stage_first: dict[int, int] = {}  # a stage's parameter outside its blocks -> the stage's first block id
    for number, (block, stage) in enumerate(chain.blocks, start=1):
        for param in block.parameters():
            block_of.setdefault(id(param), number)
        if stage is not None:
            for param in stage.parameters():
                stage_first.setdefault(id(param), number)
    scope = None if chain.scope is None else {id(p) for p in chain.scope.parameters()}
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
        elif index < first:
            ids[index] = 0
        elif key in stage_first and stage_first[key] > previous:  # e.g. a stage's downsampling before its blocks
            ids[index] = stage_first[key]
        else:
            ids[index] = top if index > last else previous
    return ids, top


def _from_structure(
    module: nn.Module, params: Sequence[nn.Parameter], names: Sequence[str]
) -> tuple[list[int], int]:
    chains = find_chains(module)
    embeddings = {id(p) for m in module.modules() if isinstance(m, _EMBEDDING_TYPES) for p in m.parameters()}
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

    Example:
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

    Example:
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
    headers = ("name", "layer", "scale")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
