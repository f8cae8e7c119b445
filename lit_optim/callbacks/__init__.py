"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.stepper import SchedulerStepper, ensure_stepper

__all__: list[str] = ["SchedulerStepper", "ensure_stepper"]
