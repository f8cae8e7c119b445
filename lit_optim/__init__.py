"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim.callbacks import (
    ClipResult,
    GradientClipping,
    LearningRateLogger,
    OptimizerMonitor,
    SchedulerStepper,
    ensure_stepper,
)
from lit_optim.clipping import clip_gradients
from lit_optim.configure import OptimizerMixin, configure_optimizers
from lit_optim.monitoring import SpikeDetector
from lit_optim.optim import build_optimizer, format_groups, param_groups
from lit_optim.scheduler_config import lightning_scheduler_config, plateau_scheduler_config
from lit_optim.schedules import (
    Constant,
    Cosine,
    CosineRestarts,
    Duration,
    Exponential,
    InverseSqrt,
    Linear,
    LRCurve,
    MultiStep,
    OneCycle,
    Plateau,
    PlateauLR,
    Polynomial,
    Schedule,
    ScheduleLR,
    Step,
    TrainingLength,
    Warmup,
    WarmupStableDecay,
    build_schedule,
    parse_duration,
    preview_schedule,
    resolve_training_length,
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
    "OptimizerMonitor",
    "Plateau",
    "PlateauLR",
    "Polynomial",
    "Schedule",
    "ScheduleLR",
    "SchedulerStepper",
    "SpikeDetector",
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
