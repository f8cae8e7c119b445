"""The quiet CPU Trainer every loop test starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


def cpu_trainer(root: Path | str, **overrides: Any) -> L.Trainer:
    """A CPU Trainer writing under ``root``: no logger, checkpointing, progress bar, summary or sanity check,
    one epoch; ``overrides`` replace any of these (a ``ModelCheckpoint`` in ``callbacks`` turns checkpointing
    back on by itself)."""
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": root,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "max_epochs": 1,
    }
    kwargs.update(overrides)
    if any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in kwargs.get("callbacks", [])):
        kwargs["enable_checkpointing"] = True
    return L.Trainer(**kwargs)
