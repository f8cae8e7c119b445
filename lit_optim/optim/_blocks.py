"""Find a model's blocks for automatic layer ids: block lists, stages of blocks, and how several lists combine."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn

__all__ = ["Chain", "find_chains", "iter_modules", "iter_params"]

_CONTAINERS = (nn.Sequential, nn.ModuleList)
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
#: Path parts that name one of several parallel towers (CLIP's ``vision_model``/``text_model``, DPR's encoders).
TOWER_WORDS = ("audio", "context", "ctx", "doc", "image", "passage", "query", "question", "speech", "text", "tower",
               "video", "vision", "visual")  # fmt: skip


@dataclass
class Chain:
    """Blocks in depth order (each with the stage holding it, if any) and the module the chain's depth covers."""

    blocks: list[tuple[nn.Module, nn.Module | None]] = field(default_factory=list)
    scope: nn.Module | None = None  # a tower's root; None: the whole model
    paths: list[str] = field(default_factory=list)


def iter_modules(module: nn.Module, stop: Callable[[nn.Module], bool] | None = None) -> Iterator[nn.Module]:
    """``module.modules()`` (each once, pre-order) without a generator per level: linear in deep trees.

    ``stop(m)`` true: ``m`` is yielded but its submodules are not.
    """
    seen: set[int] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if stop is None or not stop(current):
            stack.extend(child for child in reversed(current._modules.values()) if child is not None)


def iter_params(module: nn.Module) -> Iterator[nn.Parameter]:
    """``module.parameters()`` (each once, in module order), linear in deep trees like :func:`iter_modules`."""
    if not module._modules:  # a leaf layer (most calls): no traversal
        yield from (param for param in module._parameters.values() if param is not None)
        return
    seen: set[int] = set()
    for current in iter_modules(module):
        for param in current._parameters.values():
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                yield param


def _has_params(module: nn.Module) -> bool:
    own = any(param is not None for param in module._parameters.values())
    return own or next(iter_params(module), None) is not None


def _param_children(module: nn.Module) -> list[nn.Module]:
    return [child for child in module.children() if _has_params(child)]


def _composite(module: nn.Module) -> bool:
    return any(_has_params(child) for child in module.children())


def is_block_list(module: nn.Module, minimum: int = 2) -> bool:
    """An ``nn.ModuleList`` of >= ``minimum`` parametrised modules, or an ``nn.Sequential`` of composite ones.

    (An ``nn.Sequential`` of plain layers is a small network such as an MLP, not a list of blocks.)
    """
    if not isinstance(module, _CONTAINERS):
        return False
    children = _param_children(module)
    if len(children) < minimum:
        return False
    return isinstance(module, nn.ModuleList) or all(_composite(child) for child in children)


def block_lists(module: nn.Module, prefix: str = "", minimum: int = 2) -> Iterator[tuple[str, nn.Module]]:
    """The outermost block lists under ``module`` (not inside another one), with their paths."""
    for name, child in module.named_children():
        path = prefix + name
        if is_block_list(child, minimum):
            yield path, child
        else:
            yield from block_lists(child, path + ".", minimum)


def _expand(container: nn.Module, stage: nn.Module | None) -> list[tuple[nn.Module, nn.Module | None]]:
    """The blocks of a block list, each with its stage.

    A child that is a container of composite modules, or a ``*Stage*`` class holding one block list, is a stage
    of blocks; a container of plain layers is one block.
    """
    blocks: list[tuple[nn.Module, nn.Module | None]] = []
    for child in _param_children(container):
        if isinstance(child, _CONTAINERS) and all(_composite(c) for c in _param_children(child)):
            blocks += _expand(child, stage or child)  # a stage: a container of blocks (EfficientNet's)
            continue
        if "stage" in type(child).__name__.lower():
            inner = list(block_lists(child)) or list(block_lists(child, minimum=1))
            if len(inner) == 1:
                blocks += _expand(inner[0][1], stage or child)
                continue
        blocks.append((child, stage))
    return blocks


def _divergence(paths: list[str]) -> tuple[str, list[str]]:
    """The common prefix of dotted paths and each path's first part after it."""
    parts = [p.split(".") for p in paths]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ".".join(parts[0][:common]), [p[common] for p in parts]


def _describe(found: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{path!r} ({len(_expand(m, None))} blocks)" for path, m in found)


def find_chains(module: nn.Module) -> list[Chain]:
    """One chain (a single depth), or one chain per parallel tower.

    Raises:
        ValueError: when there is no block list, or several that no rule orders (the message names them).
    """
    hint = (
        "HINT: pass `layer_id_fn=lambda name: ...` to assign layer ids yourself, or give the model timm's "
        "`group_matcher(coarse=False)`; `lit_optim.format_layer_ids(model, ...)` shows the assignment."
    )
    found = [("", module)] if is_block_list(module) else list(block_lists(module))
    if not found:
        raise ValueError(
            f"`layer_decay` needs blocks, but {type(module).__name__} has no nn.ModuleList or nn.Sequential of "
            f"blocks (at least two). {hint}"
        )
    if len(found) == 1:
        return [Chain(_expand(found[0][1], None), None, [found[0][0]])]
    paths = [path for path, _ in found]
    common, parts = _divergence(paths)
    numbered = [_NUMBERED.match(part) for part in parts]
    if len(set(parts)) == len(parts) and all(numbered) and len({m.group(1) for m in numbered if m}) == 1:
        # siblings `layer1`, `layer2`, ... (ResNet's stages): one depth, in their numeric order
        order = sorted(range(len(found)), key=lambda i: int(numbered[i].group(2)))  # type: ignore[union-attr]
        return [Chain([b for i in order for b in _expand(found[i][1], found[i][1])], None, [paths[i] for i in order])]
    lowered = [part.lower() for part in parts]
    if len(found) == 2 and {("encoder" in p) + 2 * ("decoder" in p) for p in lowered} == {1, 2}:
        order = [0, 1] if "encoder" in lowered[0] else [1, 0]
        return [Chain([b for i in order for b in _expand(found[i][1], None)], None, [paths[i] for i in order])]
    if len(set(parts)) == len(parts) and all(any(w in p for w in TOWER_WORDS) for p in lowered):
        root = module.get_submodule(common) if common else module
        pairs = zip(found, parts, strict=True)
        return [Chain(_expand(m, None), root.get_submodule(part), [path]) for (path, m), part in pairs]
    raise ValueError(
        f"`layer_decay` found several block lists in {type(module).__name__} and no rule says how they stack: "
        f"{_describe(found)}. Automatic layer ids handle one list, numbered stages ('layer1', 'layer2', ...), an "
        f"'encoder' then a 'decoder', and parallel towers named after a modality ({', '.join(TOWER_WORDS)}). {hint}"
    )
