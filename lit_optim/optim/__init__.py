"""Parameter groups (decay split, overrides, layer-wise decay), optimizer building and hybrid optimizers."""

from lit_optim.optim.hybrid import HybridOptimizer
from lit_optim.optim.optimizers import build_optimizer
from lit_optim.optim.param_groups import NoDecayRule, format_groups, param_groups
from lit_optim.optim.routing import build_hybrid

__all__ = ["HybridOptimizer", "NoDecayRule", "build_hybrid", "build_optimizer", "format_groups", "param_groups"]
