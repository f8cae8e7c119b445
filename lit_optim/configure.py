"""LightningModule-facing entry points: :func:`configure_optimizers` and :class:`OptimizerMixin`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lit_optim._distributed import attached_trainer
from lit_optim._validation import closest_match
from lit_optim.callbacks.schedule_free import ensure_schedule_free_mode
from lit_optim.optim._overrides import _any_torch_hyperparameter
from lit_optim.optim._plain import plain_settings, resolve_settings
from lit_optim.optim.lr_scaling import LRScalingRule, resolve_batch_scaling
from lit_optim.optim.optimizers import build_optimizer, hyperparameter_names, resolve_optimizer
from lit_optim.optim.param_groups import NoDecayRule, param_groups
from lit_optim.optim.routing import build_hybrid, wants_hybrid
from lit_optim.optim.schedule_free import check_schedule_free_groups, has_train_eval_modes, schedule_warning
from lit_optim.scheduler_config import lightning_scheduler_config, plateau_scheduler_config
from lit_optim.schedules._config import plain_config, spec_from_config
from lit_optim.schedules.params import ParamSchedule, as_param_schedules
from lit_optim.schedules.plateau import Plateau
from lit_optim.schedules.scheduler import as_schedule

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
    "no_decay",
    "layer_id_fn",
    "optimizer_kwargs",
    "param_schedules",
    "lr_scaling",
    "reference_batch_size",
    "fallback",
    "fallback_lr",
    "fallback_kwargs",
)

# Hyper-parameter names of some torch optimizers that models also use for their own settings (a loss weight
# `alpha`, a width `d`): never applied from hparams implicitly (`optimizer_kwargs` is explicit).
_GENERIC_NAMES = frozenset({"alpha", "d", "history_size", "lambd", "max_eval", "max_iter", "t0"})

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
    no_decay: Iterable[NoDecayRule] | None = (),
    layer_id_fn: Callable[[str], int] | None = None,
    param_schedules: Mapping[str, ParamSchedule | Mapping[str, Any]] | None = None,
    lr_scaling: LRScalingRule | None = None,
    reference_batch_size: int | None = None,
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
        optimizer: a case-insensitive ``torch.optim`` name, a schedule-free name (``"adamw_schedulefree"``,
            ``"radam_schedulefree"``, ``"sgd_schedulefree"``; needs the ``schedulefree`` extra) or an ``Optimizer``
            subclass. An optimizer with ``train()``/``eval()`` modes gets a
            :class:`~lit_optim.callbacks.ScheduleFreeMode` on the Trainer.
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
        param_schedules: ``{field: ParamSchedule}``: schedules for other hyper-parameters (``"weight_decay"``,
            ``"momentum"``, ``"betas[0]"``...), stepped with the lr (a constant lr when ``scheduler`` is ``None``).
        lr_scaling: ``"linear"`` or ``"sqrt"``: scale ``lr`` from ``reference_batch_size`` to the Trainer's global
            batch when fitting starts (see :mod:`lit_optim.optim.lr_scaling`); ``None`` uses ``lr`` as given.
        reference_batch_size: the global batch size ``lr`` was tuned for (with ``lr_scaling``).
        fallback: with ``optimizer="muon"``, the optimizer of the rest (``None``: AdamW); see
            :func:`lit_optim.build_hybrid`, which builds the optimizer for ``"muon"`` and for overrides with an
            ``"optimizer"`` key (a :class:`lit_optim.HybridOptimizer`).
        fallback_lr: the fallback's base learning rate (``None``: ``lr``).
        fallback_kwargs: the fallback's other hyper-parameters (``betas``, ``weight_decay``, ...).
        **optimizer_kwargs: other optimizer hyper-parameters (``betas``, ``momentum``, ``eps``, ...).

    Returns:
        ``{"optimizer": opt}``, plus ``"lr_scheduler"`` (a Lightning scheduler config) when ``scheduler`` is set.

    Examples:
        >>> from torch import nn
        >>> config = configure_optimizers(nn.Linear(4, 2), "sgd", lr=0.1, momentum=0.9)
        >>> [(g["name"], g["lr"], g["weight_decay"], g["momentum"]) for g in config["optimizer"].param_groups]
        [('decay', 0.1, 0.01, 0.9), ('no_decay', 0.1, 0.0, 0.9)]
    """
    cls = resolve_optimizer(optimizer)
    scaling = resolve_batch_scaling(module, lr, lr_scaling, reference_batch_size)
    lr = lr if scaling is None else scaling.lr
    if weight_decay is None:
        names = hyperparameter_names(cls)
        weight_decay = 0.01 if names is None or "weight_decay" in names else 0.0
    built: Optimizer
    if wants_hybrid(cls, overrides, fallback, fallback_lr, fallback_kwargs):
        built = build_hybrid(
            module, cls, lr=lr, weight_decay=weight_decay, overrides=overrides, fallback=fallback,
            fallback_lr=fallback_lr, fallback_kwargs=fallback_kwargs, layer_decay=layer_decay,
            layer_id_fn=layer_id_fn, decay_embeddings=decay_embeddings, no_decay=no_decay or (),
            include_frozen=include_frozen, **optimizer_kwargs,
        )  # fmt: skip
    else:
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
    if has_train_eval_modes(built):  # schedule-free: the mode callback switches train/eval (raises on half a pair)
        check_schedule_free_groups(built)
        _attach_schedule_free_mode(module, built, scheduler)
    if param_schedules:
        scheduler = "constant" if scheduler is None else scheduler
    if scaling is not None:
        scaling.attach(built, module)  # records, logs and prints the resolved lr; checks it on resume
    if scheduler is None:
        return {"optimizer": built}
    return {"optimizer": built, "lr_scheduler": scheduler_config(built, scheduler, module, param_schedules)}


def _attach_schedule_free_mode(module: nn.Module, optimizer: Optimizer, scheduler: Any) -> None:
    """Warn about a decaying schedule; add ``ScheduleFreeMode`` to the Trainer ``module`` is attached to."""
    if scheduler is not None:
        spec = spec_from_config(scheduler)
        message = schedule_warning(spec if isinstance(spec, Plateau) else as_schedule(spec), type(optimizer))
        if message is not None:
            rank_zero_warn(message, category=RuntimeWarning)
    trainer = attached_trainer(module)
    if trainer is not None:
        ensure_schedule_free_mode(trainer)


def scheduler_config(
    optimizer: Optimizer,
    scheduler: Any,
    module: nn.Module,
    params: Mapping[str, ParamSchedule | Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
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
    trainer = attached_trainer(module)
    params = as_param_schedules(params) if params is not None else {}
    if isinstance(scheduler, Plateau):
        if params:
            raise ValueError(
                f"`param_schedules` ({sorted(params)}) cannot ride on a Plateau lr schedule (its reductions depend on "
                "a metric, not on training progress). Use a progress-based lr schedule (e.g. 'cosine'), or schedule "
                "those hyper-parameters without Plateau."
            )
        return plateau_scheduler_config(optimizer, scheduler, trainer)
    return lightning_scheduler_config(optimizer, scheduler, trainer, params=params or None)


def optimizer_settings(hparams: Mapping[str, Any], ignored: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Pick lit_optim's settings out of a module's ``hparams``; raise on near-miss spellings of them.

    Keys in :data:`OPTIMIZER_HPARAMS` are used, ``optimizer_kwargs`` is unpacked into the optimizer's keyword
    arguments, and so is any key that is a hyper-parameter of the chosen optimizer (``momentum``, ``nesterov``,
    ``betas``, ``eps`` for ``SGD``/``Adam``...). A hyper-parameter of another ``torch.optim`` optimizer that the
    chosen one does not take warns (it is not applied). Names models often use for their own settings (``alpha``,
    ``d``, ``t0``, ``lambd``, ``max_iter``, ``max_eval``, ``history_size``) are never applied implicitly: they raise
    when the chosen optimizer takes them (pass them in ``optimizer_kwargs``) and are left alone otherwise. Every
    other key is left to the user's module, except a close misspelling of one of our keys (``weight_decy``,
    ``learning_rate``), which raises. Keys listed in ``ignored`` are the user's own: never read, never checked.

    Examples:
        >>> optimizer_settings({"lr": 0.1, "hidden": 32, "optimizer_kwargs": {"betas": (0.9, 0.95)}})
        {'lr': 0.1, 'betas': (0.9, 0.95)}
        >>> optimizer_settings({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9})
        {'optimizer': 'sgd', 'lr': 0.1, 'momentum': 0.9}
        >>> optimizer_settings({"weight_decy": 0.1})
        Traceback (most recent call last):
        ...
        ValueError: Unknown optimizer hyper-parameter 'weight_decy'. Valid: [...]. Did you mean 'weight_decay'? ...
    """
    cls = resolve_optimizer(hparams.get("optimizer") or "adamw")
    takes = hyperparameter_names(cls)
    settings: dict[str, Any] = {}
    direct: dict[str, Any] = {}
    for key, value in hparams.items():
        if key in OPTIMIZER_HPARAMS:
            settings[key] = value
            continue
        if key in ignored:
            continue
        if takes is not None and key in takes:
            if key in _GENERIC_NAMES:
                raise ValueError(
                    f"The hparam {key!r} is a hyper-parameter of {cls.__name__}, but models often use that name for "
                    "their own settings, so OptimizerMixin will not guess. HINT: pass it in `optimizer_kwargs` to "
                    "give it to the optimizer, or list it in `ignored_hparams` if it is your own."
                )
            direct[key] = value
            continue
        if key in _GENERIC_NAMES:
            continue  # the model's own `alpha`, `d`, ...: no optimizer is configured from it
        if key in _any_torch_hyperparameter():
            rank_zero_warn(
                f"The hparam {key!r} is a hyper-parameter of some torch optimizers but not of {cls.__name__}, so "
                f"OptimizerMixin does not apply it. HINT: if it is your own setting, list it in `ignored_hparams` "
                "on your class; otherwise choose an optimizer that takes it.",
                category=UserWarning,
            )
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
    twice = sorted(set(extra) & set(direct))
    if twice:
        raise ValueError(
            f"The hparams set {twice} both as their own keys and in `optimizer_kwargs`; set each once."
        )
    settings.update(direct)
    settings.update(extra)
    return resolve_settings(settings)


def _check_hparams_saved(module: LightningModule, ignored: frozenset[str]) -> None:
    """Refuse a module whose optimizer arguments never reached ``hparams``; warn when it saved none at all."""
    optimizer = module.hparams.get("optimizer") or "adamw"
    takes = hyperparameter_names(resolve_optimizer(optimizer)) or frozenset()
    own = [
        p.name
        for p in list(inspect.signature(type(module).__init__).parameters.values())[1:]
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    relevant = [n for n in own if n in OPTIMIZER_HPARAMS or n in takes]
    missing = [n for n in relevant if n not in module.hparams and n not in ignored]
    saved = hasattr(module, "_hparams_initial")
    if missing:
        cause = "self.save_hyperparameters() was never called" if not saved else "they were left out of it"
        raise ValueError(
            f"{type(module).__name__}.__init__ takes {missing}, but they are not in `self.hparams` ({cause}), so "
            "OptimizerMixin cannot see them and would build its default optimizer (AdamW, lr=0.001). HINT: call "
            "self.save_hyperparameters() in __init__ (without ignoring them), or list them in `ignored_hparams`."
        )
    if not saved:
        rank_zero_warn(
            f"{type(module).__name__} never called self.save_hyperparameters(), so OptimizerMixin uses "
            "configure_optimizers' defaults (AdamW, lr=0.001, weight_decay=0.01). HINT: call "
            "self.save_hyperparameters() in __init__, even with no arguments, to confirm.",
            category=UserWarning,
        )


class OptimizerMixin(LightningModule):
    """A LightningModule whose ``configure_optimizers`` is configured by its saved hyper-parameters.

    Give your ``__init__`` any of the arguments of :func:`configure_optimizers` (``optimizer``, ``lr``,
    ``weight_decay``, ``overrides``, ``layer_decay``, ``scheduler``, ``decay_embeddings``, ``include_frozen``,
    ``no_decay``, ``layer_id_fn``), hyper-parameters of the chosen optimizer (``momentum``, ``nesterov``, ``betas``,
    ``eps``, ...) and ``optimizer_kwargs`` (a dict of other optimizer hyper-parameters), call
    ``self.save_hyperparameters()``, and the optimizer follows them, so LightningCLI (``--model.lr 0.01``), a YAML
    config and a checkpoint all configure it. Missing keys take :func:`configure_optimizers`' defaults.

    Never silently ignored: an ``__init__`` argument of those names missing from ``hparams`` (a forgotten
    ``save_hyperparameters()``) raises, and a module that saved no hparams at all warns that it uses the
    defaults; a hyper-parameter of another torch optimizer (``momentum`` with AdamW) warns; a close misspelling of
    one of our keys (``weight_decy``, ``learning_rate``, ``wd``) raises. List a genuine own key of those kinds in
    ``ignored_hparams``.

    Checkpoints hold plain data (an optimizer class as its dotted path, a ``layer_id_fn`` function as its dotted
    path, a schedule spec as its config), so they load with ``weights_only=True``.

    Examples:
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
        _check_hparams_saved(self, self.ignored_hparams)
        plain_settings(self.hparams)  # raise now, not at the first checkpoint, for what a checkpoint cannot hold
        return configure_optimizers(self, **optimizer_settings(self.hparams, self.ignored_hparams))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Objects in the hparams would make the checkpoint unloadable with `torch.load(weights_only=True)` (the
        # default of `load_from_checkpoint` and `fit(ckpt_path=...)`): store plain data instead, which the
        # constructor accepts back (a spec's `{"class_path", "init_args"}`, an optimizer's dotted path).
        key = self.CHECKPOINT_HYPER_PARAMS_KEY
        hparams = checkpoint.get(key)
        if isinstance(hparams, Mapping):
            plain = plain_settings(hparams)
            for spec_key in ("scheduler", "param_schedules"):
                if plain.get(spec_key) is not None:
                    plain[spec_key] = plain_config(plain[spec_key])
            checkpoint[key] = plain
