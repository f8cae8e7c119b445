"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
