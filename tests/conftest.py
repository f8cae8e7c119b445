"""Shared fixtures: a CPU Trainer factory and deterministic, single-threaded torch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from tests.trainers import cpu_trainer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present (CI has none; the GPU machine runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 cores; tests run Trainer loops, not matmuls
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., L.Trainer]:
    """Return ``make_trainer(**overrides) -> Trainer``: a quiet CPU Trainer writing under ``tmp_path``."""

    def make(**overrides: Any) -> L.Trainer:
        return cpu_trainer(tmp_path, **overrides)

    return make
