"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim.callbacks.lr_logger import LearningRateLogger
from lit_optim.configure import OptimizerMixin, configure_optimizers
from lit_optim.optimizers import build_optimizer
from lit_optim.param_groups import format_groups, param_groups

__version__ = "0.1.0.dev0"

__all__ = [
    "LearningRateLogger",
    "OptimizerMixin",
    "__version__",
    "build_optimizer",
    "configure_optimizers",
    "format_groups",
    "param_groups",
]
