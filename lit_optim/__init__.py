"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim.callbacks.lr_logger import LearningRateLogger

__version__ = "0.1.0.dev0"

__all__ = ["LearningRateLogger", "__version__"]
