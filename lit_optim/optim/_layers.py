"""Layer ids for layer-wise learning-rate decay (BEiT/ELECTRA style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["assign_layer_ids"]

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def _is_embedding_name(name: str) -> bool:
    return any("embed" in part.lower() or part == "cls_token" for part in name.split("."))


def assign_layer_ids(
    module: nn.Module,
    params: Sequence[nn.Parameter],
    names: Sequence[str],
    layer_id_fn: Callable[[str], int] | None,
) -> tuple[list[int], int]:
    """Return one layer id per parameter and ``num_layers`` (the id whose scale is 1).

    Ids are computed over every parameter, frozen ones included, so freezing never shifts them.
    """
    if layer_id_fn is not None:
        ids = []
        for name in names:
            layer_id = layer_id_fn(name)
            if isinstance(layer_id, bool) or not isinstance(layer_id, int):
                raise TypeError(
                    f"`layer_id_fn` must return an int >= 0, got {layer_id!r} ({type(layer_id).__name__}) "
                    f"for parameter {name!r}."
                )
            if layer_id < 0:
                raise ValueError(f"`layer_id_fn` must return an int >= 0, got {layer_id!r} for parameter {name!r}.")
            ids.append(layer_id)
        return ids, max(ids)

    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(
            f"`layer_decay` needs layers, but {type(module).__name__} has no nn.ModuleList of blocks. "
            "HINT: pass `layer_id_fn=lambda name: ...` to assign layer ids yourself."
        )
    main = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))  # the first of equal sizes
    block_of: dict[int, int] = {}
    for index, block in enumerate(main):
        for param in block.parameters():
            block_of.setdefault(id(param), index + 1)
    embedding_ids = {id(p) for m in module.modules() if isinstance(m, _EMBEDDING_TYPES) for p in m.parameters()}
    head = len(main) + 1
    # Parameters registered before the first block (a stem, patch or token embedding) are the input layer.
    first_block = next((i for i, p in enumerate(params) if id(p) in block_of), len(params))
    ids = []
    for index, (param, name) in enumerate(zip(params, names, strict=True)):
        in_block = block_of.get(id(param))
        if in_block is not None:
            ids.append(in_block)
        else:
            is_input = index < first_block or id(param) in embedding_ids or _is_embedding_name(name)
            ids.append(0 if is_input else head)
    return ids, head
