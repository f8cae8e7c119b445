"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.clipping import GradientClipping
from lit_optim.callbacks.lr_logger import LearningRateLogger
from lit_optim.callbacks.lr_range_test import LRRangeTest
from lit_optim.callbacks.optimizer_monitor import OptimizerMonitor
from lit_optim.callbacks.schedule_free import ScheduleFreeMode, ensure_schedule_free_mode
from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper
from lit_optim.clipping import ClipResult, clip_gradients

__all__ = [
    "ClipResult",
    "GradientClipping",
    "LRRangeTest",
    "LearningRateLogger",
    "OptimizerMonitor",
    "ScheduleFreeMode",
    "SchedulerStepper",
    "clip_gradients",
    "ensure_schedule_free_mode",
    "ensure_stepper",
]
