"""One optimizer made of several torch optimizers: Muon for the hidden matrices, AdamW for the rest, or any mix.

Lightning's automatic optimization takes one optimizer. :class:`HybridOptimizer` holds several inner
``torch.optim`` optimizers and *is* a ``torch.optim.Optimizer`` whose ``param_groups`` are the inner optimizers'
group dicts themselves (the very same dict objects), so a scheduler writing ``group["lr"]``, a logger reading it
and a clipper walking the gradients all reach the inner optimizers unchanged. ``step``, ``zero_grad``,
``state_dict`` and ``load_state_dict`` are one call each; step hooks registered on the hybrid fire once per
hybrid step. :func:`lit_optim.configure_optimizers` builds one with ``optimizer="muon"`` or with overrides that
route patterns to other optimizers (``{"optimizer": "sgd"}``); see :func:`lit_optim.build_hybrid`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, overload

import torch
from torch.optim import Optimizer

from lit_optim._validation import did_you_mean, unknown_key_error
from lit_optim.optim._routing import OPTIMIZER_KEY, check_group_keys, check_matrices
from lit_optim.optim.optimizers import TORCH_GROUP_KEYS

__all__ = ["HybridOptimizer"]


def _is_sharded(param: torch.Tensor) -> bool:
    """Whether ``param`` is a DTensor with a sharded placement (FSDP2, tensor parallelism)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(param, DTensor) and any(not placement.is_replicate() for placement in param.placements)


def refuse_sharded_muon(optimizer: Optimizer, label: str, names: Mapping[int, str] | None = None) -> None:
    """Raise if a torch ``Muon`` would orthogonalize a shard of a matrix instead of the matrix.

    torch's Muon runs Newton-Schulz on whatever tensor it is given; on an FSDP2/tensor-parallel shard that is a
    different (wrong) update, with no error. ``names`` maps ``id(param)`` to a readable name.
    """
    muon = getattr(torch.optim, "Muon", None)
    if muon is None or not isinstance(optimizer, muon):
        return
    for group in optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            if _is_sharded(param):
                name = (names or {}).get(id(param))
                where = repr(name) if name else f"{index} of group {group.get('name', '?')!r}"
                raise ValueError(
                    f"Parameter {where} is a sharded DTensor (placements {tuple(param.placements)}), but the inner "
                    f"optimizer {label!r} is torch's Muon, whose Newton-Schulz step would orthogonalize each shard "
                    "instead of the full matrix. lit_optim refuses Muon on sharded parameters (FSDP2 / "
                    "ModelParallelStrategy, tensor parallelism). HINT: train with DDP, or route these parameters to "
                    "AdamW with an override {'optimizer': 'adamw'}."
                )


class HybridOptimizer(Optimizer):
    """Several torch optimizers presented as one: their param groups, one ``step``, one ``state_dict``.

    Each inner optimizer is known by a label (``"muon"``, ``"adamw"``). At construction every group gets the key
    ``"optimizer"`` (its label) and its ``name`` is prefixed with the label (``"decay"`` becomes
    ``"muon/decay"``; a group without a name is called ``"<label>/<index>"``), so loggers, clipping and
    ``format_groups`` show who owns each group. ``param_groups`` lists the inner groups in the mapping's order and
    they are the same dict objects, so writes reach the inner optimizers. ``step`` steps the inner optimizers in
    that order, exactly as stepping them by hand one after the other.

    ``state_dict()`` has torch's usual form (``state`` by parameter index, ``param_groups`` with their names
    and owners), so checkpoints load with ``torch.load(weights_only=True)``; ``load_state_dict`` splits it back
    and refuses a checkpoint whose groups have other names or owners (a changed routing).

    Args:
        optimizers: label -> an optimizer instance (at least one; no parameter in two of them).

    Raises:
        ValueError: on no optimizers, a parameter shared by two of them, a label with ``/``, or torch's Muon on
            sharded (DTensor) parameters.
        TypeError: on a value that is not a ``torch.optim.Optimizer`` (or is itself a hybrid).

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = HybridOptimizer({
        ...     "muon": torch.optim.Muon([model[0].weight], lr=0.01),
        ...     "adamw": torch.optim.AdamW([{"params": [model[0].bias, *model[1].parameters()], "name": "rest"}]),
        ... })
        >>> [g["name"] for g in opt.param_groups]
        ['muon/0', 'adamw/rest']
        >>> opt.param_groups[1] is opt.optimizers["adamw"].param_groups[0]
        True
    """

    def __init__(self, optimizers: Mapping[str, Optimizer]) -> None:
        if not isinstance(optimizers, Mapping):
            raise TypeError(f"HybridOptimizer takes a mapping label -> optimizer, got {type(optimizers).__name__}.")
        if not optimizers:
            raise ValueError(
                "HybridOptimizer needs a non-empty mapping label -> optimizer, e.g. "
                f"{{'muon': Muon(...), 'adamw': AdamW(...)}}, got {optimizers!r}."
            )
        seen: dict[int, str] = {}
        for label, inner in optimizers.items():
            if not isinstance(label, str) or not label or "/" in label:
                raise ValueError(f"Inner optimizer labels must be non-empty strings without '/', got {label!r}.")
            if not isinstance(inner, Optimizer) or isinstance(inner, HybridOptimizer):
                raise TypeError(
                    f"Inner optimizer {label!r} must be a torch.optim.Optimizer (not a HybridOptimizer), "
                    f"got {type(inner).__name__}."
                )
            for param in (p for g in inner.param_groups for p in g["params"]):
                other = seen.setdefault(id(param), label)
                if other != label:
                    raise ValueError(
                        f"A parameter of shape {tuple(param.shape)} is in both inner optimizers {other!r} and "
                        f"{label!r}; each parameter must have exactly one owner."
                    )
        self.optimizers: dict[str, Optimizer] = dict(optimizers)
        # torch's own restore path sets every attribute an Optimizer needs (hooks, step patching) without
        # re-adding groups, which would copy the group dicts and cut them off from the inner optimizers.
        super().__setstate__({"defaults": {}, "param_groups": []})
        self._label_groups()
        for label, inner in self.optimizers.items():
            refuse_sharded_muon(inner, label)
        self._sync()

    # --- the group view ---------------------------------------------------------------------------------------

    def _label_groups(self) -> None:
        for label, inner in self.optimizers.items():
            for index, group in enumerate(inner.param_groups):
                group[OPTIMIZER_KEY] = label
                name = group.get("name")
                if name is None:
                    group["name"] = f"{label}/{index}"
                elif not str(name).startswith(label + "/"):
                    group["name"] = f"{label}/{name}"

    def _sync(self) -> None:
        """Point ``param_groups`` (in place) at the inner optimizers' current group dicts; merge ``defaults``."""
        groups = [group for inner in self.optimizers.values() for group in inner.param_groups]
        self.param_groups[:] = groups
        # Only what every inner optimizer agrees on (a reader of `defaults["betas"]` must not meet a Muon group).
        inners = list(self.optimizers.values())
        first = inners[0].defaults
        self.defaults.clear()
        self.defaults.update(
            {k: v for k, v in first.items() if all(k in o.defaults and _same(o.defaults[k], v) for o in inners[1:])}
        )

    @property
    def state(self) -> defaultdict[torch.Tensor, Any]:
        """Every inner optimizer's per-parameter state (the same per-parameter dicts, so edits reach them).

        Writes go through too: ``hybrid.state[p]`` for a parameter with no state yet creates it in the inner
        optimizer that owns ``p``, as torch's own ``optimizer.state[p]`` does.
        """
        return _StateView(self.optimizers)

    @state.setter
    def state(self, value: Any) -> None:
        raise AttributeError(
            "HybridOptimizer.state is a view of its inner optimizers' state; use load_state_dict() or set "
            "`optimizers[label].state`."
        )

    def owner(self, group: Mapping[str, Any]) -> Optimizer:
        """The inner optimizer that owns ``group`` (one of ``param_groups``)."""
        label = group.get(OPTIMIZER_KEY)
        if label not in self.optimizers:
            raise unknown_key_error(
                "inner optimizer", str(label), self.optimizers, hint="Set the group's 'optimizer' key to one of them."
            )
        return self.optimizers[label]

    def defaults_for(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults of the inner optimizer owning ``group`` (what ``format_groups`` compares against)."""
        return self.owner(group).defaults

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{label}={type(o).__name__}({len(o.param_groups)} groups)" for label, o in self.optimizers.items()
        )
        return f"HybridOptimizer({parts})"

    # --- one optimizer ----------------------------------------------------------------------------------------

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Evaluate ``closure`` (with gradients enabled) once, then step every inner optimizer in order."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self.optimizers.values():
            inner.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or set to ``None``) the gradients of every inner optimizer's parameters."""
        for inner in self.optimizers.values():
            inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer named by its ``"optimizer"`` key (e.g. when unfreezing).

        The group is checked as at build time: its keys against the owner, Muon's 2-D rule, and no parameter
        already owned by another inner optimizer (it would be stepped twice).
        """
        label = param_group.get(OPTIMIZER_KEY)
        if label is None and len(self.optimizers) == 1:
            label = next(iter(self.optimizers))
        if label not in self.optimizers:
            first = sorted(self.optimizers)[0]
            raise ValueError(
                f"A group added to a HybridOptimizer needs an 'optimizer' key naming its owner, one of "
                f"{sorted(self.optimizers)}, got {label!r}.{did_you_mean(str(label), self.optimizers)} HINT: "
                f"add_param_group({{'params': ..., 'optimizer': {first!r}}}) (in a BaseFinetuning's "
                "`finetune_function`, instead of `unfreeze_and_add_param_group`, which cannot set the key)."
            )
        params = param_group.get("params", [])
        params = [params] if isinstance(params, torch.Tensor) else params if isinstance(params, set) else list(params)
        param_group = {**param_group, "params": params}
        owners = {id(p): other for other, o in self.optimizers.items() for g in o.param_groups for p in g["params"]}
        for param in params:
            if owners.get(id(param), label) != label:
                raise ValueError(
                    f"A parameter of shape {tuple(param.shape)} is already optimized by the inner optimizer "
                    f"{owners[id(param)]!r}; it cannot also go to {label!r} (it would be stepped twice). HINT: add "
                    "only parameters no group holds yet, e.g. the newly unfrozen ones."
                )
        inner = self.optimizers[label]
        checked = {"name": str(len(inner.param_groups)), **param_group}
        check_group_keys(type(inner), label, {k: v for k, v in checked.items() if k not in TORCH_GROUP_KEYS})
        check_matrices(type(inner), label, [checked], {id(p): f"#{i} of the added group" for i, p in enumerate(params)})
        inner.add_param_group(param_group)
        refuse_sharded_muon(inner, label)
        self._label_groups()
        self._sync()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` of a hybrid with the same inner optimizers and groups."""
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(
                f"The state dict has {len(saved)} parameter groups ({[g.get('name') for g in saved]}), this "
                f"HybridOptimizer has {len(self.param_groups)} ({[g['name'] for g in self.param_groups]}): it was "
                "saved with a different grouping or routing. HINT: build the optimizer as in the saved run."
            )
        for index, (mine, theirs) in enumerate(zip(self.param_groups, saved, strict=True)):
            if theirs.get(OPTIMIZER_KEY) != mine[OPTIMIZER_KEY] or theirs.get("name") != mine["name"]:
                raise ValueError(
                    f"Group {index} of the state dict is {theirs.get('name')!r} (owner {theirs.get(OPTIMIZER_KEY)!r}) "
                    f"but this optimizer's is {mine['name']!r} (owner {mine[OPTIMIZER_KEY]!r}): it was saved with a "
                    "different routing of parameters to optimizers. HINT: build the optimizer as in the saved run."
                )
        state = state_dict["state"]
        start = 0
        for inner in self.optimizers.values():
            part = saved[start : start + len(inner.param_groups)]
            start += len(part)
            ids = {i for group in part for i in group["params"]}
            inner.load_state_dict({"state": {i: s for i, s in state.items() if i in ids}, "param_groups": part})
        self._sync()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["optimizers"])  # type: ignore[misc]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


class _StateView(defaultdict):  # type: ignore[type-arg]
    """The inner optimizers' states as one mapping, writing new entries into the owning optimizer's state."""

    def __init__(self, optimizers: Mapping[str, Optimizer]) -> None:
        super().__init__(dict)
        self._owners = {id(p): inner for inner in optimizers.values() for g in inner.param_groups for p in g["params"]}
        for inner in optimizers.values():
            dict.update(self, inner.state)

    def _owner(self, param: torch.Tensor) -> Optimizer:
        owner = self._owners.get(id(param))
        if owner is None:
            raise KeyError(f"No inner optimizer of this HybridOptimizer holds the parameter {tuple(param.shape)}.")
        return owner

    def __missing__(self, param: torch.Tensor) -> Any:
        value = self._owner(param).state[param]  # created there (torch's state is a defaultdict(dict))
        dict.__setitem__(self, param, value)
        return value

    def __setitem__(self, param: torch.Tensor, value: Any) -> None:
        self._owner(param).state[param] = value
        dict.__setitem__(self, param, value)
