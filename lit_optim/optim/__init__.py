"""Parameter groups (decay split, overrides, layer-wise decay), optimizer building and hybrid optimizers."""

from lit_optim.optim.layer_ids import format_layer_ids, layer_ids
from lit_optim.optim.lr_scaling import BatchScaling, scale_lr
from lit_optim.optim.optimizers import build_optimizer
from lit_optim.optim.param_groups import NoDecayRule, format_groups, param_groups
from lit_optim.optim.schedule_free import SCHEDULE_FREE_OPTIMIZERS, has_train_eval_modes, recompute_batchnorm

__all__ = [
    "SCHEDULE_FREE_OPTIMIZERS",
    "NoDecayRule",
    "build_optimizer",
    "format_groups",
    "has_train_eval_modes",
    "param_groups",
    "recompute_batchnorm",
]
__all__ = ["BatchScaling", "NoDecayRule", "build_optimizer", "format_groups", "param_groups", "scale_lr"]
__all__ = ["NoDecayRule", "build_optimizer", "format_groups", "format_layer_ids", "layer_ids", "param_groups"]
from lit_optim.optim.hybrid import HybridOptimizer
from lit_optim.optim.routing import build_hybrid

__all__ = ["HybridOptimizer", "NoDecayRule", "build_hybrid", "build_optimizer", "format_groups", "param_groups"]
