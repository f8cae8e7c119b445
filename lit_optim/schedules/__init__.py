"""Schedule specs, warmup, durations, ``ScheduleLR``, plateau reduction and the schedule preview."""

from lit_optim.schedules.base import Schedule, Warmup, WarmupShape
from lit_optim.schedules.catalogue import SCHEDULES, ScheduleName, build_schedule
from lit_optim.schedules.cyclic import Cyclic, CyclicMode
from lit_optim.schedules.durations import (
    Duration,
    DurationLike,
    TrainingLength,
    parse_duration,
    resolve_training_length,
)
from lit_optim.schedules.lr_range import LossTracker, LRRangeResult, suggest_lr, sweep_lr
from lit_optim.schedules.one_cycle import OneCycle
from lit_optim.schedules.params import ParamSchedule
from lit_optim.schedules.plateau import Plateau, PlateauLR
from lit_optim.schedules.preview import LRCurve, preview_schedule
from lit_optim.schedules.restarts import CosineRestarts
from lit_optim.schedules.scheduler import ScheduleLR
from lit_optim.schedules.specs import (
    Constant,
    Cosine,
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
    "Cyclic",
    "CyclicMode",
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
    "ParamSchedule",
    "Plateau",
    "PlateauLR",
    "Polynomial",
    "Schedule",
    "ScheduleLR",
    "ScheduleName",
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
