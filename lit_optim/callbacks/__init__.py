"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.clipping import ClipResult, GradientClipping, clip_gradients
from lit_optim.callbacks.lr_logger import LearningRateLogger
from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper

__all__ = [
    "ClipResult",
    "GradientClipping",
    "LearningRateLogger",
    "SchedulerStepper",
    "clip_gradients",
    "ensure_stepper",
]
