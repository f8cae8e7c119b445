"""Issue 13: every peer's schedule, through a real Trainer, equals the peer's published formula at every step.

Each peer's closed form below is written out from its documented source (Hugging Face ``optimization.py``, timm
``scheduler/cosine_lr.py``, nanoGPT ``train.py``'s ``get_lr``, torch ``ConstantLR``/``CyclicLR``), as a function of
the optimizer step and the group's lr; none of those packages is imported. Every run uses gradient accumulation
(2 batches per step) and two param groups with different lrs; the preview must equal what the Trainer used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from lit_optim import (
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Schedule,
    Warmup,
    WarmupStableDecay,
    lightning_scheduler_config,
    preview_schedule,
)
from tests.models import TinyModule
from tests.trainers import cpu_trainer

LRS = (0.1, 0.5)  # the two groups' lrs; HF's `optimizer.defaults["lr"]` is the first
TOLERANCE = 1e-12


class PeerModel(TinyModule):
    def __init__(self, schedule: Schedule, optimizer: str = "sgd") -> None:
        super().__init__()
        self.schedule, self.optimizer_name = schedule, optimizer

    def configure_optimizers(self) -> Any:
        groups = [
            {"params": self.net[0].parameters(), "lr": LRS[0], "name": "body"},
            {"params": self.net[2].parameters(), "lr": LRS[1], "name": "head"},
        ]
        if self.optimizer_name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=LRS[0], momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, lr=LRS[0], betas=(0.9, 0.999))
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, self.schedule, self.trainer)}


class Recorder(Callback):
    """Each group's lr and momentum (SGD's ``momentum`` or Adam's beta1) as the optimizer steps."""

    def __init__(self) -> None:
        self.lrs: list[tuple[float, ...]] = []
        self.momenta: list[tuple[float, ...]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        groups = optimizer.param_groups
        self.lrs.append(tuple(float(g["lr"]) for g in groups))
        self.momenta.append(tuple(float(g["betas"][0] if "betas" in g else g["momentum"]) for g in groups))


@dataclass
class Peer:
    """A peer's call, the lit_optim spec that expresses it, and the peer's closed form ``lr(step, group_lr)``."""

    call: str
    spec: Schedule
    steps: int
    lr: Callable[[int, float], float]
    momentum: Callable[[int], float] | None = None
    optimizer: str = "sgd"


# ---------------------------------------------------------------- Hugging Face (transformers/optimization.py)


def hf_cosine(step: int, *, warmup: int, total: int, num_cycles: float, min_lr_rate: float = 0.0) -> float:
    """``_get_cosine_schedule_with_warmup_lr_lambda`` (with ``min_lr_rate``: the ``cosine_with_min_lr`` lambda)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0.0, factor)


def hf_hard_restarts(step: int, *, warmup: int, total: int, num_cycles: int) -> float:
    """``_get_cosine_with_hard_restarts_schedule_with_warmup_lr_lambda``."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def hf_wsd(
    step: int, *, warmup: int, stable: int, decay: int, warmup_type: str, decay_type: str, min_lr_ratio: float,
    num_cycles: float = 0.5,
) -> float:
    """``_get_wsd_scheduler_lambda``."""
    if step < warmup:
        progress = float(step) / float(max(1, warmup))
        if warmup_type == "linear":
            factor = progress
        elif warmup_type == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        else:  # "1-sqrt"
            factor = 1.0 - math.sqrt(1.0 - progress)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = float(step - warmup - stable) / float(max(1, decay))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        else:  # "1-sqrt"
            factor = 1.0 - math.sqrt(progress)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


def lambda_lr(fn: Callable[..., float], **kwargs: Any) -> Callable[[int, float], float]:
    """torch ``LambdaLR``: each group's lr is its initial lr times the lambda."""
    return lambda step, lr: lr * fn(step, **kwargs)


# ---------------------------------------------------------------- timm (scheduler/cosine_lr.py, step mode)


def timm_cosine(
    t: int, base: float, *, t_initial: int, lr_min: float = 0.0, cycle_mul: float = 1.0, cycle_decay: float = 1.0,
    cycle_limit: int = 1, warmup_t: int = 0, warmup_lr_init: float = 0.0, warmup_prefix: bool = False,
) -> float:
    """``CosineLRScheduler._get_lr(t)`` for one group whose base value is ``base`` (``k_decay=1``, no noise)."""
    if t < warmup_t:
        return warmup_lr_init + t * ((base - warmup_lr_init) / warmup_t)
    if warmup_prefix:
        t = t - warmup_t
    if cycle_mul != 1:
        i = math.floor(math.log(1 - t / t_initial * (1 - cycle_mul), cycle_mul))
        t_i = cycle_mul**i * t_initial
        t_curr = t - (1 - cycle_mul**i) / (1 - cycle_mul) * t_initial
    else:
        i = t // t_initial
        t_i = t_initial
        t_curr = t - (t_initial * i)
    lr_max = base * cycle_decay**i
    if i < cycle_limit:
        return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t_curr / t_i))
    return lr_min


# ---------------------------------------------------------------- nanoGPT (train.py get_lr) and torch


def nanogpt(it: int, learning_rate: float, *, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's ``get_lr`` with its default ``min_lr = learning_rate / 10``."""
    min_lr = learning_rate / 10
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def torch_constant_lr(step: int, base_lr: float, *, factor: float, total_iters: int) -> float:
    """``ConstantLR._get_closed_form_lr``."""
    return base_lr * (factor + (step >= total_iters) * (1 - factor))


def torch_cyclic(
    step: int, base_lr: float, max_lr: float, *, up: float, down: float, mode: str, gamma: float = 1.0
) -> float:
    """``CyclicLR.get_lr`` at ``last_epoch = step`` for one group."""
    total_size = up + down
    step_ratio = up / total_size
    cycle = math.floor(1 + step / total_size)
    x = 1.0 + step / total_size - cycle
    scale_factor = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
    base_height = (max_lr - base_lr) * scale_factor
    if mode == "triangular":
        return base_lr + base_height * 1.0
    if mode == "triangular2":
        return base_lr + base_height * (1 / (2.0 ** (cycle - 1)))
    return base_lr + base_height * gamma**step  # exp_range: scale_mode "iterations"


def torch_cyclic_momentum(
    step: int, *, up: float, down: float, mode: str, gamma: float = 1.0, base_m: float = 0.8, max_m: float = 0.9
) -> float:
    """``CyclicLR``'s momentum (``cycle_momentum=True``): the lr's triangle, inverted, between the momenta."""
    return max_m - (torch_cyclic(step, 0.0, 1.0, up=up, down=down, mode=mode, gamma=gamma)) * (max_m - base_m)


PEERS: list[Peer] = [
    Peer(
        "get_cosine_schedule_with_warmup(opt, 4, 30, num_cycles=0.25)",
        Cosine(warmup=4, cycles=0.25),
        30,
        lambda_lr(hf_cosine, warmup=4, total=30, num_cycles=0.25),
    ),
    Peer(
        "get_cosine_schedule_with_warmup(opt, 4, 30, num_cycles=1.0)",
        Cosine(warmup=4, cycles=1.0),
        30,
        lambda_lr(hf_cosine, warmup=4, total=30, num_cycles=1.0),
    ),
    Peer(  # 26 steps after the warmup in 4 cycles of 6.5 steps: boundaries between steps
        "get_cosine_with_hard_restarts_schedule_with_warmup(opt, 4, 30, num_cycles=4)",
        CosineRestarts(warmup=4, cycles=4),
        30,
        lambda_lr(hf_hard_restarts, warmup=4, total=30, num_cycles=4),
    ),
    Peer(
        "get_cosine_with_min_lr_schedule_with_warmup(opt, 4, 30, min_lr=0.005)",  # min_lr / defaults["lr"] = 0.05
        Cosine(warmup=4, min_lr=0.005 / LRS[0]),
        30,
        lambda_lr(hf_cosine, warmup=4, total=30, num_cycles=0.5, min_lr_rate=0.005 / LRS[0]),
    ),
    Peer(
        "get_cosine_with_min_lr_schedule_with_warmup(opt, 4, 30, num_cycles=1.0, min_lr_rate=0.1)",
        Cosine(warmup=4, cycles=1.0, min_lr=0.1),
        30,
        lambda_lr(hf_cosine, warmup=4, total=30, num_cycles=1.0, min_lr_rate=0.1),
    ),
    Peer(
        "get_wsd_schedule(opt, 6, 8, num_training_steps=30, warmup_type='1-sqrt', min_lr_ratio=0.1)",
        WarmupStableDecay(
            warmup=Warmup(duration=6, shape="1-sqrt", start_factor=0.1), decay=8, decay_shape="cosine", min_lr=0.1
        ),
        30,
        lambda_lr(hf_wsd, warmup=6, stable=16, decay=8, warmup_type="1-sqrt", decay_type="cosine", min_lr_ratio=0.1),
    ),
    Peer(
        "get_wsd_schedule(opt, 4, 10, num_training_steps=30, warmup_type='cosine', num_cycles=0.3)",
        WarmupStableDecay(warmup=Warmup(duration=4, shape="cosine"), decay=10, decay_shape="cosine", cycles=0.3),
        30,
        lambda_lr(hf_wsd, warmup=4, stable=16, decay=10, warmup_type="cosine", decay_type="cosine", min_lr_ratio=0.0,
                  num_cycles=0.3),
    ),
    Peer(  # decay ends at step 4 + 10 + 7 = 21 of 30: a tail of 9 steps at the minimum
        "get_wsd_schedule(opt, 4, 7, num_stable_steps=10, decay_type='1-sqrt', min_lr_ratio=0.2)",
        WarmupStableDecay(
            warmup=Warmup(duration=4, start_factor=0.2), stable=10, decay=7, decay_shape="1-sqrt", min_lr=0.2
        ),
        30,
        lambda_lr(hf_wsd, warmup=4, stable=10, decay=7, warmup_type="linear", decay_type="1-sqrt", min_lr_ratio=0.2),
    ),
    Peer(  # the warmup overlaps the first cycle; after cycle_limit=1 (step 24) the absolute floor holds
        "CosineLRScheduler(opt, t_initial=24, lr_min=0.002, warmup_t=5, warmup_lr_init=0.001, t_in_epochs=False)",
        CosineRestarts(
            period=24, cycle_limit=1, warmup=Warmup(duration=5, start_lr=0.001), warmup_prefix=False, min_lr_abs=0.002
        ),
        32,
        lambda t, lr: timm_cosine(t, lr, t_initial=24, lr_min=0.002, warmup_t=5, warmup_lr_init=0.001),
    ),
    Peer(
        "CosineLRScheduler(opt, t_initial=7, lr_min=0.003, cycle_decay=0.5, cycle_limit=3, warmup_t=3, "
        "warmup_lr_init=0.02, warmup_prefix=True, t_in_epochs=False)",
        CosineRestarts(
            period=7, cycle_decay=0.5, cycle_limit=3, warmup=Warmup(duration=3, start_lr=0.02), min_lr_abs=0.003
        ),
        30,
        lambda t, lr: timm_cosine(
            t, lr, t_initial=7, lr_min=0.003, cycle_decay=0.5, cycle_limit=3, warmup_t=3, warmup_lr_init=0.02,
            warmup_prefix=True,
        ),
    ),
    Peer(  # cycles of 4, 6, 9 and 13.5 steps (the last one ends between steps), then the floor
        "CosineLRScheduler(opt, t_initial=4, cycle_mul=1.5, cycle_decay=0.8, cycle_limit=4, lr_min=0.001, "
        "t_in_epochs=False)",
        CosineRestarts(period=4, period_mult=1.5, cycle_decay=0.8, cycle_limit=4, min_lr_abs=0.001),
        36,
        lambda t, lr: timm_cosine(t, lr, t_initial=4, cycle_mul=1.5, cycle_decay=0.8, cycle_limit=4, lr_min=0.001),
    ),
    Peer(  # the decay ends at iteration 20 of 30, then min_lr holds
        "nanoGPT get_lr: warmup_iters=4, lr_decay_iters=20, min_lr=learning_rate/10 (max_iters=30)",
        Cosine(warmup=Warmup(duration=4, start_factor=1 / 5), decay_end=20, min_lr=0.1),
        30,
        lambda it, lr: nanogpt(it, lr, warmup_iters=4, lr_decay_iters=20),
    ),
    Peer(
        "ConstantLR(opt, factor=1/3, total_iters=5)",
        Constant(warmup=Warmup(duration=5, shape="constant", start_factor=1 / 3)),
        12,
        lambda s, lr: torch_constant_lr(s, lr, factor=1 / 3, total_iters=5),
    ),
    Peer(
        "CyclicLR(opt, base_lr=[0.01, 0.05], max_lr=[0.1, 0.5], step_size_up=4, step_size_down=6)",
        Cyclic(up=4, down=6, min_lr=0.1, cycle_momentum=True),
        30,
        lambda s, lr: torch_cyclic(s, lr / 10, lr, up=4, down=6, mode="triangular"),
        lambda s: torch_cyclic_momentum(s, up=4, down=6, mode="triangular"),
    ),
    Peer(
        "CyclicLR(opt, base_lr=0.004, max_lr=[0.1, 0.5], step_size_up=3, mode='triangular2', base_momentum=0.85, "
        "max_momentum=0.95)",
        Cyclic(up=3, mode="triangular2", min_lr_abs=0.004, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95),
        26,
        lambda s, lr: torch_cyclic(s, 0.004, lr, up=3, down=3, mode="triangular2"),
        lambda s: torch_cyclic_momentum(s, up=3, down=3, mode="triangular2", base_m=0.85, max_m=0.95),
    ),
    Peer(
        "CyclicLR(adam, base_lr=[0.02, 0.1], max_lr=[0.1, 0.5], step_size_up=5, step_size_down=3, mode='exp_range', "
        "gamma=0.97)",
        Cyclic(up=5, down=3, mode="exp_range", gamma=0.97, min_lr=0.2, cycle_momentum=True),
        30,
        lambda s, lr: torch_cyclic(s, lr / 5, lr, up=5, down=3, mode="exp_range", gamma=0.97),
        lambda s: torch_cyclic_momentum(s, up=5, down=3, mode="exp_range", gamma=0.97),
        optimizer="adamw",
    ),
]


def fit(root: Path, peer: Peer) -> tuple[Recorder, Trainer]:
    recorder = Recorder()
    trainer = cpu_trainer(
        root, max_epochs=-1, max_steps=peer.steps, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[recorder]
    )
    trainer.fit(PeerModel(peer.spec, peer.optimizer))
    return recorder, trainer


def max_error(peer: Peer, recorder: Recorder) -> float:
    """The largest |lit_optim - peer| over every step and group (lr), and momentum when the peer cycles it."""
    errors = [abs(got - peer.lr(s, lr)) for s, row in enumerate(recorder.lrs) for got, lr in zip(row, LRS, strict=True)]
    if peer.momentum is not None:
        errors += [abs(got - peer.momentum(s)) for s, row in enumerate(recorder.momenta) for got in row]
    return max(errors)


@pytest.mark.parametrize("peer", PEERS, ids=[p.call.split("(")[0].split(" ")[0] + f"-{i}" for i, p in enumerate(PEERS)])
def test_peer_schedule_through_the_trainer(tmp_path: Path, peer: Peer) -> None:
    recorder, trainer = fit(tmp_path, peer)
    assert len(recorder.lrs) == trainer.global_step == peer.steps
    assert max_error(peer, recorder) <= TOLERANCE
    curve = preview_schedule(peer.spec, trainer, base_lrs={"body": LRS[0], "head": LRS[1]})
    assert list(curve.lrs) == recorder.lrs  # the preview is what the Trainer used, float for float
    if peer.momentum is not None:
        assert curve.momenta == tuple(m for m, _ in recorder.momenta)
