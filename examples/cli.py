"""Configure the char-GPT, its optimizer, schedule and callbacks from YAML with Lightning's ``LightningCLI``.

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py fit --config examples/config.yaml --model.lr 1e-3 --model.weight_decay 0.05 \\
        --trainer.max_steps 200
    python examples/cli.py fit --config examples/config.yaml --print_config     # the full resolved config

``CLICharGPT`` mixes lit_optim's ``OptimizerMixin`` into the model: the arguments of ``configure_optimizers``
(``optimizer``, ``lr``, ``weight_decay``, ``overrides``, ``layer_decay``, ``scheduler``,
``optimizer_kwargs``) are ``__init__`` arguments saved as hyper-parameters, so ``--model.*``, the YAML file
and a checkpoint all configure the optimizer. The schedule is a spec given by ``class_path``/``init_args``
(``lit_optim.Cosine``, ``lit_optim.WarmupStableDecay``, ...), and the callbacks (``GradientClipping``,
``LearningRateLogger``) go under ``trainer.callbacks`` the same way. The vocabulary size is linked from the
data module to the model. Schedule specs are frozen dataclasses, which jsonargparse reads field by field
unless told otherwise: ``set_parsing_settings(subclasses_enabled=[Schedule])`` (in ``cli_main``) is what lets
``class_path`` choose the schedule. Under LightningCLI ``hparams["scheduler"]`` is that ``class_path`` config, not
the spec, so ``CLICharGPT.configure_optimizers`` hands the spec itself to lit_optim.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from char_gpt import CharDataModule, CharGPT

from lit_optim import OptimizerMixin, Schedule, ScheduleName

CONFIG = Path(__file__).resolve().parent / "config.yaml"


class CLICharGPT(OptimizerMixin, CharGPT):
    """``CharGPT`` whose optimizer and schedule are hyper-parameters (see ``OptimizerMixin``).

    Args:
        vocab_size: number of characters (linked from ``data.vocab_size`` by the CLI).
        block_size: context length.
        n_layer: transformer blocks.
        n_head: attention heads.
        n_embd: embedding width.
        dropout: dropout probability.
        optimizer: a ``torch.optim`` name (case-insensitive).
        lr: base learning rate.
        weight_decay: weight decay of the matrices (biases, norms and 1-D parameters get none).
        overrides: per-parameter-pattern settings, e.g. ``{"lm_head.*": {"lr_scale": 0.5, "name": "head"}}``.
        layer_decay: layer-wise lr decay over ``blocks``, or ``None``.
        scheduler: a lit_optim schedule spec, or ``None`` for a constant lr.
        optimizer_kwargs: other optimizer hyper-parameters, e.g. ``{"betas": [0.9, 0.95]}``.
        fallback_kwargs: with ``optimizer: muon``, AdamW's hyper-parameters for what Muon does not take
            (embeddings, head, norms, biases), e.g. ``{"betas": [0.9, 0.95]}``.
    """

    def __init__(
        self,
        vocab_size: int = 76,
        block_size: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        dropout: float = 0.0,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        overrides: dict[str, dict[str, Any]] | None = None,
        layer_decay: float | None = None,
        scheduler: Schedule | ScheduleName | dict[str, Any] | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
        fallback_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
            dropout=dropout, lr=lr,
        )
        # Under LightningCLI the hparams hold the schedule as its config ({"class_path": ..., "init_args": ...});
        # OptimizerMixin builds the spec from it, and checkpoints keep that plain form (weights_only=True loads).
        self.save_hyperparameters()


class CharCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.block_size", "model.block_size")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")


def cli_main(args: list[str] | None = None, run: bool = True) -> CharCLI:
    # Schedule specs are dataclasses, which jsonargparse parses by their fields only; this lets `class_path`
    # pick any subclass (Cosine, Linear, WarmupStableDecay, ...) for a `Schedule`-typed argument.
    set_parsing_settings(subclasses_enabled=[Schedule])
    return CharCLI(CLICharGPT, CharDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
