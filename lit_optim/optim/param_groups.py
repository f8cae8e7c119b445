"""Parameter groups for torch optimizers: weight-decay rules, per-module overrides, layer-wise LR decay.

:func:`param_groups` walks a module once and returns group dicts ready for any ``torch.optim`` optimizer;
:func:`format_groups` prints them as a table.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lit_optim._validation import check_non_negative, check_ratio
from lit_optim.optim._layers import assign_layer_ids
from lit_optim.optim._overrides import Override, combine_overrides, parse_overrides

__all__ = ["NoDecayRule", "format_groups", "param_groups"]

#: A no-decay rule: a module class (all its parameters, submodules' included), an fnmatch glob or a compiled
#: regex on the full parameter name, or a predicate ``(name, parameter) -> bool``.
NoDecayRule = type[nn.Module] | str | re.Pattern[str] | Callable[[str, nn.Parameter], bool]

_NORM_NAME = re.compile(r"Norm(\d+d)?$")
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_COMPILED = "_orig_mod."  # the attribute torch.compile's OptimizedModule keeps the original module under
_DATA_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)
_type_cache: dict[type[nn.Module], tuple[bool, bool]] = {}


def _type_flags(cls: type[nn.Module]) -> tuple[bool, bool]:
    """(is a normalization layer, declares ``no_weight_decay``), cached per class."""
    flags = _type_cache.get(cls)
    if flags is None:
        is_norm = any(_NORM_NAME.search(base.__name__) for base in cls.__mro__)
        flags = (is_norm, callable(getattr(cls, "no_weight_decay", None)))
        _type_cache[cls] = flags
    return flags


class _Walk:
    """Every distinct parameter of a module (by identity) with its names and no-decay flag."""

    def __init__(self, module: nn.Module, decay_embeddings: bool, module_rules: tuple[type[nn.Module], ...]) -> None:
        self.params: list[nn.Parameter] = []
        self.names: list[str] = []
        self.no_decay: list[bool] = []
        self.aliases: dict[int, list[str]] = {}  # index -> later names of a tied parameter
        self.declared: list[str] = []  # full names/globs from `no_weight_decay()` methods
        seen: dict[int, int] = {}
        wrapped = isinstance(module, _DATA_PARALLEL)  # its parameters are all named `module.<name>`
        # a `no_decay` module class covers all of its parameters, its submodules' included (as `.parameters()`)
        ruled: set[int] = set()
        if module_rules:
            ruled = {id(p) for m in module.modules() if isinstance(m, module_rules) for p in m.parameters()}
        # Every path of a shared module instance, so globs and declared names can use any of them.
        for module_name, mod in module.named_modules(remove_duplicate=False):
            own = mod._parameters
            is_norm, declares = _type_flags(type(mod))
            prefix = module_name + "." if module_name else ""
            if declares:
                self.declared.extend(prefix + str(name) for name in mod.no_weight_decay())
            if not own:
                continue
            module_flag = is_norm or (not decay_embeddings and isinstance(mod, _EMBEDDING_TYPES))
            for leaf, param in own.items():
                if param is None:
                    continue
                if type(param) is not nn.Parameter and isinstance(param, nn.parameter.UninitializedParameter):
                    raise ValueError(
                        f"Parameter {prefix + leaf!r} of {type(mod).__name__} is not initialized yet (a lazy module), "
                        "so its shape and decay rule are unknown. HINT: run one forward pass before grouping."
                    )
                flag = module_flag or param.ndim <= 1 or leaf.endswith("bias") or leaf.startswith("bias_")
                flag = flag or id(param) in ruled
                index = seen.get(id(param))
                if index is not None:  # tied: keep the first name; no decay if any occurrence says so
                    self.aliases.setdefault(index, []).append(prefix + leaf)
                    self.no_decay[index] = self.no_decay[index] or flag
                else:
                    index = seen[id(param)] = len(self.params)
                    self.params.append(param)
                    self.names.append(prefix + leaf)
                    self.no_decay.append(flag)
                if wrapped or _COMPILED in prefix:  # patterns may leave out the wrappers' `module.`/`_orig_mod.`
                    bare = (prefix + leaf).replace(_COMPILED, "")
                    self.aliases.setdefault(index, []).append(bare[len("module.") :] if wrapped else bare)

    def all_names(self, index: int) -> list[str]:
        return [self.names[index], *self.aliases.get(index, ())]

    def apply_name_rules(self, rules: list[Callable[[str, nn.Parameter], bool]]) -> None:
        declared_exact = {name for name in self.declared if not any(c in name for c in "*?[")}
        globs = [re.compile(fnmatch.translate(name)) for name in self.declared if name not in declared_exact]
        if globs:
            rules = [*rules, lambda name, _: any(g.match(name) for g in globs)]
        for index, flag in enumerate(self.no_decay):
            if flag:
                continue
            names = self.all_names(index)
            if any(name in declared_exact for name in names) or any(
                rule(name, self.params[index]) for rule in rules for name in names
            ):
                self.no_decay[index] = True


def _regex_rule(regex: re.Pattern[str], full: bool) -> Callable[[str, nn.Parameter], bool]:
    def rule(name: str, _: nn.Parameter) -> bool:
        return (regex.match(name) if full else regex.search(name)) is not None

    return rule


def _split_rules(rules: Iterable[NoDecayRule]) -> tuple[tuple[type[nn.Module], ...], list[Callable[..., bool]]]:
    types: list[type[nn.Module]] = []
    predicates: list[Callable[[str, nn.Parameter], bool]] = []
    for rule in rules:
        if isinstance(rule, type) and issubclass(rule, nn.Module):
            types.append(rule)
        elif isinstance(rule, str):
            predicates.append(_regex_rule(re.compile(fnmatch.translate(rule)), full=True))
        elif isinstance(rule, re.Pattern):
            predicates.append(_regex_rule(rule, full=False))
        elif callable(rule) and not isinstance(rule, type):
            predicates.append(rule)
        else:
            raise TypeError(
                "Each `no_decay` rule must be an nn.Module subclass, a glob string, a compiled regex or a "
                f"callable (name, parameter) -> bool, got {rule!r} ({type(rule).__name__})."
            )
    return tuple(types), predicates


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
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    overrides: Mapping[str | nn.Module, Mapping[str, Any]] | None = None,
    layer_decay: float | None = None,
    layer_id_fn: Callable[[str], int] | None = None,
    decay_embeddings: bool = True,
    no_decay: Iterable[NoDecayRule] = (),
    include_frozen: bool = False,
    optimizer: str | type[torch.optim.Optimizer] | None = None,
) -> list[dict[str, Any]]:
    r"""Group a module's parameters for a torch optimizer.

    Every trainable parameter lands in exactly one group. Each group has ``params``, a unique ``name``, the
    effective ``lr`` (``lr * lr_scale``), ``lr_scale``, ``weight_decay`` and the overrides' other
    hyper-parameters. Groups with identical hyper-parameters are merged (the merged group takes the name of
    its part with the fewest override labels, the first of those); groups come in module order.

    **No weight decay** for: every bias (leaf name ending in ``bias`` or starting with ``bias_``, as attention's
    ``bias_k``); every parameter of a normalization layer
    (any class, or base class, whose name ends in ``Norm`` or ``Norm<k>d``: all torch norms and custom
    ``RMSNorm`` s); every parameter with ``ndim <= 1``; names a submodule lists in ``no_weight_decay()`` (the
    timm convention), resolved with that submodule's prefix (names that do not exist are ignored, as timm
    does); embeddings when ``decay_embeddings=False``; and the extra ``no_decay`` rules.

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

    **Layer-wise decay**: ``lr_scale = layer_decay ** (num_layers - layer_id)``. Automatic ids: parameters in
    block ``i`` of the largest ``nn.ModuleList`` get ``i + 1``; parameters registered before the first block (a
    stem) and other embeddings (``nn.Embedding`` or a name part containing ``embed``, or ``cls_token``) get 0; the
    rest (the head) ``num_layers = N + 1``, scale 1. A ``layer_id_fn(name) -> int`` replaces this, with
    ``num_layers`` its largest id. Ids are computed over all parameters, frozen ones included, so freezing never
    shifts them.

    Args:
        module: the module to group (a LightningModule too).
        lr: base learning rate.
        weight_decay: weight decay of the decayed parameters.
        overrides: ordered mapping pattern -> settings (see above).
        layer_decay: layer-wise LR decay factor in (0, 1], or ``None`` for none (as is 1).
        layer_id_fn: maps a parameter name to its layer id (needs ``layer_decay``).
        decay_embeddings: decay ``nn.Embedding``/``nn.EmbeddingBag`` weights (default ``True``).
        no_decay: extra no-decay rules (module classes, globs, compiled regexes, predicates).
        include_frozen: also group parameters with ``requires_grad=False`` (to unfreeze them later).
        optimizer: the optimizer (name or class) whose hyper-parameter names overrides are checked against;
            ``None`` accepts the names of any ``torch.optim`` optimizer.

    Returns:
        The list of group dicts.

    Raises:
        ValueError: on a negative ``lr``/``weight_decay``, ``layer_decay`` outside (0, 1], an unknown override
            key, a pattern matching no parameter, an ambiguous overlap, or no trainable parameter.
        TypeError: on a pattern or rule of the wrong type.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> groups = param_groups(model, lr=0.1, weight_decay=0.05, overrides={"2.*": {"lr_scale": 0.5}})
        >>> [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
        [('decay', 0.1, 0.05, 1), ('no_decay', 0.1, 0.0, 3), ('2/decay', 0.05, 0.05, 1), ('2/no_decay', 0.05, 0.0, 1)]
    """
    check_non_negative("lr", lr)
    check_non_negative("weight_decay", weight_decay)
    if layer_decay is not None:
        check_ratio("layer_decay", layer_decay)
        if layer_decay == 1:  # every scale is 1: plain groups, not one merged group mislabelled "layer_00"
            layer_decay = None
    elif layer_id_fn is not None:
        raise ValueError("`layer_id_fn` is only used with `layer_decay`; pass e.g. layer_decay=0.75 as well.")
    module_rules, predicates = _split_rules(no_decay)
    walk = _Walk(module, decay_embeddings, module_rules)
    if predicates or walk.declared:
        walk.apply_name_rules(predicates)

    keep = [i for i, p in enumerate(walk.params) if include_frozen or p.requires_grad]
    if not keep:
        frozen = len(walk.params)
        detail = f"all {frozen} are frozen; pass include_frozen=True to group them" if frozen else "it has none"
        raise ValueError(f"{type(module).__name__} has no trainable parameters to optimize ({detail}).")

    parsed: list[Override] = parse_overrides(module, overrides or {}, walk.params, walk.names, walk.aliases, optimizer)
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
    label_counts: dict[tuple[Any, ...], int] = {}
    for (layer_id, combo, no_dec), params in buckets.items():
        settings: dict[str, Any] = {}
        labels = []
        for k in combo:
            settings.update(parsed[k].settings)
            labels.append(parsed[k].label)
        settings.pop("name", None)
        scale = float(settings.pop("lr_scale", 1.0))
        if layer_decay is not None:
            scale *= layer_decay ** (num_layers - layer_id)
        base_lr = settings.pop("lr", lr)
        decay = settings.pop("weight_decay", weight_decay)
        group: dict[str, Any] = {
            "params": params,
            "lr": base_lr * scale,
            "lr_scale": scale,
            "weight_decay": 0.0 if no_dec else decay,
            **settings,
        }
        parts = [f"layer_{layer_id:0{width}d}"] if layer_decay is not None else []
        parts += ["+".join(labels)] if labels else []
        group["name"] = "/".join([*parts, "no_decay" if no_dec else "decay"])
        identity = tuple(sorted((k, _freeze(v)) for k, v in group.items() if k not in ("params", "name")))
        existing = merged.get(identity)
        if existing is None:
            merged[identity] = group
            label_counts[identity] = len(labels)
        else:
            existing["params"] = existing["params"] + params
            if len(labels) < label_counts[identity]:  # name a merged group after its least-overridden part
                existing["name"], label_counts[identity] = group["name"], len(labels)
    groups = list(merged.values())
    _order_params(groups, walk.params)
    return groups


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


_TABLE_KEYS = frozenset({"params", "name", "lr", "lr_scale", "weight_decay"})


def format_groups(groups: Iterable[Mapping[str, Any]] | torch.optim.Optimizer) -> str:
    """Return a text table of parameter groups: name, tensors, parameters, lr, scale, weight decay, others.

    Works on the output of :func:`param_groups` and on an optimizer; for an optimizer, the "other" column only
    shows the settings where a group differs from the optimizer's defaults.

    Args:
        groups: group dicts, or an optimizer whose ``param_groups`` to show.

    Example:
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
                _short(group.get("lr_scale", "")),
                _short(group.get("weight_decay", "")),
                others,
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(value)
