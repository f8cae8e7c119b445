"""Per-step cost of SchedulerStepper vs Lightning's own stepping, in the same process.

Two identical tiny fits of ``STEPS`` optimizer steps with a per-step ``LambdaLR``: one stepped by Lightning
(``interval="step"``), one claimed by ``SchedulerStepper`` (post-step hook + gradient check). The ratio is
lit_optim time / Lightning time of the whole fit (medians of interleaved repetitions); the per-step overhead
is the difference divided by the steps. A third fit with an empty ``Callback`` separates what any callback
costs in Lightning's loop (hook dispatch and profiler contexts) from what the stepper itself adds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch.optim import lr_scheduler as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import interleaved_medians, print_json, print_table
from lit_optim import SchedulerStepper
from tests.models import TinyModule


class _Module(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = tl.LambdaLR(opt, lambda s: 1.0 / (1.0 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(steps: int, stepper: bool, empty_callback: bool = False) -> None:
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[SchedulerStepper()] if stepper else [Callback()] if empty_callback else [],
    )
    trainer.fit(_Module(n=steps * 4))


def run(quick: bool = False) -> dict[str, float]:
    steps, repeats = (50, 3) if quick else (300, 7)
    torch.set_num_threads(1)
    fns = {
        "lightning": lambda: _fit(steps, False),
        "lightning+callback": lambda: _fit(steps, False, empty_callback=True),
        "lit_optim": lambda: _fit(steps, True),
    }
    # Whole fits leave garbage behind for the next one: run the interleaving in both orders and average.
    forward = interleaved_medians(fns, repeats=repeats)
    backward = interleaved_medians(dict(reversed(fns.items())), repeats=repeats)
    medians = {name: (forward[name] + backward[name]) / 2 for name in fns}
    ratio = medians["lit_optim"] / medians["lightning"]
    ratio_cb = medians["lit_optim"] / medians["lightning+callback"]
    per_step_us = (medians["lit_optim"] - medians["lightning"]) / steps * 1e6
    print_table(
        f"SchedulerStepper vs Lightning stepping ({steps} optimizer steps, median of {repeats}, both orders)",
        [
            {"stepping": "Lightning interval='step'", "fit seconds": medians["lightning"]},
            {"stepping": "Lightning + an empty Callback", "fit seconds": medians["lightning+callback"]},
            {"stepping": "SchedulerStepper", "fit seconds": medians["lit_optim"]},
        ],
    )
    print(f"per-step overhead: {per_step_us:.1f} us")
    return {
        "stepper_fit_ratio": ratio,
        "stepper_fit_ratio_vs_empty_callback": ratio_cb,
        "stepper_overhead_us_per_step": per_step_us,
    }


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print_json(run(quick="--quick" in sys.argv))
