"""Parameter groups for torch optimizers: weight-decay rules, per-module overrides, layer-wise LR decay.

:func:`param_groups` walks a module once and returns group dicts ready for any ``torch.optim`` optimizer;
:func:`format_groups` prints them as a table.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lit_optim._validation import check_non_negative, check_ratio
from lit_optim.optim._no_decay import NoDecayRule, Walk, check_rules_matched, split_rules
from lit_optim.optim._optimizer_checks import check_params_fit, check_rate
from lit_optim.optim._overrides import Override, combine_overrides, parse_overrides
from lit_optim.optim._table import text_table
from lit_optim.optim.layer_ids import assign_layer_ids
from lit_optim.optim.optimizers import resolve_optimizer

__all__ = ["NoDecayRule", "format_groups", "param_groups"]

#: The group key recording the product of scales already multiplied into the group's ``lr``, for inspection.
#: Deliberately not ``"lr_scale"``: timm's schedulers multiply each group's lr by ``group["lr_scale"]``, which
#: would apply the scales a second time.
_SCALE_KEY = "applied_lr_scale"


_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be True or False, got {value!r} ({type(value).__name__}). HINT: a string such as 'False' "
            "is truthy; pass the bool."
        )
    return value


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a hyper-parameter value (YAML gives lists where torch uses tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    return value


def param_groups(
    module: nn.Module,
    *,
    lr: float | torch.Tensor = 1e-3,
    weight_decay: float = 0.01,
    overrides: Mapping[str | nn.Module, Mapping[str, Any]] | None = None,
    layer_decay: float | None = None,
    layer_id_fn: Callable[[str], int] | None = None,
    decay_embeddings: bool = True,
    no_decay: Iterable[NoDecayRule] | None = (),
    include_frozen: bool = False,
    optimizer: str | type[torch.optim.Optimizer] | None = None,
) -> list[dict[str, Any]]:
    r"""Group a module's parameters for a torch optimizer.

    Every trainable parameter lands in exactly one group. Each group has ``params``, a unique ``name``, the
    effective ``lr`` (the base lr times every scale: each scale is applied here, once), ``applied_lr_scale`` (that
    product, for inspection only: nothing reads it, and it is deliberately not named ``lr_scale``, which timm's
    schedulers would multiply in a second time), ``weight_decay`` and the overrides' other hyper-parameters.
    Groups with identical hyper-parameters are merged (the merged group takes the name of its part with the fewest
    override labels, the first of those), except that an override's explicit ``name`` always keeps its own groups;
    groups come in module order.

    **No weight decay** for: every bias (leaf name ending in ``bias`` or starting with ``bias_``, as attention's
    ``bias_k``); every parameter of a normalization layer
    (any class, or base class, whose name ends in ``Norm`` or ``Norm<k>d``: all torch norms and custom
    ``RMSNorm`` s); every parameter with ``ndim <= 1``; names a submodule lists in ``no_weight_decay()`` (the
    timm convention), resolved with that submodule's prefix (names that do not exist are ignored, as timm
    does), and names under it containing a keyword from its ``no_weight_decay_keywords()`` (the Swin repo's);
    embeddings when ``decay_embeddings=False``; and the extra ``no_decay`` rules.

    **Tied parameters** appear once, under their first name (module order); they get no decay if any of
    their occurrences would (e.g. a ``lm_head`` tied to an excluded embedding). Globs match any of their names;
    two overrides that reach one only by different names (``tok_emb.*``, ``lm_head.*``) must agree, or raise.
    Inside a ``torch.compile`` d submodule, globs match the names with and without its ``_orig_mod.`` part; in a
    ``DataParallel``/``DistributedDataParallel`` wrapper, with and without the leading ``module.``.

    **Overrides** map a pattern (an fnmatch glob on full parameter names, or a submodule) to settings: ``lr``,
    ``lr_scale``, ``weight_decay``, ``name`` (the group-name label) or any hyper-parameter of the optimizer.
    Precedence: when several overrides match a parameter, the one matching *fewer* parameters (the more
    specific) wins key by key; between overrides matching the same parameters, the later one wins. Overrides
    that overlap only partially and set the same key to different values are ambiguous and raise. The no-decay
    rules always win over an override's ``weight_decay``: it applies to the decayed parameters it matches.
    An override's ``lr`` replaces the base ``lr``; ``lr_scale`` and the layer scale multiply it.

    **Layer-wise decay**: the scale ``layer_decay ** (top - layer_id)``, ``top`` the largest id. Ids follow
    ``layer_id_fn(name) -> int`` when given, else timm's ``group_matcher(coarse=False)`` when the model (or a
    submodule) defines it (scales equal timm's ``param_groups_layer_decay``), else the model's blocks
    (``nn.ModuleList``/``nn.Sequential`` block lists, stages of blocks, encoder then decoder, parallel towers; any
    other combination of block lists raises): see :mod:`lit_optim.optim.layer_ids`, and
    :func:`lit_optim.format_layer_ids` to check them. Ids count frozen parameters too, so freezing never shifts them.

    **Checked**: a ``no_decay`` glob or regex or class matching nothing, an override matching only frozen
    parameters, two overrides whose groups would share a name, and, for a given ``optimizer``, parameters it
    cannot handle (``Muon``: only 2-D ones; ``LBFGS``: one group; ``SparseAdam``: sparse embeddings) all raise.

    Args:
        module: the module to group (a LightningModule too).
        lr: base learning rate (a float, or a one-element float tensor as torch allows).
        weight_decay: weight decay of the decayed parameters.
        overrides: ordered mapping pattern -> settings (see above).
        layer_decay: layer-wise LR decay factor in (0, 1], or ``None`` for none (as is 1).
        layer_id_fn: maps a parameter name to its layer id (needs ``layer_decay``).
        decay_embeddings: decay ``nn.Embedding``/``nn.EmbeddingBag`` weights (default ``True``).
        no_decay: a list (or ``None``) of extra no-decay rules (module classes or instances, globs, compiled
            regexes, predicates).
        include_frozen: also group parameters with ``requires_grad=False`` (to unfreeze them later).
        optimizer: the optimizer (name or class) whose hyper-parameter names overrides are checked against;
            ``None`` accepts the names of any ``torch.optim`` optimizer.

    Returns:
        The list of group dicts.

    Raises:
        ValueError: on a negative ``lr``/``weight_decay``, ``layer_decay`` outside (0, 1], an unknown override
            key, a pattern matching no parameter, an ambiguous overlap, or no trainable parameter.
        TypeError: on a pattern or rule of the wrong type.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> groups = param_groups(model, lr=0.1, weight_decay=0.05, overrides={"2.*": {"lr_scale": 0.5}})
        >>> [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
        [('decay', 0.1, 0.05, 1), ('no_decay', 0.1, 0.0, 3), ('2/decay', 0.05, 0.05, 1), ('2/no_decay', 0.05, 0.0, 1)]
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"`module` must be an nn.Module (the model), got {type(module).__name__}. HINT: pass the model itself, "
            "param_groups(model), not model.parameters(): the rules need the module tree and parameter names."
        )
    check_rate("lr", lr)
    check_non_negative("weight_decay", weight_decay)
    _check_flag("decay_embeddings", decay_embeddings)
    _check_flag("include_frozen", include_frozen)
    cls = None if optimizer is None else resolve_optimizer(optimizer)
    if layer_decay is not None:
        check_ratio("layer_decay", layer_decay)
        if layer_decay == 1:  # every scale is 1: plain groups, not one merged group mislabelled "layer_00"
            layer_decay = None
    elif layer_id_fn is not None:
        raise ValueError("`layer_id_fn` is only used with `layer_decay`; pass e.g. layer_decay=0.75 as well.")
    ruled, predicates, patterns = split_rules(no_decay or (), module)
    walk = Walk(module, decay_embeddings, ruled)
    check_rules_matched(patterns, walk)
    if predicates or walk.declared:
        walk.apply_name_rules(predicates)

    keep = [i for i, p in enumerate(walk.params) if include_frozen or p.requires_grad]
    if not keep:
        frozen = len(walk.params)
        detail = f"all {frozen} are frozen; pass include_frozen=True to group them" if frozen else "it has none"
        raise ValueError(f"{type(module).__name__} has no trainable parameters to optimize ({detail}).")

    trainable = [include_frozen or p.requires_grad for p in walk.params]
    parsed: list[Override] = parse_overrides(
        module, overrides or {}, walk.params, walk.names, walk.aliases, cls, trainable=trainable
    )
    combos = combine_overrides(parsed, len(walk.params), walk.names, walk.aliases)

    layer_ids: list[int] | None = None
    num_layers = 0
    if layer_decay is not None:
        layer_ids, num_layers = assign_layer_ids(module, walk.params, walk.names, layer_id_fn)
    width = max(2, len(str(num_layers)))

    # Bucket parameters by (layer, overrides, no-decay); few buckets, so the per-parameter work stays tiny.
    buckets: dict[tuple[int, tuple[int, ...], bool], list[nn.Parameter]] = {}
    for i in keep:
        key = (layer_ids[i] if layer_ids is not None else -1, combos[i] if combos else (), walk.no_decay[i])
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = bucket = []
        bucket.append(walk.params[i])

    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    scaled_tensors: dict[tuple[int, float], torch.Tensor] = {}
    label_counts: dict[tuple[Any, ...], int] = {}
    for (layer_id, combo, no_dec), params in buckets.items():
        settings: dict[str, Any] = {}
        labels = []
        named = []  # labels the user gave explicitly: their groups never merge into differently named ones
        for k in combo:
            settings.update(parsed[k].settings)
            labels.append(parsed[k].label)
            if "name" in parsed[k].settings:
                named.append(parsed[k].label)
        settings.pop("name", None)
        scale = float(settings.pop("lr_scale", 1.0))
        if layer_decay is not None:
            scale *= layer_decay ** (num_layers - layer_id)
        base_lr = settings.pop("lr", lr)
        decay = settings.pop("weight_decay", weight_decay)
        group: dict[str, Any] = {
            "params": params,
            "lr": _scaled(base_lr, scale, scaled_tensors),
            _SCALE_KEY: scale,
            "weight_decay": 0.0 if no_dec else decay,
            **settings,
        }
        parts = [f"layer_{layer_id:0{width}d}"] if layer_decay is not None else []
        parts += ["+".join(labels)] if labels else []
        group["name"] = "/".join([*parts, "no_decay" if no_dec else "decay"])
        identity = (*sorted((k, _freeze(v)) for k, v in group.items() if k not in ("params", "name")), tuple(named))
        existing = merged.get(identity)
        if existing is None:
            merged[identity] = group
            label_counts[identity] = len(labels)
        else:
            existing["params"] = existing["params"] + params
            if len(labels) < label_counts[identity]:  # name a merged group after its least-overridden part
                existing["name"], label_counts[identity] = group["name"], len(labels)
    groups = list(merged.values())
    _check_unique_names(groups, parsed)
    _order_params(groups, walk.params)
    if cls is not None:
        sparse = {id(p) for m in module.modules() if isinstance(m, _EMBEDDINGS) and m.sparse for p in m.parameters()}
        check_params_fit(cls, groups, dict(zip(map(id, walk.params), walk.names, strict=True)), sparse)
    return groups


def _scaled(lr: Any, scale: float, cache: dict[tuple[int, float], torch.Tensor]) -> Any:
    """``lr * scale``; a tensor lr is scaled once per scale, so groups with equal settings still merge."""
    if scale == 1:
        return lr
    if not isinstance(lr, torch.Tensor):
        return lr * scale
    key = (id(lr), scale)
    if key not in cache:
        cache[key] = lr * scale
    return cache[key]


def _check_unique_names(groups: list[dict[str, Any]], parsed: list[Override]) -> None:
    seen: set[str] = set()
    for group in groups:
        name = group["name"]
        if name in seen:
            labels = name.split("/")[-2].split("+") if "/" in name else []
            clashing = sorted(o.pattern for o in parsed if o.label in labels)
            raise ValueError(
                f"Two parameter groups would be named {name!r}: overrides {', '.join(clashing)} share that label "
                "but set different values, so their groups cannot merge. HINT: give each override its own 'name', "
                "or the same settings."
            )
        seen.add(name)


def _order_params(groups: list[dict[str, Any]], order: list[nn.Parameter]) -> None:
    """Keep each group's parameters in module order after merging (only needed when buckets merged)."""
    position = None
    for group in groups:
        params = group["params"]
        if len(params) > 1:
            if position is None:
                position = {id(p): i for i, p in enumerate(order)}
            ranks = [position[id(p)] for p in params]
            if any(a > b for a, b in itertools.pairwise(ranks)):
                group["params"] = [p for _, p in sorted(zip(ranks, params, strict=True), key=lambda t: t[0])]


_TABLE_KEYS = frozenset({"params", "name", "lr", _SCALE_KEY, "weight_decay"})


def format_groups(groups: Iterable[Mapping[str, Any]] | torch.optim.Optimizer) -> str:
    """Return a text table of parameter groups: name, tensors, parameters, lr, scale, weight decay, others.

    Works on the output of :func:`param_groups` and on an optimizer; for an optimizer, the "other" column only
    shows the settings where a group differs from the optimizer's defaults.

    Args:
        groups: group dicts, or an optimizer whose ``param_groups`` to show.

    Examples:
        >>> print(format_groups(param_groups(nn.Linear(3, 2), lr=0.1)))
        name      tensors  parameters  lr   lr_scale  weight_decay  other
        --------  -------  ----------  ---  --------  ------------  -----
        decay     1        6           0.1  1         0.01
        no_decay  1        2           0.1  1         0
    """
    defaults_of: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict.fromkeys
    if isinstance(groups, torch.optim.Optimizer):
        # a HybridOptimizer compares each group with the defaults of the inner optimizer that owns it
        defaults_of = getattr(groups, "defaults_for", None) or (lambda _, d=groups.defaults: d)
        groups = groups.param_groups
    headers = ["name", "tensors", "parameters", "lr", "lr_scale", "weight_decay", "other"]
    rows = []
    for index, group in enumerate(groups):
        params = list(group["params"])
        defaults = defaults_of(group)
        others = ", ".join(
            f"{k}={_short(v)}"
            for k, v in group.items()
            if k not in _TABLE_KEYS and not (k in defaults and _freeze(defaults[k]) == _freeze(v))
        )
        rows.append(
            [
                str(group.get("name", index)),
                str(len(params)),
                f"{sum(p.numel() for p in params):,}",
                _short(group.get("lr", "")),
                _short(group.get(_SCALE_KEY, "")),
                _short(group.get("weight_decay", "")),
                others,
            ]
        )
    return text_table(headers, rows)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(value)
