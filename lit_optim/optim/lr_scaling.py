r"""Batch-size scaling of the base lr: ``lr * (global batch / reference batch)`` or its square root.

The global batch is what one optimizer step sees: per-device batch x devices x nodes x gradient accumulation,
read from the Trainer when fitting starts. Every process is assumed to be a data-parallel replica (DDP, FSDP);
under tensor or pipeline parallelism pass a ``batch_size`` that accounts for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr
from torch import nn
from torch.optim import Optimizer

from lit_optim._distributed import attached_trainer
from lit_optim._logging import log_metrics
from lit_optim._validation import check_choice, check_positive, check_positive_int

__all__ = ["GROUP_KEY", "LR_SCALING_RULES", "BatchScaling", "LRScalingRule", "resolve_batch_scaling", "scale_lr"]

LRScalingRule = Literal["linear", "sqrt"]

#: The batch-size scaling rules.
LR_SCALING_RULES: tuple[str, ...] = ("linear", "sqrt")

#: The param-group key that records the scaling (saved with the optimizer, so a checkpoint carries it).
GROUP_KEY = "lr_scaling"


def scale_lr(lr: float, rule: LRScalingRule, global_batch_size: int, reference_batch_size: int) -> float:
    r"""The base lr for ``global_batch_size``, given ``lr`` tuned at ``reference_batch_size``.

    .. math::
        \text{linear: } lr \cdot \frac{B}{B_{ref}} \qquad \text{sqrt: } lr \cdot \sqrt{\frac{B}{B_{ref}}}

    Linear is Goyal et al.'s rule for SGD; sqrt keeps the update noise constant and is the usual choice for
    Adam-family optimizers (timm picks it for them automatically; here you choose).

    Examples:
        >>> scale_lr(0.1, "linear", 1024, 256), scale_lr(1e-3, "sqrt", 1024, 256)
        (0.4, 0.002)
    """
    check_choice("lr_scaling", rule, LR_SCALING_RULES)
    ratio = check_positive_int("global_batch_size", global_batch_size) / check_positive_int(
        "reference_batch_size", reference_batch_size
    )
    return lr * ratio if rule == "linear" else lr * math.sqrt(ratio)


@dataclass(frozen=True)
class BatchScaling:
    """How the base lr of a run was resolved from its global batch size.

    Attributes:
        rule: ``"linear"`` or ``"sqrt"``.
        reference_batch_size: the global batch size ``base_lr`` was tuned for.
        batch_size: the per-device batch size.
        world_size: devices x nodes (data-parallel processes).
        accumulation: ``accumulate_grad_batches``.
        base_lr: the configured lr (at the reference batch).
        lr: the resolved lr (what the optimizer gets).

    Examples:
        >>> scaling = BatchScaling("sqrt", 64, batch_size=32, world_size=2, accumulation=4, base_lr=1e-3)
        >>> scaling.global_batch_size, round(scaling.lr, 6)
        (256, 0.002)
    """

    rule: str
    reference_batch_size: int
    batch_size: int
    world_size: int
    accumulation: int
    base_lr: float

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all processes."""
        return self.batch_size * self.world_size * self.accumulation

    @property
    def lr(self) -> float:
        """The resolved base lr."""
        return scale_lr(self.base_lr, self.rule, self.global_batch_size, self.reference_batch_size)  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line: the rule, the numbers and the result."""
        factor = "" if self.rule == "linear" else "sqrt"
        return (
            f"lr_scaling={self.rule!r}: lr {self.base_lr!r} x {factor}({self.global_batch_size}/"
            f"{self.reference_batch_size}) = {self.lr!r} (global batch {self.global_batch_size} = {self.batch_size} "
            f"per device x {self.world_size} processes x {self.accumulation} accumulated)"
        )

    def record(self) -> dict[str, Any]:
        """The plain values stored in every param group under :data:`GROUP_KEY`."""
        return {**asdict(self), "global_batch_size": self.global_batch_size, "lr": self.lr}

    def attach(self, optimizer: Optimizer, module: nn.Module) -> None:
        """Record the scaling in ``optimizer``'s groups, log and print it, and check it when a checkpoint loads.

        On resume Lightning loads the optimizer (and scheduler) state saved in the checkpoint, so the run continues
        with the lrs it had: resume is exact. When the checkpoint's global batch differs from this run's (another
        world size or accumulation), the checkpoint's lrs are still kept and a warning gives both values.
        """
        record = self.record()
        for group in optimizer.param_groups:
            group[GROUP_KEY] = dict(record)
        trainer = attached_trainer(module)
        resuming = trainer is not None and trainer.ckpt_path is not None
        rank_zero_info(f"lit_optim: {self.describe()}" + (" (a checkpoint is being restored)" if resuming else ""))
        if trainer is not None and not resuming:
            metrics = {"lr_scaling/lr": self.lr, "lr_scaling/global_batch_size": float(self.global_batch_size)}
            log_metrics(trainer, metrics)
        optimizer.register_load_state_dict_post_hook(self._check_loaded)

    def _check_loaded(self, optimizer: Optimizer) -> None:
        saved = [group.get(GROUP_KEY) for group in optimizer.param_groups]
        if all(isinstance(s, dict) and s.get("global_batch_size") == self.global_batch_size for s in saved):
            return
        old = next((s for s in saved if isinstance(s, dict)), None)
        was = (
            f"scaled for a global batch of {old.get('global_batch_size')} (lr {old.get('lr')!r})"
            if old is not None
            else "not batch-scaled"
        )
        rank_zero_warn(
            f"Resuming a run whose lr was {was}; this run's global batch is {self.global_batch_size}, for which "
            f"{self.describe()}. The checkpoint's lrs and schedule are kept, so the run continues exactly as it was. "
            "HINT: to rescale, start a new fit from the weights alone (no `ckpt_path`)."
        )


def resolve_batch_scaling(
    module: nn.Module, lr: float, rule: str | None, reference_batch_size: int | None
) -> BatchScaling | None:
    """The :class:`BatchScaling` for ``module``'s Trainer, or ``None`` when ``rule`` is ``None``.

    The per-device batch size is ``module.batch_size`` or ``hparams["batch_size"]`` (or the datamodule's), as
    Lightning's batch-size finder looks it up.

    Raises:
        ValueError: an unknown rule, ``reference_batch_size`` missing (or given without a rule), no Trainer
            attached, or no ``batch_size`` found.
    """
    if rule is None:
        if reference_batch_size is not None:
            raise ValueError(
                f"`reference_batch_size`={reference_batch_size!r} is only used with `lr_scaling`; set "
                "`lr_scaling='linear'` or `'sqrt'`, or drop it."
            )
        return None
    check_choice("lr_scaling", rule, LR_SCALING_RULES)
    if reference_batch_size is None:
        raise ValueError(
            f"`lr_scaling={rule!r}` needs `reference_batch_size`: the global batch size your lr was tuned for."
        )
    check_positive_int("reference_batch_size", reference_batch_size)
    trainer = attached_trainer(module)
    if trainer is None or not isinstance(module, LightningModule):
        raise ValueError(
            f"`lr_scaling={rule!r}` reads the global batch size from the Trainer, but the module is not attached "
            "to one. HINT: call `configure_optimizers` from `LightningModule.configure_optimizers` (during fit)."
        )
    if not lightning_hasattr(module, "batch_size"):
        raise ValueError(
            f"`lr_scaling={rule!r}` needs the per-device batch size: set `batch_size` as an attribute or hparam of "
            "the LightningModule or its datamodule."
        )
    batch_size = check_positive_int("batch_size", lightning_getattr(module, "batch_size"))
    return BatchScaling(
        rule=rule,
        reference_batch_size=reference_batch_size,
        batch_size=batch_size,
        world_size=trainer.world_size,
        accumulation=trainer.accumulate_grad_batches,
        base_lr=check_positive("lr", lr),
    )
