"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim._durations import (
    Duration,
    TrainingLength,
    parse_duration,
    resolve_training_length,
)
from lit_optim.callbacks.clipping import ClipResult, GradientClipping, clip_gradients
from lit_optim.callbacks.lr_logger import LearningRateLogger
from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper
from lit_optim.configure import OptimizerMixin, configure_optimizers
from lit_optim.optimizers import build_optimizer
from lit_optim.param_groups import format_groups, param_groups
from lit_optim.plateau import Plateau, PlateauLR, plateau_scheduler_config
from lit_optim.preview import LRCurve, preview_schedule
from lit_optim.scheduler import ScheduleLR, lightning_scheduler_config
from lit_optim.schedules import (
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    Step,
    Warmup,
    WarmupStableDecay,
    build_schedule,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ClipResult",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Duration",
    "Exponential",
    "GradientClipping",
    "InverseSqrt",
    "LRCurve",
    "LearningRateLogger",
    "Linear",
    "MultiStep",
    "OneCycle",
    "OptimizerMixin",
    "Plateau",
    "PlateauLR",
    "Polynomial",
    "Schedule",
    "ScheduleLR",
    "SchedulerStepper",
    "Step",
    "TrainingLength",
    "Warmup",
    "WarmupStableDecay",
    "__version__",
    "build_optimizer",
    "build_schedule",
    "clip_gradients",
    "configure_optimizers",
    "ensure_stepper",
    "format_groups",
    "lightning_scheduler_config",
    "param_groups",
    "parse_duration",
    "plateau_scheduler_config",
    "preview_schedule",
    "resolve_training_length",
]
