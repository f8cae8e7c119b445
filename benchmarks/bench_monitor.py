"""Cost of ``OptimizerMonitor`` on whole training runs: non-logging steps vs no callback, and logging steps.

One small transformer LM (CPU, synthetic tokens, AdamW with decay/no-decay groups) is fitted in turn, interleaved
and with the order rotated, timing ``on_train_start`` to ``on_train_end``:

- ``bare``: no monitor;
- ``quiet``: ``OptimizerMonitor(log_every_n_steps=10**6)`` with its default spike detection on the loss and the
  gradient norm: every step pays for the detection (on the device), none logs;
- ``logging``: ``OptimizerMonitor(log_every_n_steps=1)``: every step copies the weights, compares them after the
  step and writes a row.

Ratios: ``monitor_vs_bare`` = quiet / bare (target: within noise of 1) and ``monitor_logging_vs_bare`` =
logging / bare (reported: the price of a logging step, paid once per ``log_every_n_steps``).

Whole-run timings on a shared machine are noisy, so the callback's own hooks are also timed directly (the same
model and optimizer, set up by a short fit): ``on_before_backward`` + ``on_before_optimizer_step`` + the step
post-hook, per non-logging and per logging step, reported in microseconds and as a fraction of a bare step
(``monitor_hooks_vs_step``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop import LoopTimer, NullLogger, rotated_samples
from _models import TinyTransformer
from _timing import interleaved_medians, print_json, print_table, quiet

from lit_optim import OptimizerMonitor, param_groups


def _adamw(module: L.LightningModule) -> Any:
    return torch.optim.AdamW(param_groups(module, weight_decay=0.1), lr=3e-3)


def _fit(kind: str, steps: int, root: str) -> float:
    torch.manual_seed(0)
    timer = LoopTimer()
    callbacks: list[Callback] = [timer]
    if kind == "quiet":
        callbacks.append(OptimizerMonitor(log_every_n_steps=10**6))
    elif kind == "logging":
        callbacks.append(OptimizerMonitor(log_every_n_steps=1))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=NullLogger(), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10**6,
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(TinyTransformer(steps=steps, configure=_adamw))
    return timer.seconds


def _hook_seconds(log_every: int, steps: int, repeats: int, root: str, **kwargs: Any) -> float:
    """Median seconds of the monitor's hooks for one optimizer step, driven directly after a short fit."""
    monitor = OptimizerMonitor(log_every_n_steps=log_every, **kwargs)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=NullLogger(), callbacks=[monitor], log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    model = TinyTransformer(steps=2, configure=_adamw)
    trainer.fit(model)
    monitor.on_train_start(trainer, model)  # armed again, as inside a fit
    optimizer = trainer.optimizers[0]
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    loss = torch.tensor(3.0)

    def one_run() -> None:
        for _ in range(steps):
            monitor.on_before_backward(trainer, model, loss)
            monitor.on_before_optimizer_step(trainer, model, optimizer)
            monitor._after_step(optimizer, (), {})

    times = interleaved_medians({"hooks": one_run}, repeats=repeats)
    return times["hooks"] / steps


def run(quick: bool = False) -> dict[str, float]:
    steps, repeats = (40, 3) if quick else (300, 12)
    with tempfile.TemporaryDirectory() as root:
        medians = rotated_samples(lambda kind, n: _fit(kind, n, root), ["bare", "quiet", "logging"], steps, repeats)
        quiet_hooks = _hook_seconds(10**6, 100 if quick else 1000, repeats, root)
        loss_only_hooks = _hook_seconds(10**6, 100 if quick else 1000, repeats, root, spike_on=["loss"])
        logging_hooks = _hook_seconds(1, 20 if quick else 100, repeats, root)
    bare_ms = 1000 * medians["bare"] / steps
    rows: list[dict[str, object]] = [
        {"run": kind, "steps": steps, "median s": seconds, "ms/step": 1000 * seconds / steps,
         "extra ms/step": 1000 * seconds / steps - bare_ms}
        for kind, seconds in medians.items()
    ]  # fmt: skip
    print_table(f"OptimizerMonitor cost ({repeats} interleaved repetitions, order rotated)", rows)
    bare_step = medians["bare"] / steps
    print_table("OptimizerMonitor hooks alone, per optimizer step", [
        {"step": "non-logging", "us": 1e6 * quiet_hooks, "fraction of a bare step": quiet_hooks / bare_step},
        {"step": "non-logging, spike_on=['loss']", "us": 1e6 * loss_only_hooks,
         "fraction of a bare step": loss_only_hooks / bare_step},
        {"step": "logging", "us": 1e6 * logging_hooks, "fraction of a bare step": logging_hooks / bare_step},
    ])  # fmt: skip
    return {
        "monitor_vs_bare": medians["quiet"] / medians["bare"],
        "monitor_logging_vs_bare": medians["logging"] / medians["bare"],
        "monitor_hooks_vs_step": quiet_hooks / bare_step,
        "monitor_logging_hooks_vs_step": logging_hooks / bare_step,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    quiet()
    print_json(run(quick="--quick" in sys.argv))
