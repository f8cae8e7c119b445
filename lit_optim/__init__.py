"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim._durations import Duration, TrainingLength, parse_duration, resolve_training_length
from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper
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
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Duration",
    "Exponential",
    "InverseSqrt",
    "LRCurve",
    "Linear",
    "MultiStep",
    "OneCycle",
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
    "build_schedule",
    "ensure_stepper",
    "lightning_scheduler_config",
    "parse_duration",
    "plateau_scheduler_config",
    "preview_schedule",
    "resolve_training_length",
]
