"""Every key lit_optim logs is safe for every logger: no key is a path prefix of another (MLflow's file store)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from lit_optim import GradientClipping, LearningRateLogger, SchedulerStepper
from lit_optim._logging import group_names, is_path_prefix
from tests.loggers import MemoryLogger
from tests.models import TinyModule

MODES = ["norm", "value", "agc", "percentile", "zscore"]


class Colliding(TinyModule):
    """Group names that are folders of each other (``head`` and ``head/decay``), a repeat, an unnamed group; a
    step scheduler. The first step's gradients are non-finite, so ``skipped_steps`` is logged too."""

    def __init__(self, optimizers: int = 1) -> None:
        super().__init__()
        self.optimizers_wanted = optimizers
        self.automatic_optimization = optimizers == 1

    def on_after_backward(self) -> None:
        if self.trainer.global_step == 0:
            self.net[0].weight.grad[0, 0] = math.inf

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        optimizers = self.optimizers()
        for opt in optimizers:  # type: ignore[union-attr]
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in optimizers:  # type: ignore[union-attr]
            opt.step()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        first, second = self.net[0], self.net[2]
        groups = [
            {"params": [first.weight], "name": "head/decay"},
            {"params": [first.bias], "name": "head"},
            {"params": [second.weight], "name": "head"},
            {"params": [second.bias]},
        ]
        if self.optimizers_wanted == 1:
            optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return [torch.optim.SGD(groups[:2], lr=0.1, momentum=0.9), torch.optim.AdamW(groups[2:], lr=0.01)]


def _prefix_pairs(keys: set[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in sorted(keys) for b in sorted(keys) if is_path_prefix(a, b)]


def _mode_settings(mode: str) -> dict[str, Any]:
    return {"value": {"clip_value": 0.01}, "agc": {"agc_clipping": 1e-3}, "zscore": {"warmup_steps": 1}}.get(mode, {})


@pytest.mark.parametrize("optimizers", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_no_logged_key_is_a_path_prefix_of_another(
    mode: str, optimizers: int, make_trainer: Callable[..., Trainer]
) -> None:
    logger = MemoryLogger()
    clip = GradientClipping(mode=mode, skip_nonfinite=True, log_every_n_steps=1, **_mode_settings(mode))  # type: ignore[arg-type]
    callbacks = [SchedulerStepper(), clip, LearningRateLogger(log_every_n_steps=1)]
    make_trainer(max_steps=3 * optimizers, logger=logger, callbacks=callbacks, log_every_n_steps=1).fit(
        Colliding(optimizers)
    )
    keys = {k for _, metrics in logger.logged for k in metrics}
    assert clip.skipped_steps >= 1
    prefix = "grad_clip/" if optimizers == 1 else "grad_clip/opt0/"
    assert {f"{prefix}norm", f"{prefix}skipped_steps", f"{prefix}clipped"} <= keys
    assert {f"{prefix}group_norm/head/decay", f"{prefix}group_norm/head-1"} <= keys
    assert any(k.startswith("lr/") for k in keys)
    assert _prefix_pairs(keys) == []


def test_group_names_are_never_folders_of_each_other() -> None:
    raw = ["a", "a/b", "a/b/c", "a", "x/", "a-1", None, "group6", "a/b"]
    names = group_names([{"name": n} if n is not None else {} for n in raw])
    assert names == ["a", "a-b-1", "a-b-c-2", "a-3", "x", "a-1", "group6", "group6-7", "a-b-8"]
    assert len(set(names)) == len(names)
    assert _prefix_pairs(set(names)) == []
    # groups added later keep the earlier names and avoid them
    assert group_names([{"name": "a"}, {"name": "a/z"}], known=["a"]) == ["a", "a-z-1"]


def test_old_scheme_would_break_the_rule() -> None:  # what the rule checks is what MLflow's file store needs
    assert _prefix_pairs({"grad_clip/norm", "grad_clip/norm/decay"}) == [("grad_clip/norm", "grad_clip/norm/decay")]
    assert _prefix_pairs({"lr/a", "lr/ab", "lr/a-b"}) == []


# -- real loggers ---------------------------------------------------------------------------------------------


def _fit_with(make_trainer: Callable[..., Trainer], *loggers: Any) -> MemoryLogger:
    memory = MemoryLogger()
    clip = GradientClipping(max_norm=0.05, skip_nonfinite=True, log_every_n_steps=2)
    callbacks = [SchedulerStepper(), clip, LearningRateLogger(log_every_n_steps=2)]
    make_trainer(max_steps=6, logger=[memory, *loggers], callbacks=callbacks, log_every_n_steps=2).fit(Colliding())
    return memory


def _expected(memory: MemoryLogger) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in memory.logged:
        for key, value in metrics.items():
            series.setdefault(key, []).append((int(step or 0), value))
    return series


def test_mlflow_file_store(
    make_trainer: Callable[..., Trainer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses the file store unless asked
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    mlflow = MLFlowLogger(experiment_name="keys", tracking_uri=uri)
    memory = _fit_with(make_trainer, mlflow)  # before the key scheme, this crashed at the first logging step
    expected = _expected(memory)
    assert {"grad_clip/group_norm/head/decay", "grad_clip/norm"} <= set(expected)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(mlflow.run_id)
    lit_keys = {k for k in expected if k.split("/")[0] in ("grad_clip", "lr", "momentum", "weight_decay")}
    assert lit_keys <= set(run.data.metrics)
    for key in lit_keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(mlflow.run_id, key))
        assert [s for s, _ in history] == [s for s, _ in expected[key]], key
        assert [v for _, v in history] == pytest.approx([v for _, v in expected[key]], rel=1e-6, nan_ok=True), key


def test_csv_and_tensorboard(make_trainer: Callable[..., Trainer], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    tb_logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    expected = _expected(_fit_with(make_trainer, csv_logger, tb_logger))
    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    events = EventAccumulator(tb_logger.log_dir)
    events.Reload()
    for key in ("grad_clip/norm", "grad_clip/group_norm/head/decay", "grad_clip/group_norm/head-1", "lr/head-1"):
        want_steps, want = [s for s, _ in expected[key]], [v for _, v in expected[key]]
        from_csv = [(int(r["step"]), float(r[key])) for r in rows if r.get(key, "") != ""]
        assert [s for s, _ in from_csv] == want_steps, key
        assert [v for _, v in from_csv] == pytest.approx(want, rel=1e-6, nan_ok=True), key
        from_tb = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in from_tb] == want_steps, key
        assert [v for _, v in from_tb] == pytest.approx(want, rel=1e-6, nan_ok=True), key
