"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.clipping import ClipResult, GradientClipping, clip_gradients
from lit_optim.callbacks.lr_logger import LearningRateLogger

__all__ = ["ClipResult", "GradientClipping", "LearningRateLogger", "clip_gradients"]
