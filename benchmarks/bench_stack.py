"""Whole training runs: the lit_optim stack vs Lightning's built-ins vs a bare run, same process.

Three configurations of one small transformer LM (CPU, synthetic tokens, AdamW) are fitted in turn, interleaved,
and the time from ``on_train_start`` to ``on_train_end`` is recorded (Trainer construction and teardown, which
lit_optim does not touch, are left out):

- ``bare``: one AdamW group, no schedule, no clipping, no LR logging;
- ``builtin``: ``Trainer(gradient_clip_val=1.0)``, a warmup-cosine ``LambdaLR`` with ``interval="step"`` and
  ``LearningRateMonitor(logging_interval="step")``;
- ``stack``: ``configure_optimizers`` (decay/no-decay groups) with ``Cosine(warmup="10%")``,
  ``GradientClipping(max_norm=1.0)`` with norm logging, and ``LearningRateLogger``.

Every run logs to a ``CSVLogger`` every 50 steps. Ratios: ``stack_vs_builtin`` = stack / builtin and
``stack_vs_bare`` = stack / bare (medians).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop import LoopTimer, rotated_samples, warmup_cosine_lambda
from _models import TinyTransformer
from _timing import print_json, print_table, quiet

from lit_optim import Cosine, GradientClipping, LearningRateLogger, configure_optimizers


def _bare(module: L.LightningModule) -> Any:
    return torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.1)


def _builtin(module: L.LightningModule) -> Any:
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.1)
    scheduler = warmup_cosine_lambda(optimizer, int(module.trainer.estimated_stepping_batches))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _stack(module: L.LightningModule) -> Any:
    return configure_optimizers(module, "adamw", lr=3e-3, weight_decay=0.1, scheduler=Cosine(warmup="10%"))


def _fit(kind: str, steps: int, root: str) -> float:
    torch.manual_seed(0)
    timer = LoopTimer()
    callbacks: list[Callback] = [timer]
    trainer_kwargs: dict[str, Any] = {}
    configure = {"bare": _bare, "builtin": _builtin, "stack": _stack}[kind]
    if kind == "builtin":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        trainer_kwargs["gradient_clip_val"] = 1.0
    elif kind == "stack":
        callbacks += [GradientClipping(max_norm=1.0), LearningRateLogger()]
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=CSVLogger(root, name=kind), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
        **trainer_kwargs,
    )
    trainer.fit(TinyTransformer(steps=steps, configure=configure))
    return timer.seconds


def run(quick: bool = False) -> dict[str, float]:
    steps, repeats = (60, 3) if quick else (300, 12)
    with tempfile.TemporaryDirectory() as root:
        medians = rotated_samples(lambda kind, n: _fit(kind, n, root), ["bare", "builtin", "stack"], steps, repeats)
    rows: list[dict[str, object]] = [
        {"run": kind, "steps": steps, "median s": seconds, "ms/step": 1000 * seconds / steps}
        for kind, seconds in medians.items()
    ]
    print_table(f"Full training runs ({repeats} interleaved repetitions, order rotated)", rows)
    return {
        "stack_vs_builtin": medians["stack"] / medians["builtin"],
        "stack_vs_bare": medians["stack"] / medians["bare"],
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    quiet()
    print_json(run(quick="--quick" in sys.argv))
