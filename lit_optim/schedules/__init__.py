"""Schedule specs, warmup, durations, ``ScheduleLR``, plateau reduction and the schedule preview."""

from lit_optim.schedules.base import Schedule, Warmup, WarmupShape
from lit_optim.schedules.catalogue import SCHEDULES, build_schedule
from lit_optim.schedules.durations import (
    Duration,
    DurationLike,
    TrainingLength,
    parse_duration,
    resolve_training_length,
)
from lit_optim.schedules.lr_range import LossTracker, LRRangeResult, suggest_lr, sweep_lr
from lit_optim.schedules.one_cycle import OneCycle
from lit_optim.schedules.plateau import Plateau, PlateauLR
from lit_optim.schedules.preview import LRCurve, preview_schedule
from lit_optim.schedules.scheduler import ScheduleLR
from lit_optim.schedules.specs import (
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    Polynomial,
    Step,
)
from lit_optim.schedules.wsd import DecayShape, WarmupStableDecay

__all__ = [
    "SCHEDULES",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "DecayShape",
    "Duration",
    "DurationLike",
    "Exponential",
    "InverseSqrt",
    "LRCurve",
    "LRRangeResult",
    "Linear",
    "LossTracker",
    "MultiStep",
    "OneCycle",
    "Plateau",
    "PlateauLR",
    "Polynomial",
    "Schedule",
    "ScheduleLR",
    "Step",
    "TrainingLength",
    "Warmup",
    "WarmupShape",
    "WarmupStableDecay",
    "build_schedule",
    "parse_duration",
    "preview_schedule",
    "resolve_training_length",
    "suggest_lr",
    "sweep_lr",
]
