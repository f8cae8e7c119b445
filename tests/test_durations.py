from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, IterableDataset

from lit_optim.schedules.durations import Duration, TrainingLength, parse_duration, resolve_training_length
from tests.models import TinyModule


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (500, Duration(500, "step")),
        ("500steps", Duration(500, "step")),
        ("500 step", Duration(500, "step")),
        ("2ep", Duration(2, "epoch")),
        ("0.5epochs", Duration(0.5, "epoch")),
        ("1 epoch", Duration(1, "epoch")),
        ("5%", Duration(0.05, "fraction")),
        ("100%", Duration(1.0, "fraction")),
        (0.25, Duration(0.25, "fraction")),
        (1.0, Duration(1.0, "fraction")),
        (Duration(3, "epoch"), Duration(3, "epoch")),
    ],
)
def test_parse(value: Any, expected: Duration) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("5 weeks", ValueError, r"Unknown duration unit 'weeks'\. Valid: \['%', 'ep', 'epoch', 'epochs', 'step'"),
        ("5stpes", ValueError, r"Unknown duration unit 'stpes'.*Did you mean 'steps'\?"),
        ("abc", ValueError, r"Invalid `warmup` 'abc': write a positive number and a unit"),
        ("-5%", ValueError, r"Invalid `warmup` '-5%': write a positive number"),
        (0, ValueError, r"A duration must be > 0, got Duration\('0steps'\)"),
        (-3, ValueError, r"A duration must be > 0"),
        ("0ep", ValueError, r"A duration must be > 0"),
        (0.0, ValueError, r"A duration must be > 0"),
        (1.5, ValueError, r"fraction of the run must be in \(0, 1\], got 1\.5"),
        ("150%", ValueError, r"Invalid `warmup` '150%': .*fraction of the run must be in \(0, 1\], got 1\.5"),
        ("2.5steps", ValueError, r"in steps must be a whole number, got 2\.5"),
        (True, TypeError, r"`warmup` must be an int, float, str or Duration, got True"),
        ([5], TypeError, r"`warmup` must be an int, float, str or Duration, got \[5\] \(list\)"),
        (float("nan"), TypeError, r"must be a number, got nan"),
    ],
)
def test_parse_errors(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_duration(value, "warmup")


def test_unknown_unit_in_dataclass() -> None:
    with pytest.raises(ValueError, match=r"Unknown duration unit 'epochs'\. Valid: \['epoch', 'fraction', 'step'\]"):
        Duration(2, "epochs")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("duration", "length", "steps"),
    [
        ("500steps", TrainingLength(1000), 500),
        ("5%", TrainingLength(1000), 50),
        ("5%", TrainingLength(30), 2),  # 1.5 rounds up
        ("10%", TrainingLength(25), 3),  # 2.5 rounds up (Hugging Face's warmup_ratio: ceil), not half-to-even (2)
        ("7%", TrainingLength(100), 7),  # exactly 7: the float product 100 * 0.07 is 7.000000000000001
        (0.07, TrainingLength(100), 7),
        ("55%", TrainingLength(100), 55),  # 100 * 0.55 is 55.00000000000001 in floats
        (0.1, TrainingLength(95), 10),  # 9.5 -> 10
        ("10%", TrainingLength(91), 10),  # 9.1 -> 10: up, not to the nearest
        (1 / 3, TrainingLength(30), 10),  # the float 0.333...3 * 30 is just under 10
        ("1%", TrainingLength(20), 1),  # a non-zero fraction never resolves to 0 steps
        ("0.001%", TrainingLength(5), 1),
        ("2ep", TrainingLength(1000, 33), 66),
        ("0.5ep", TrainingLength(1000, 7), 4),  # 3.5 -> 4
        ("1.5ep", TrainingLength(1000, 3), 5),  # 4.5 -> 5: epochs follow the same rule
        ("0.01ep", TrainingLength(1000, 4), 1),
        ("0.1ep", TrainingLength(1000, 30), 3),
        ("100%", TrainingLength(17), 17),
    ],
)
def test_to_steps(duration: str, length: TrainingLength, steps: int) -> None:
    assert parse_duration(duration).to_steps(length) == steps


def test_to_steps_errors() -> None:
    with pytest.raises(ValueError, match=r"Cannot resolve 2ep to optimizer steps: the number of steps per epoch"):
        parse_duration("2ep").to_steps(TrainingLength(100))


def test_training_length_errors() -> None:
    with pytest.raises(ValueError, match=r"`total_steps` must be an int >= 1, got 0"):
        TrainingLength(0)
    with pytest.raises(TypeError, match=r"`steps_per_epoch` must be an int >= 1, got 2\.5"):
        TrainingLength(10, 2.5)  # type: ignore[arg-type]


class _Probe(TinyModule):
    """Records ``resolve_training_length`` inside ``configure_optimizers`` and the real optimizer steps."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length: TrainingLength | None = None
        self.estimated: int | float | None = None
        self.steps = 0

    def configure_optimizers(self) -> Any:
        self.length = resolve_training_length(self.trainer)
        self.estimated = self.trainer.estimated_stepping_batches
        return super().configure_optimizers()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.steps += 1


@pytest.mark.parametrize(
    ("overrides", "total", "per_epoch"),
    [
        ({"max_epochs": 2}, 32, 16),  # 64 samples / batch 4 = 16 batches
        ({"max_epochs": 2, "accumulate_grad_batches": 3}, 12, 6),  # ceil(16 / 3): the last window has 1 batch
        ({"max_epochs": 3, "limit_train_batches": 5, "accumulate_grad_batches": 2}, 9, 3),
        ({"max_epochs": 2, "limit_train_batches": 0.5}, 16, 8),
        ({"max_epochs": -1, "max_steps": 7}, 7, 16),
        ({"max_epochs": 5, "max_steps": 20, "accumulate_grad_batches": 3}, 20, 6),  # max_steps caps
        ({"max_epochs": None, "max_steps": 10}, 10, 16),
    ],
)
def test_resolve_against_trainer(
    make_trainer: Callable[..., Trainer], overrides: dict[str, Any], total: int, per_epoch: int
) -> None:
    model = _Probe()
    trainer = make_trainer(limit_val_batches=0, **overrides)
    trainer.fit(model)
    assert model.length == TrainingLength(total_steps=total, steps_per_epoch=per_epoch)
    assert model.estimated == total
    assert model.steps == total  # the Trainer really took that many optimizer steps


class _Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __iter__(self) -> Any:
        for _ in range(8):
            yield torch.randn(8), torch.randn(1)


class _StreamProbe(_Probe):
    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_Stream(), batch_size=4)


def test_unknown_total_names_max_steps(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(limit_val_batches=0, max_epochs=2)
    with pytest.raises(ValueError, match=r"total number of optimizer steps is unknown .*Set `max_steps`"):
        trainer.fit(_StreamProbe())


def test_endless_run_names_max_steps(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(limit_val_batches=0, max_epochs=-1)
    with pytest.raises(ValueError, match=r"unknown \(max_steps=-1, max_epochs=-1, .*Set `max_steps` on the Trainer"):
        trainer.fit(_Probe())


def test_iterable_with_max_steps(make_trainer: Callable[..., Trainer]) -> None:
    model = _StreamProbe()
    trainer = make_trainer(limit_val_batches=0, max_epochs=-1, max_steps=3)
    trainer.fit(model)
    assert model.length == TrainingLength(total_steps=3, steps_per_epoch=None)


DDP_SCRIPT = """
import json, sys
from pathlib import Path

import lightning as L
import torch

from lit_optim import Cosine, lightning_scheduler_config, resolve_training_length
from tests.models import TinyModule


class Model(TinyModule):
    def configure_optimizers(self):
        self.length = resolve_training_length(self.trainer)
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, Cosine(warmup="1ep"), self.trainer)}

    def on_before_optimizer_step(self, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


model = Model()
model.lrs = []
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_val_batches=0, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model)
out = {"total": model.length.total_steps, "per_epoch": model.length.steps_per_epoch, "lrs": model.lrs,
       "estimated": trainer.estimated_stepping_batches, "global_step": trainer.global_step}
(Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.ddp
def test_resolution_is_per_rank_under_ddp(tmp_path: Path) -> None:
    from lit_optim.schedules import Cosine
    from lit_optim.schedules.preview import preview_schedule
    from tests.ddp import run_ddp

    ranks = run_ddp(DDP_SCRIPT, tmp_path)
    # 64 samples / batch 4 = 16 batches, split over 2 ranks: 8 optimizer steps per epoch and rank
    expected = [row[0] for row in preview_schedule(Cosine(warmup="1ep"), TrainingLength(16, 8), 0.1).lrs]
    for out in ranks:
        assert (out["total"], out["per_epoch"], out["estimated"], out["global_step"]) == (16, 8, 16, 16)
        assert out["lrs"] == expected


def test_from_loop_endless_run_with_max_steps() -> None:
    # Trainer(max_epochs=-1, max_steps=...) is a valid run; resolve_training_length handles it, so from_loop must
    length = TrainingLength.from_loop(max_epochs=-1, batches_per_epoch=10, accumulate_grad_batches=3, max_steps=25)
    assert length == TrainingLength(total_steps=25, steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"endless \(`max_epochs=-1`\) without `max_steps`: the total is unknown"):
        TrainingLength.from_loop(max_epochs=-1, batches_per_epoch=10)
    with pytest.raises(ValueError, match=r"`max_epochs` must be an int >= 1 \(or -1 with `max_steps`\), got 0"):
        TrainingLength.from_loop(max_epochs=0, batches_per_epoch=10)


def test_trainer_without_a_model_says_so(make_trainer: Callable[..., Trainer]) -> None:
    # before `trainer.fit(model)` the Trainer knows no dataloader: the fix is not "set max_steps"
    with pytest.raises(ValueError, match=r"total number of optimizer steps is unknown: the Trainer has no model "
                       r"attached yet.*inside `configure_optimizers`.*`TrainingLength\.from_loop"):
        resolve_training_length(make_trainer(max_epochs=2))
