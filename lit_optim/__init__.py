"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim.callbacks.clipping import ClipResult, GradientClipping, clip_gradients

__version__ = "0.1.0.dev0"

__all__ = ["ClipResult", "GradientClipping", "__version__", "clip_gradients"]
