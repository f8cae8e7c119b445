"""Two-process DDP on CPU (gloo) with the whole lit_optim stack.

    python examples/ddp.py                      # 2 processes, 4 epochs of the char-GPT, ~1 minute on CPU
    python examples/ddp.py --fast --out DIR     # (or LIT_OPTIM_EXAMPLE_FAST=1) a few steps; ranks write JSON

What to look at:

- The schedule's length is per rank: each process sees half the windows (Lightning's ``DistributedSampler``),
  so ``total_steps = epochs * batches_per_rank``, resolved from the Trainer when fitting starts, not
  hard-coded. Durations given as fractions (``warmup="10%"``) follow.
- ``GradientClipping`` measures the global norm of gradients DDP has already averaged, so every rank clips
  by the same factor; ``LearningRateLogger(check_consistency_every_n_steps=...)`` all-gathers the lrs on
  those steps and raises if ranks disagree. Only rank 0 writes logs.
- At the end every rank holds the same weights and lrs (``--out`` writes ``rank<i>.json`` to check).

Lightning's ``strategy="ddp"`` launches this script again for rank 1, so it must be run as a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parent))

from char_gpt import CharDataModule, CharGPT

from lit_optim import Cosine, GradientClipping, LearningRateLogger, ScheduleLR, configure_optimizers

FAST_ENV = "LIT_OPTIM_EXAMPLE_FAST"


class DDPCharGPT(CharGPT):
    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self, "adamw", lr=self.lr, weight_decay=0.1, scheduler=Cosine(warmup="10%", min_lr=0.1)
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help=f"a few steps (or set {FAST_ENV}=1)")
    parser.add_argument("--out", type=Path, default=None, help="folder for rank<i>.json summaries")
    parser.add_argument("--logs", type=Path, default=Path("runs"), help="logger root folder (default ./runs)")
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")
    torch.set_num_threads(1)  # two processes share the CPU cores

    L.seed_everything(0, verbose=False)
    data = CharDataModule(train_batches=8 if fast else 40, val_batches=2 if fast else 4, batch_size=16)
    size = {"n_layer": 1, "n_embd": 32} if fast else {}
    model = DDPCharGPT(vocab_size=data.vocab_size, **size)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2 if fast else 4,
        logger=CSVLogger(save_dir=args.logs, name="ddp"),
        log_every_n_steps=2,
        callbacks=[GradientClipping(max_norm=1.0), LearningRateLogger(check_consistency_every_n_steps=2)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)

    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, ScheduleLR)
    summary = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "num_training_batches": trainer.num_training_batches,
        "total_steps": scheduler.total_steps,
        "lrs": {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups},
        "weight_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
        "val_loss": float(trainer.callback_metrics["val_loss"]),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(summary))
    if trainer.is_global_zero:
        print(f"\n{trainer.world_size} ranks, {trainer.num_training_batches} batches per rank per epoch, "
              f"schedule over {scheduler.total_steps} optimizer steps; val_loss {summary['val_loss']:.3f}")
        print(f"lrs at the end (identical on every rank): {summary['lrs']}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # before interpreter exit, or gloo's threads may abort it
    return summary


if __name__ == "__main__":
    main()
