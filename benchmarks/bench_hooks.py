"""Time spent inside the hooks: lit_optim's callbacks vs Lightning's built-in equivalents, same process.

One small MLP (CPU, synthetic data, AdamW on decay/no-decay groups, a warmup-cosine schedule) is fitted in three
configurations, interleaved with the order rotated:

- ``bare``: no clipping, a constant learning rate, no LR logging;
- ``lightning``: ``Trainer(gradient_clip_val=1.0)``, a ``LambdaLR`` with ``interval="step"`` stepped by Lightning,
  ``LearningRateMonitor(logging_interval="step")``;
- ``lit_optim``: ``SchedulerStepper`` stepping ``ScheduleLR(Cosine(warmup=...))``, ``GradientClipping(1.0)``
  (which also measures per-group norms on logging steps) and ``LearningRateLogger``.

All three log to a ``CSVLogger`` every 50 steps. Times are CPU time of the training thread
(``time.thread_time``; torch runs on that one thread), so other processes sharing the machine do not count.
Between ``on_train_start`` and ``on_train_end`` the time spent inside Lightning's hook dispatch is summed:
every ``_call_callback_hooks`` call (all callbacks, no-op hooks included: the dispatch cost of each extra
callback counts), the ``configure_gradient_clipping`` and
``lr_scheduler_step`` module hooks (Lightning's clipping and its scheduler stepping) and the optimizer step
post-hooks (how ``SchedulerStepper`` steps). The ``bare`` run's hook time (the dispatch every run pays) is
subtracted from the others, leaving what each stack adds:

- ``hooks_vs_lightning`` = (lit_optim - bare) / (lightning - bare), medians of per-repetition hook times;
- ``hooks_fit_vs_lightning`` = lit_optim / lightning, medians of the whole ``on_train_start``-to-``on_train_end``
  time of the same runs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer import call
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop import warmup_cosine_lambda
from _timing import print_json, print_table, quiet

from lit_optim import Cosine, GradientClipping, LearningRateLogger, ScheduleLR, SchedulerStepper, param_groups

_MODULE_HOOKS = ("configure_gradient_clipping", "lr_scheduler_step")


class _Clock:
    """Sums the time inside the instrumented calls while ``active`` (outermost call only)."""

    def __init__(self) -> None:
        self.active = False
        self.hooks = 0.0
        self.loop = 0.0
        self._depth = 0

    def timed(self, fn: Callable[..., Any], when: Callable[..., bool] = lambda *a: True) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.active or self._depth or not when(*args):
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.hooks += time.thread_time() - start
                self._depth -= 1

        return wrapper


class _Window(Callback):
    """Opens the clock at ``on_train_start`` (last callback) and closes it at ``on_train_end``."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:  # time the step post-hooks (SchedulerStepper, GradientClipping)
            hooks = optimizer._optimizer_step_post_hooks
            for key, fn in list(hooks.items()):
                hooks[key] = self.clock.timed(fn)
        self.clock.active = True
        self._start = time.thread_time()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.loop = time.thread_time() - self._start
        self.clock.active = False


@contextmanager
def _instrumented(clock: _Clock) -> Iterator[None]:
    callback_hooks, module_hook = call._call_callback_hooks, call._call_lightning_module_hook
    call._call_callback_hooks = clock.timed(callback_hooks)  # type: ignore[assignment]
    call._call_lightning_module_hook = clock.timed(  # type: ignore[assignment]
        module_hook, when=lambda trainer, name, *a: name in _MODULE_HOOKS
    )
    try:
        yield
    finally:
        call._call_callback_hooks, call._call_lightning_module_hook = callback_hooks, module_hook  # type: ignore[assignment]


class MLP(L.LightningModule):
    def __init__(self, kind: str, steps: int, width: int = 128, depth: int = 4, batch_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        self.kind, self.steps, self.width, self.batch_size = kind, steps, width, batch_size

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(param_groups(self, weight_decay=0.1), lr=3e-3)
        if self.kind == "bare":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if self.kind == "lit_optim":
            scheduler: Any = ScheduleLR(optimizer, Cosine(warmup="10%"), total_steps=total)
        else:
            scheduler = warmup_cosine_lambda(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.steps * self.batch_size, self.width, generator=g)
        return DataLoader(TensorDataset(x, x[:, :1].clone()), batch_size=self.batch_size)


def _fit(kind: str, steps: int, root: str) -> tuple[float, float]:
    torch.manual_seed(0)
    clock = _Clock()
    callbacks: list[Callback] = []
    trainer_kwargs: dict[str, Any] = {}
    if kind == "lightning":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        trainer_kwargs["gradient_clip_val"] = 1.0
    elif kind == "lit_optim":
        callbacks += [SchedulerStepper(), GradientClipping(1.0), LearningRateLogger()]
    callbacks.append(_Window(clock))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=CSVLogger(root, name=kind), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
        **trainer_kwargs,
    )
    with _instrumented(clock):
        trainer.fit(MLP(kind, steps))
    return clock.hooks, clock.loop


def run(quick: bool = False) -> dict[str, float]:
    steps, repeats = (60, 3) if quick else (300, 15)
    kinds = ["bare", "lightning", "lit_optim"]
    hooks: dict[str, list[float]] = {kind: [] for kind in kinds}
    loops: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as root:
        for kind in kinds:  # warm-up: imports, allocator, first-call costs
            _fit(kind, 20, root)
        for rep in range(repeats):
            for kind in kinds[rep % 3 :] + kinds[: rep % 3]:
                hook_s, loop_s = _fit(kind, steps, root)
                hooks[kind].append(hook_s)
                loops[kind].append(loop_s)
    added = {kind: [h - b for h, b in zip(hooks[kind], hooks["bare"], strict=True)] for kind in kinds[1:]}
    rows: list[dict[str, object]] = [
        {
            "run": kind,
            "hook us/step": 1e6 * statistics.median(hooks[kind]) / steps,
            "added us/step": 1e6 * statistics.median(added[kind]) / steps if kind in added else 0.0,
            "fit ms/step": 1e3 * statistics.median(loops[kind]) / steps,
        }
        for kind in kinds
    ]
    print_table(f"Time inside hooks, {steps}-step MLP fits ({repeats} interleaved repetitions)", rows)
    return {
        "hooks_vs_lightning": statistics.median(added["lit_optim"]) / statistics.median(added["lightning"]),
        "hooks_fit_vs_lightning": statistics.median(loops["lit_optim"]) / statistics.median(loops["lightning"]),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    quiet()
    print_json(run(quick="--quick" in sys.argv))
