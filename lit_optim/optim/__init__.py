"""Parameter groups (decay split, overrides, layer-wise decay) and optimizer building."""

from lit_optim.optim.layer_ids import format_layer_ids, layer_ids
from lit_optim.optim.optimizers import build_optimizer
from lit_optim.optim.param_groups import NoDecayRule, format_groups, param_groups

__all__ = ["NoDecayRule", "build_optimizer", "format_groups", "format_layer_ids", "layer_ids", "param_groups"]
