"""Lightning callbacks of lit_optim."""

from lit_optim.callbacks.clipping import ClipResult, GradientClipping, clip_gradients

__all__: list[str] = ["ClipResult", "GradientClipping", "clip_gradients"]
