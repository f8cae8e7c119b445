"""Route a module's parameter groups to inner optimizers and build one :class:`HybridOptimizer` of them.

:func:`build_hybrid` is what :func:`lit_optim.configure_optimizers` calls for ``"muon"`` (Muon for the hidden
matrices, AdamW for the rest) and for overrides with an ``"optimizer"`` key (any pattern to any optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

from lit_optim._validation import check_non_negative, unknown_key_error
from lit_optim.optim._routing import (
    MATRIX_ONLY,
    OPTIMIZER_KEY,
    add_class,
    check_group_keys,
    check_matrices,
    hidden_matrices,
    resolve_routes,
)
from lit_optim.optim.hybrid import HybridOptimizer, refuse_sharded_muon
from lit_optim.optim.optimizers import hyperparameter_names, resolve_optimizer
from lit_optim.optim.param_groups import NoDecayRule, param_groups

__all__ = ["build_hybrid"]


def build_hybrid(
    module: nn.Module,
    optimizer: str | type[Optimizer] = "muon",
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    overrides: Mapping[str | nn.Module, Mapping[str, Any]] | None = None,
    fallback: str | type[Optimizer] | None = None,
    fallback_lr: float | None = None,
    fallback_kwargs: Mapping[str, Any] | None = None,
    layer_decay: float | None = None,
    layer_id_fn: Callable[[str], int] | None = None,
    decay_embeddings: bool = True,
    no_decay: Iterable[NoDecayRule] = (),
    include_frozen: bool = False,
    **optimizer_kwargs: Any,
) -> HybridOptimizer:
    """Group a module's parameters, route each group to an inner optimizer, return one :class:`HybridOptimizer`.

    **Routing.** With a matrix-only main ``optimizer`` (torch's ``Muon``), the *hidden matrices* go to it: 2-D
    parameters with weight decay inside the blocks (the largest ``nn.ModuleList``; without one, every 2-D
    parameter but the first and the last in module order), never an embedding (``nn.Embedding`` and what is tied
    to it, or a name part containing ``embed``). Everything else goes to ``fallback`` (AdamW): embeddings, the
    output head, norms, biases, 1-D and no-decay parameters, and conv kernels (3-D and more; torch's Muon takes
    only 2-D). With any other main optimizer every parameter goes to it. An override ``{"optimizer": name}``
    routes the parameters its pattern matches to that optimizer, whatever the rule says (any ``torch.optim`` name,
    class or dotted path). Groups are named ``<label>/<group>`` (``muon/decay``, ``adamw/no_decay``,
    ``adamw/head/decay``) with ``label`` the class name in lower case.

    **Hyper-parameters.** ``lr``, ``weight_decay`` and ``**optimizer_kwargs`` are the main optimizer's;
    ``fallback_lr`` (default ``lr``) and ``fallback_kwargs`` (its ``weight_decay`` too, default
    ``weight_decay``) the fallback's; other routed optimizers take their class defaults and the overrides' keys.
    Torch's Muon gets ``adjust_lr_fn="match_rms_adamw"`` unless set: its update is scaled to AdamW's RMS
    (Moonlight, Liu et al. 2025), so one ``lr`` and ``weight_decay`` suit both halves. Every key of every group is
    checked against the optimizer that owns it.

    Args:
        module: the module whose parameters to optimize.
        optimizer: the main optimizer (``"muon"`` by default).
        lr: base learning rate.
        weight_decay: weight decay of the decayed parameters.
        overrides: as for :func:`lit_optim.param_groups`, plus the key ``"optimizer"``.
        fallback: the optimizer of what a matrix-only main optimizer does not take (``None``: ``"adamw"``).
        fallback_lr: the fallback's base learning rate (``None``: ``lr``).
        fallback_kwargs: the fallback's other hyper-parameters, e.g. ``{"betas": (0.9, 0.95)}``.
        layer_decay: as for :func:`lit_optim.param_groups` (and the next four).
        layer_id_fn: maps a parameter name to its layer id.
        decay_embeddings: decay ``nn.Embedding`` weights.
        no_decay: extra no-decay rules.
        include_frozen: also group frozen parameters.
        **optimizer_kwargs: the main optimizer's other hyper-parameters (``momentum``, ``ns_steps``, ...).

    Raises:
        ValueError: on an unknown optimizer name or key, a key the owning optimizer does not take, a non-2-D
            parameter routed to Muon, no parameter for the main optimizer, fallback settings that reach no
            parameter, or Muon on sharded (DTensor) parameters.

    Examples:
        >>> model = nn.Sequential(nn.Embedding(10, 8), nn.ModuleList([nn.Linear(8, 8)]), nn.Linear(8, 10))
        >>> opt = build_hybrid(model, "muon", lr=0.02)
        >>> [(g["name"], len(g["params"])) for g in opt.param_groups]
        [('muon/decay', 1), ('adamw/decay', 2), ('adamw/no_decay', 2)]
    """
    main = resolve_optimizer(optimizer)
    routed, classes = resolve_routes(overrides)
    main_label = add_class(classes, main)
    split = issubclass(main, MATRIX_ONLY)
    try:
        fallback_cls = resolve_optimizer("adamw" if fallback is None else fallback)
    except (ValueError, TypeError) as error:
        raise type(error)(f"`fallback`: {error}") from None
    fallback_kwargs = dict(fallback_kwargs or {})
    if fallback_lr is not None:
        check_non_negative("fallback_lr", fallback_lr)  # named as given (param_groups would say `lr`)
    fallback_label = None  # without a split, the fallback is only what an override routes to it
    if split or (fallback_cls is not main and _has(classes, fallback_cls)):
        fallback_label = add_class(classes, fallback_cls)
    if fallback_label == main_label and split:
        raise ValueError(f"`fallback` must differ from the main optimizer {main.__name__}, got {fallback!r}.")
    if fallback_label is None and (fallback is not None or fallback_lr is not None or fallback_kwargs):
        raise ValueError(
            f"`fallback`, `fallback_lr` and `fallback_kwargs` set the optimizer of what {main.__name__} does not "
            f"take, but {main.__name__} takes every parameter and no override routes any to "
            f"{fallback_cls.__name__}. HINT: drop them, or route patterns with {{'optimizer': "
            f"{fallback_cls.__name__.lower()!r}}}."
        )
    grouping: dict[str, Any] = {
        "overrides": routed, "layer_decay": layer_decay, "layer_id_fn": layer_id_fn,
        "decay_embeddings": decay_embeddings, "no_decay": no_decay, "include_frozen": include_frozen,
    }  # fmt: skip
    groups = param_groups(module, lr=lr, weight_decay=weight_decay, **grouping)
    fallback_groups = groups  # the same groups with the fallback's base lr and weight decay
    if fallback_lr is not None or "weight_decay" in fallback_kwargs:
        fb_lr = lr if fallback_lr is None else fallback_lr
        fb_wd = fallback_kwargs.get("weight_decay", weight_decay)
        fallback_groups = param_groups(module, lr=fb_lr, weight_decay=fb_wd, **grouping)
    hidden: set[int] = set()
    if split:
        # The decay rules alone (no overrides, which may zero a decay or merge groups): what has no weight decay.
        rules = {k: grouping[k] for k in ("decay_embeddings", "no_decay", "include_frozen")}
        exempt = {id(p) for g in param_groups(module, weight_decay=1.0, **rules) if g["weight_decay"] == 0
                  for p in g["params"]}  # fmt: skip
        hidden = hidden_matrices(module) - exempt
    names = {id(p): n for n, p in module.named_parameters(remove_duplicate=True)}

    parts: dict[str, list[dict[str, Any]]] = {main_label: []}
    if fallback_label is not None:
        parts.setdefault(fallback_label, [])
    for group, fb_group in zip(groups, fallback_groups, strict=True):
        label = group.pop(OPTIMIZER_KEY, None)
        if label is not None:
            parts.setdefault(label, []).append(fb_group if label == fallback_label else group)
            fb_group.pop(OPTIMIZER_KEY, None)
            continue
        mine = [p for p in group["params"] if id(p) in hidden]
        rest = [p for p in group["params"] if id(p) not in hidden]
        if mine:
            parts[main_label].append({**group, "params": mine})
        if rest and split and fallback_label is not None:
            parts[fallback_label].append({**fb_group, "params": rest})
        elif rest:
            parts[main_label].append({**group, "params": rest})

    if not parts[main_label]:
        raise ValueError(
            f"No parameter of {type(module).__name__} goes to {main.__name__}: the rule gives it the 2-D matrices "
            "with weight decay inside the blocks (the largest nn.ModuleList; without one, the 2-D parameters "
            "between the first and the last), and none qualified. HINT: route patterns to it with an override, "
            f"e.g. {{'net.1.weight': {{'optimizer': {main_label!r}}}}}, or use 'adamw'."
        )
    if fallback_label is not None and not parts[fallback_label]:
        if fallback_lr is not None or fallback_kwargs:
            raise ValueError(
                f"`fallback_lr`/`fallback_kwargs` were given, but no parameter goes to the fallback "
                f"{fallback_cls.__name__}. HINT: drop them, or check the overrides' 'optimizer' keys."
            )
        del parts[fallback_label]
    inner: dict[str, Optimizer] = {}
    for label, label_groups in parts.items():
        cls = classes[label]
        for group in label_groups:
            check_group_keys(cls, label, group)
        check_matrices(cls, label, label_groups, names)
        kwargs = _inner_kwargs(cls, label, main_label, fallback_label, lr, weight_decay, fallback_lr, optimizer_kwargs,
                               fallback_kwargs)  # fmt: skip
        built = cls(label_groups, **kwargs)
        refuse_sharded_muon(built, label, names)
        inner[label] = built
    return HybridOptimizer(inner)


def wants_hybrid(
    optimizer: str | type[Optimizer],
    overrides: Mapping[Any, Any] | None,
    fallback: Any = None,
    fallback_lr: float | None = None,
    fallback_kwargs: Mapping[str, Any] | None = None,
) -> bool:
    """Whether :func:`lit_optim.configure_optimizers` needs :func:`build_hybrid`.

    It does for a matrix-only optimizer (``"muon"``), an override with an ``"optimizer"`` key, or fallback settings.

    Examples:
        >>> wants_hybrid("muon", None), wants_hybrid("adamw", {"*": {"optimizer": "sgd"}}), wants_hybrid("sgd", {})
        (True, True, False)
    """
    if issubclass(resolve_optimizer(optimizer), MATRIX_ONLY):
        return True
    if fallback is not None or fallback_lr is not None or fallback_kwargs:
        return True
    return isinstance(overrides, Mapping) and any(
        isinstance(settings, Mapping) and OPTIMIZER_KEY in settings for settings in overrides.values()
    )


def _has(classes: Mapping[str, type[Optimizer]], cls: type[Optimizer]) -> bool:
    return any(c is cls for c in classes.values())


def _inner_kwargs(
    cls: type[Optimizer],
    label: str,
    main_label: str,
    fallback_label: str | None,
    lr: float,
    weight_decay: float,
    fallback_lr: float | None,
    optimizer_kwargs: Mapping[str, Any],
    fallback_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The constructor keywords of one inner optimizer: checked against its signature."""
    names = hyperparameter_names(cls)
    kwargs: dict[str, Any] = {"lr": lr}
    if names is None or "weight_decay" in names:
        kwargs["weight_decay"] = weight_decay
    given: Mapping[str, Any] = {}
    if label == main_label:
        given = optimizer_kwargs
    elif label == fallback_label:
        given = fallback_kwargs
        kwargs["lr"] = lr if fallback_lr is None else fallback_lr
    if names is not None:
        for key in given:
            if key not in names:
                where = "optimizer_kwargs" if label == main_label else "fallback_kwargs"
                raise unknown_key_error(
                    f"{cls.__name__} hyper-parameter", key, names, hint=f"It is in `{where}` ({label!r})."
                )
    kwargs.update(given)
    if issubclass(cls, MATRIX_ONLY):
        kwargs.setdefault("adjust_lr_fn", "match_rms_adamw")
    return kwargs
