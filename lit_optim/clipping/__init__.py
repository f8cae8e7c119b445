"""Gradient-norm maths, adaptive clipping thresholds and the functional ``clip_gradients``."""

from lit_optim.clipping.functional import ClipResult, clip_gradients
from lit_optim.clipping.thresholds import PercentileThreshold, ZScoreThreshold

__all__ = ["ClipResult", "PercentileThreshold", "ZScoreThreshold", "clip_gradients"]
