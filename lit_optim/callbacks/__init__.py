"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.lr_logger import LearningRateLogger

__all__: list[str] = ["LearningRateLogger"]
