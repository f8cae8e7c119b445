"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.clipping import GradientClipping
from lit_optim.callbacks.lr_logger import LearningRateLogger
from lit_optim.callbacks.optimizer_monitor import OptimizerMonitor
from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper
from lit_optim.clipping import ClipResult, clip_gradients

__all__ = [
    "ClipResult",
    "GradientClipping",
    "LearningRateLogger",
    "OptimizerMonitor",
    "SchedulerStepper",
    "clip_gradients",
    "ensure_stepper",
]
