"""LightningModule-facing entry points: :func:`configure_optimizers` and :class:`OptimizerMixin`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from lightning.pytorch import LightningModule
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lit_optim._validation import closest_match
from lit_optim.optim.optimizers import build_optimizer, hyperparameter_names, resolve_optimizer
from lit_optim.optim.param_groups import NoDecayRule, param_groups
from lit_optim.optim.routing import build_hybrid, wants_hybrid
from lit_optim.scheduler_config import lightning_scheduler_config, plateau_scheduler_config
from lit_optim.schedules._config import plain_config, spec_from_config
from lit_optim.schedules.plateau import Plateau

__all__ = ["OPTIMIZER_HPARAMS", "OptimizerMixin", "configure_optimizers", "scheduler_config"]

#: The ``hparams`` keys :class:`OptimizerMixin` reads (the arguments of :func:`configure_optimizers`).
OPTIMIZER_HPARAMS = (
    "optimizer",
    "lr",
    "weight_decay",
    "overrides",
    "layer_decay",
    "scheduler",
    "decay_embeddings",
    "include_frozen",
    "optimizer_kwargs",
    "fallback",
    "fallback_lr",
    "fallback_kwargs",
)

# Common spellings of our keys that would otherwise be silently ignored as "the user's own" hparams.
_ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "optim": "optimizer", "lr_scheduler": "scheduler"}


def configure_optimizers(
    module: nn.Module,
    optimizer: str | type[Optimizer] = "adamw",
    lr: float = 1e-3,
    weight_decay: float | None = None,
    overrides: Mapping[str | nn.Module, Mapping[str, Any]] | None = None,
    layer_decay: float | None = None,
    scheduler: Any = None,
    *,
    decay_embeddings: bool = True,
    include_frozen: bool = False,
    no_decay: Iterable[NoDecayRule] = (),
    layer_id_fn: Callable[[str], int] | None = None,
    fallback: str | type[Optimizer] | None = None,
    fallback_lr: float | None = None,
    fallback_kwargs: Mapping[str, Any] | None = None,
    **optimizer_kwargs: Any,
) -> dict[str, Any]:
    """Build what ``LightningModule.configure_optimizers`` returns: grouped parameters and an optimizer.

    The groups come from :func:`lit_optim.param_groups` (biases, norms and 1-D parameters without weight decay,
    overrides, layer-wise decay), the optimizer from :func:`lit_optim.build_optimizer` (every key checked).
    The grouping options of :func:`lit_optim.param_groups` are passed through by keyword.

    Args:
        module: the LightningModule (or any module) whose parameters to optimize.
        optimizer: a case-insensitive ``torch.optim`` name or an ``Optimizer`` subclass.
        lr: base learning rate (each group's ``lr`` is this times its ``lr_scale``).
        weight_decay: weight decay of the decayed parameters; ``None`` means 0.01, or 0 for an optimizer without
            weight decay (``Rprop``, ``LBFGS``, ``SparseAdam``).
        overrides: ordered mapping pattern (glob or submodule) -> settings; see :func:`lit_optim.param_groups`.
        layer_decay: layer-wise learning-rate decay in (0, 1], or ``None``.
        scheduler: a schedule spec from :mod:`lit_optim.schedules`, or ``None`` for a constant LR.
        decay_embeddings: decay ``nn.Embedding`` weights (see :func:`lit_optim.param_groups`, as the next three).
        include_frozen: also group parameters with ``requires_grad=False``.
        no_decay: extra no-decay rules (module classes, globs, compiled regexes, predicates).
        layer_id_fn: maps a parameter name to its layer id (needs ``layer_decay``).
        fallback: with ``optimizer="muon"``, the optimizer of the rest (``None``: AdamW); see
            :func:`lit_optim.build_hybrid`, which builds the optimizer for ``"muon"`` and for overrides with an
            ``"optimizer"`` key (a :class:`lit_optim.HybridOptimizer`).
        fallback_lr: the fallback's base learning rate (``None``: ``lr``).
        fallback_kwargs: the fallback's other hyper-parameters (``betas``, ``weight_decay``, ...).
        **optimizer_kwargs: other optimizer hyper-parameters (``betas``, ``momentum``, ``eps``, ...).

    Returns:
        ``{"optimizer": opt}``, plus ``"lr_scheduler"`` (a Lightning scheduler config) when ``scheduler`` is set.

    Example:
        >>> from torch import nn
        >>> config = configure_optimizers(nn.Linear(4, 2), "sgd", lr=0.1, momentum=0.9)
        >>> [(g["name"], g["lr"], g["weight_decay"], g["momentum"]) for g in config["optimizer"].param_groups]
        [('decay', 0.1, 0.01, 0.9), ('no_decay', 0.1, 0.0, 0.9)]
    """
    cls = resolve_optimizer(optimizer)
    if weight_decay is None:
        names = hyperparameter_names(cls)
        weight_decay = 0.01 if names is None or "weight_decay" in names else 0.0
    if wants_hybrid(cls, overrides, fallback, fallback_lr, fallback_kwargs):
        built: Optimizer = build_hybrid(
            module, cls, lr=lr, weight_decay=weight_decay, overrides=overrides, fallback=fallback,
            fallback_lr=fallback_lr, fallback_kwargs=fallback_kwargs, layer_decay=layer_decay,
            layer_id_fn=layer_id_fn, decay_embeddings=decay_embeddings, no_decay=no_decay,
            include_frozen=include_frozen, **optimizer_kwargs,
        )  # fmt: skip
        if scheduler is None:
            return {"optimizer": built}
        return {"optimizer": built, "lr_scheduler": scheduler_config(built, scheduler, module)}
    groups = param_groups(
        module,
        lr=lr,
        weight_decay=weight_decay,
        overrides=overrides,
        layer_decay=layer_decay,
        layer_id_fn=layer_id_fn,
        decay_embeddings=decay_embeddings,
        no_decay=no_decay,
        include_frozen=include_frozen,
        optimizer=cls,
    )
    built = build_optimizer(cls, groups, **optimizer_kwargs)
    if scheduler is None:
        return {"optimizer": built}
    return {"optimizer": built, "lr_scheduler": scheduler_config(built, scheduler, module)}


def scheduler_config(optimizer: Optimizer, scheduler: Any, module: nn.Module) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` dict for a schedule spec, its name, or its config mapping.

    ``scheduler`` may be a spec, a catalogue name, ``{"name": ..., **params}``, or
    ``{"class_path": ..., "init_args": ...}`` (as LightningCLI writes it and checkpoints store it).

    Durations resolve against the Trainer ``module`` is attached to, and a
    :class:`~lit_optim.callbacks.stepper.SchedulerStepper` is added to that Trainer when it has none, so the
    schedule advances once per real optimizer step.

    Raises:
        ValueError: when ``module`` is not attached to a Trainer (the run's length is unknown), or the spec is
            not a known schedule.
    """
    scheduler = spec_from_config(scheduler)  # LightningCLI's / a checkpoint's {"class_path": ..., "init_args": ...}
    # `LightningModule.trainer` raises outside a fit; plain modules have none.
    trainer = module._trainer if isinstance(module, LightningModule) else None
    if isinstance(scheduler, Plateau):
        return plateau_scheduler_config(optimizer, scheduler, trainer)
    return lightning_scheduler_config(optimizer, scheduler, trainer)


def optimizer_settings(hparams: Mapping[str, Any], ignored: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Pick lit_optim's settings out of a module's ``hparams``; raise on near-miss spellings of them.

    Keys in :data:`OPTIMIZER_HPARAMS` are used, ``optimizer_kwargs`` is unpacked into the optimizer's keyword
    arguments, every other key is left to the user's module, except a close misspelling of one of our keys
    (``weight_decy``, ``learning_rate``), which raises unless it is listed in ``ignored``.

    Example:
        >>> optimizer_settings({"lr": 0.1, "hidden": 32, "optimizer_kwargs": {"betas": (0.9, 0.95)}})
        {'lr': 0.1, 'betas': (0.9, 0.95)}
        >>> optimizer_settings({"weight_decy": 0.1})
        Traceback (most recent call last):
        ...
        ValueError: Unknown optimizer hyper-parameter 'weight_decy'. Valid: [...]. Did you mean 'weight_decay'? ...
    """
    settings: dict[str, Any] = {}
    for key, value in hparams.items():
        if key in OPTIMIZER_HPARAMS:
            settings[key] = value
            continue
        if key in ignored:
            continue
        # a stricter cutoff than for errors: a hparam that merely resembles one of ours is the user's own
        near = _ALIASES.get(key) or closest_match(key, OPTIMIZER_HPARAMS, cutoff=0.85)
        if near is not None:
            raise ValueError(
                f"Unknown optimizer hyper-parameter {key!r}. Valid: {sorted(OPTIMIZER_HPARAMS)}. "
                f"Did you mean {near!r}? HINT: OptimizerMixin reads only these hparams keys; if {key!r} is your "
                "own setting, list it in `ignored_hparams` on your class."
            )
    extra = settings.pop("optimizer_kwargs", None) or {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"The `optimizer_kwargs` hparam must be a mapping, got {extra!r}.")
    clash = sorted(set(extra) & set(OPTIMIZER_HPARAMS))
    if clash:
        raise ValueError(f"`optimizer_kwargs` must not repeat {clash}; set them as their own hparams instead.")
    settings.update(extra)
    return settings


class OptimizerMixin(LightningModule):
    """A LightningModule whose ``configure_optimizers`` is configured by its saved hyper-parameters.

    Give your ``__init__`` any of the arguments of :func:`configure_optimizers` (``optimizer``, ``lr``,
    ``weight_decay``, ``overrides``, ``layer_decay``, ``scheduler``, ``decay_embeddings``, ``include_frozen``) and
    ``optimizer_kwargs`` (a dict of other optimizer hyper-parameters), call ``self.save_hyperparameters()``, and the
    optimizer follows them, so LightningCLI (``--model.lr 0.01``), a YAML config and a checkpoint all configure it.
    Missing keys take :func:`configure_optimizers`' defaults. Other hparams are yours and ignored, except a close
    misspelling of one of these keys (``weight_decy``, ``learning_rate``, ``wd``), which raises at
    ``configure_optimizers``; list a genuine own key of that kind in ``ignored_hparams``.

    Example:
        >>> from torch import nn
        >>> class Model(OptimizerMixin):
        ...     def __init__(self, hidden: int = 4, lr: float = 0.01, optimizer: str = "sgd") -> None:
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.net = nn.Linear(hidden, 1)
        >>> opt = Model(lr=0.05).configure_optimizers()["optimizer"]
        >>> type(opt).__name__, [g["lr"] for g in opt.param_groups]
        ('SGD', [0.05, 0.05])
    """

    #: Hparams keys that are the user's own even though they look like a misspelled optimizer setting.
    ignored_hparams: ClassVar[frozenset[str]] = frozenset()

    @override
    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, **optimizer_settings(self.hparams, self.ignored_hparams))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A spec object in the hparams would make the checkpoint unloadable with `torch.load(weights_only=True)`
        # (the default of `load_from_checkpoint`); store its plain `{"class_path", "init_args"}` form instead.
        key = self.CHECKPOINT_HYPER_PARAMS_KEY
        hparams = checkpoint.get(key)
        if isinstance(hparams, dict) and hparams.get("scheduler") is not None:
            checkpoint[key] = {**hparams, "scheduler": plain_config(hparams["scheduler"])}
