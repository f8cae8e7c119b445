"""lit_optim: optimizers, parameter groups, schedules, clipping and LR logging for PyTorch Lightning."""

from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper
from lit_optim.plateau import Plateau, PlateauLR, plateau_scheduler_config

__version__ = "0.1.0.dev0"

__all__ = ["Plateau", "PlateauLR", "SchedulerStepper", "__version__", "ensure_stepper", "plateau_scheduler_config"]
