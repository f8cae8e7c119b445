"""Train a small character-level GPT with the whole lit_optim stack, on CPU, in a few minutes.

    python examples/train_char_gpt.py         # 500 optimizer steps, 3 blocks 96 wide: 1-3 min on 2 CPU cores
    python examples/train_char_gpt.py --fast  # 60 steps, 2 blocks 64 wide (or LIT_OPTIM_EXAMPLE_FAST=1)
    python examples/train_char_gpt.py --optimizer muon  # Muon for the block matrices, AdamW for the rest

What it shows:

- ``param_groups`` through ``configure_optimizers``: weight decay on matrices only (biases, LayerNorms and
  1-D parameters get none), and an override that gives the (tied) ``lm_head`` its own learning rate and group
  name, ``head``;
- a warmup + cosine schedule given in fractions of the run (``Cosine(warmup="10%", min_lr=0.1)``), resolved
  against the Trainer's ``max_steps`` and stepped once per real optimizer step;
- ``GradientClipping(max_norm=1.0)`` logging the pre-clip gradient norm (``grad_clip/norm``);
- ``LearningRateLogger`` writing ``lr/<group>`` (and momentum, beta2, weight decay) into a ``CSVLogger``;
- with ``--optimizer muon``, the same set-up with one ``HybridOptimizer``: torch's ``Muon`` for the hidden
  matrices of the blocks (groups ``muon/...``), AdamW for embeddings, the tied head, norms and biases
  (``adamw/...``), one base lr for both (Muon's ``adjust_lr_fn="match_rms_adamw"``).

It prints the parameter-group table, the losses as they go down and a sample of generated text, and leaves
``metrics.csv`` and ``lr_and_grad_norm.png`` in the run folder (``runs/char_gpt/version_<n>/`` by default).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python examples/train_char_gpt.py` from anywhere

from char_gpt import CharDataModule, CharGPT

from lit_optim import Cosine, GradientClipping, LearningRateLogger, configure_optimizers, format_groups

FAST_ENV = "LIT_OPTIM_EXAMPLE_FAST"


class LitCharGPT(CharGPT):
    """``CharGPT`` with lit_optim's optimizer: grouped AdamW and a warmup + cosine schedule."""

    def __init__(
        self, *args: Any, weight_decay: float = 0.1, head_lr_scale: float = 0.5, optimizer: str = "adamw", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.weight_decay, self.head_lr_scale, self.optimizer_name = weight_decay, head_lr_scale, optimizer

    def configure_optimizers(self) -> Any:
        # AdamW's betas: the top-level keywords of "adamw", the fallback's for "muon" (Muon has momentum instead).
        betas = {"betas": (0.9, 0.95)}
        by_optimizer = {"fallback_kwargs": betas} if self.optimizer_name == "muon" else betas
        return configure_optimizers(
            self,
            self.optimizer_name,
            lr=self.lr,
            weight_decay=self.weight_decay,
            # `lm_head.weight` is tied to `tok_emb.weight`: the override moves the shared matrix into "head".
            overrides={"lm_head.*": {"lr_scale": self.head_lr_scale, "name": "head"}},
            scheduler=Cosine(warmup="10%", min_lr=0.1),
            **by_optimizer,
        )


class ProgressPrinter(Callback):
    """Print the optimizer's group table once, then one line per validation run."""

    def __init__(self) -> None:
        self._start = 0.0
        self._group = "decay"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        # What the optimizer received; `lr` is each group's base lr (the schedule multiplies it, from 0 here).
        # "optimizer": each group's owner with "muon"
        keys = ("params", "name", "applied_lr_scale", "weight_decay", "optimizer")
        groups = [{**{k: g[k] for k in keys if k in g}, "lr": g["initial_lr"]}
                  for g in trainer.optimizers[0].param_groups]
        print("\nParameter groups (from the optimizer):")
        print(format_groups(groups))
        names = [g["name"] for g in trainer.optimizers[0].param_groups]
        self._group = next((n for n in names if n in ("decay", "muon/decay")), names[0])
        print(f"\nTraining for {trainer.max_steps} optimizer steps.\n{'step':>6}  {'train_loss':>10}  {'val_loss':>8}  "
              f"{'lr[' + self._group + ']':>9}  {'elapsed':>7}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        train = metrics.get("train_loss")
        lr = next(g["lr"] for g in trainer.optimizers[0].param_groups if g["name"] == self._group)
        print(f"{trainer.global_step:>6}  {_fmt(train):>10}  {_fmt(metrics.get('val_loss')):>8}  {lr:>9.2e}  "
              f"{time.perf_counter() - self._start:>6.0f}s")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Read a ``CSVLogger`` ``metrics.csv`` into ``{column: [(step, value), ...]}`` (empty cells skipped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, []).append((step, float(value)))
    return series


def plot_run(series: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Save a PNG with the LR of every group, the pre-clip gradient norm and the losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_norm, ax_loss) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for index, key in enumerate(sorted(k for k in series if k.startswith("lr/"))):
        steps, values = zip(*series[key], strict=True)
        ax_lr.plot(steps, values, ("-", "--", ":", "-.")[index % 4], label=key)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("LR per parameter group (LearningRateLogger)")
    ax_lr.legend()
    norm = series.get("grad_clip/norm", [])
    if norm:
        steps, values = zip(*norm, strict=True)
        ax_norm.plot(steps, values, label="grad_clip/norm (before clipping)")
    threshold = series.get("grad_clip/threshold", [])
    if threshold:
        steps, values = zip(*threshold, strict=True)
        ax_norm.plot(steps, values, "--", label="max_norm")
    ax_norm.set_ylabel("gradient norm")
    ax_norm.set_title("Global gradient norm (GradientClipping)")
    ax_norm.legend()
    for key in ("train_loss", "val_loss"):
        if series.get(key):
            steps, values = zip(*series[key], strict=True)
            ax_loss.plot(steps, values, "-" if key == "train_loss" else "o-", label=key)
    ax_loss.set_ylabel("cross-entropy (nats/char)")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help=f"a ~60-step run (or set {FAST_ENV}=1)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default 500, 60 with --fast)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="logger root folder (default ./runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                        help="adamw, or muon: Muon for the block matrices and AdamW for the rest, as one optimizer")
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")
    max_steps = args.max_steps or (60 if fast else 500)
    val_every = 20 if fast else 100

    L.seed_everything(args.seed, verbose=False)
    data = CharDataModule(train_batches=val_every, val_batches=4 if fast else 8)
    size = {} if fast else {"n_embd": 96, "n_layer": 3}  # --fast: CharGPT's defaults (64 wide, 2 blocks)
    model = LitCharGPT(vocab_size=data.vocab_size, lr=3e-3, optimizer=args.optimizer, **size)
    logger = CSVLogger(save_dir=args.out, name="char_gpt" if args.optimizer == "adamw" else "char_gpt_muon")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=logger,
        log_every_n_steps=5,  # LearningRateLogger and GradientClipping follow the Trainer's period
        callbacks=[GradientClipping(max_norm=1.0), LearningRateLogger(), ProgressPrinter()],
        enable_checkpointing=not fast,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    elapsed = time.perf_counter() - start

    run_dir = Path(logger.log_dir)
    metrics_csv = run_dir / "metrics.csv"
    series = read_metrics(metrics_csv)
    png = run_dir / "lr_and_grad_norm.png"
    plot_run(series, png)

    val = [v for _, v in series["val_loss"]]
    prompt = data.vocab.encode("We the People").unsqueeze(0)
    sample = data.vocab.decode(model.generate(prompt, new_tokens=0 if fast else 200)[0])
    print(f"\nval_loss {val[0]:.3f} -> {val[-1]:.3f} (ln(vocab) = {math.log(data.vocab_size):.3f}) "
          f"in {elapsed:.0f}s, {trainer.global_step} steps")
    if not fast:
        print(f"\nSample:\n{sample}\n")
    print(f"Metrics CSV: {metrics_csv}\nPlot:        {png}")
    return {"run_dir": run_dir, "metrics_csv": metrics_csv, "png": png, "series": series, "steps": trainer.global_step}


if __name__ == "__main__":
    main()
