"""Per-step cost of ``LearningRateLogger`` vs Lightning's ``LearningRateMonitor`` on the same run.

Both callbacks are attached to one Trainer (same model, same SGD optimizer with 8 named param groups, a step
scheduler, a null logger) and fitted for a few steps, so each has set itself up exactly as in training. The timed
part then drives each callback's per-step hook over a run of ``steps`` optimizer steps, advancing the Trainer's
step counters the same way for both: ``on_before_optimizer_step`` for ours, ``on_train_batch_start`` for
Lightning's (its per-step hook). Repetitions are interleaved in one process; the ratio is ours / Lightning's
median. Both log ``lr``, momentum and weight decay of every group, every ``log_every_n_steps`` steps.

Run: ``python benchmarks/bench_lr_logger.py [--quick]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._loop import NullLogger
from benchmarks._timing import interleaved_medians, print_json, print_table
from lit_optim import LearningRateLogger
from tests.models import TinyModule

GROUPS = 8


class ManyGroups(TinyModule):
    def configure_optimizers(self) -> Any:
        params = list(self.parameters())
        groups = [
            {"params": params[i::GROUPS], "name": f"layer_{i:02d}/decay", "weight_decay": 0.01 * i}
            for i in range(GROUPS)
            if params[i::GROUPS]
        ]
        groups += [{"params": [], "name": f"empty_{i}"} for i in range(GROUPS - len(groups))]
        optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def drivers(log_every_n_steps: int, steps: int, root: Path) -> dict[str, Callable[[], None]]:
    ours = LearningRateLogger()
    theirs = LearningRateMonitor(logging_interval="step", log_momentum=True, log_weight_decay=True)
    model = ManyGroups()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=NullLogger(), callbacks=[ours, theirs],
        log_every_n_steps=log_every_n_steps, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model)
    trainer.training = True  # Lightning's monitor asks the fit loop whether to log, as it does while training
    trainer.should_stop = False
    epoch_loop = trainer.fit_loop.epoch_loop
    counter = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total  # trainer.global_step
    optimizer = trainer.optimizers[0]

    def run_ours() -> None:
        ours._log_window = {}
        for step in range(steps):
            counter.completed = epoch_loop._batches_that_stepped = step
            ours.on_before_optimizer_step(trainer, model, optimizer)

    def run_theirs() -> None:
        for step in range(steps):
            counter.completed = epoch_loop._batches_that_stepped = step
            theirs.on_train_batch_start(trainer, model, None, step)

    def run_counters_only() -> None:
        for step in range(steps):
            counter.completed = epoch_loop._batches_that_stepped = step

    return {"lit_optim": run_ours, "lightning": run_theirs, "loop_only": run_counters_only}


def run(quick: bool = False) -> dict[str, float]:
    import tempfile

    steps, repeats = (200, 5) if quick else (1000, 15)
    result: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as root:
        for key, every in (("logger_vs_lightning", 50), ("logger_vs_lightning_every_step", 1)):
            times = interleaved_medians(drivers(every, steps, Path(root)), repeats=repeats)
            base = times["loop_only"]
            ours, theirs = times["lit_optim"] - base, times["lightning"] - base
            result[key] = ours / theirs
            rows.append({
                "log_every_n_steps": every, "groups": GROUPS,
                "lit_optim us/step": 1e6 * ours / steps, "lightning us/step": 1e6 * theirs / steps,
                "ratio": result[key],
            })  # fmt: skip
    print_table("LearningRateLogger vs LearningRateMonitor, per-step hook cost", rows)
    return result


if __name__ == "__main__":
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print_json(run(quick="--quick" in sys.argv))
