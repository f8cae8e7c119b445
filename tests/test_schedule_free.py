"""Schedule-free optimizers in a Lightning run, against the `schedulefree` package's own loop (modes set by hand)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader

from lit_optim import ScheduleFreeMode
from lit_optim.optim.schedule_free import train_mode
from tests.schedule_free_reference import SFModule, assert_same_weights, fit, initial_state, reference_run

schedulefree = pytest.importorskip("schedulefree")


# ------------------------------------------------------------------ against the reference loop
@pytest.mark.parametrize(
    ("name", "cls", "kwargs"),
    [
        ("adamw_schedulefree", "AdamWScheduleFree", {"warmup_steps": 5}),
        ("sgd_schedulefree", "SGDScheduleFree", {"momentum": 0.9}),
        ("radam_schedulefree", "RAdamScheduleFree", {}),
    ],
)
def test_matches_the_reference_loop_weights_validation_losses_and_checkpoints(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path, name: str, cls: str, kwargs: dict[str, Any]
) -> None:
    module = SFModule(name, **kwargs)
    initial = initial_state(module)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer, module = fit(make_trainer, module, callbacks=[checkpoint])
    reference = reference_run(initial, 2, cls=getattr(schedulefree, cls), **kwargs)
    ref, ref_opt, ref_val, ref_train_point, ref_saved = reference

    assert any(isinstance(c, ScheduleFreeMode) for c in trainer.callbacks)  # attached by configure_optimizers
    assert trainer.global_step == 32
    assert_same_weights(module, ref)  # left in eval mode: both hold x
    optimizer = trainer.optimizers[0]
    assert train_mode(optimizer) is False
    for p, q in zip(module.parameters(), ref.parameters(), strict=True):
        assert torch.equal(optimizer.state[p]["z"], ref_opt.state[q]["z"])
    assert len(module.val_losses) == len(ref_val) == 8
    for got, want in zip(module.val_losses, ref_val, strict=True):
        assert torch.equal(got, want)
    # without the switch the run would report the train-mode point's losses, which differ
    assert all(not torch.equal(a, b) for a, b in zip(ref_val, ref_train_point, strict=True))
    for epoch, want in enumerate(ref_saved):
        saved = torch.load(tmp_path / "ckpt" / f"epoch={epoch}.ckpt", weights_only=True)["state_dict"]
        assert_same_weights(saved, want)
        loaded = SFModule.load_from_checkpoint(tmp_path / "ckpt" / f"epoch={epoch}.ckpt", map_location="cpu")
        assert_same_weights(loaded, want)


def test_gradient_accumulation_matches_thereference_run(make_trainer: Callable[..., L.Trainer]) -> None:
    module = SFModule(warmup_steps=3)
    initial = initial_state(module)
    trainer, module = fit(make_trainer, module, accumulate_grad_batches=2)
    ref, _, ref_val, _, _ = reference_run(initial, 2, accumulate=2, warmup_steps=3)
    assert trainer.global_step == 16
    assert_same_weights(module, ref)
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, ref_val, strict=True))


def test_gradient_clipping_callback_clips_the_train_mode_gradients(make_trainer: Callable[..., L.Trainer]) -> None:
    from lit_optim import GradientClipping

    module = SFModule()
    initial = initial_state(module)
    _, module = fit(make_trainer, module, callbacks=[GradientClipping(max_norm=0.05)])
    ref, _, ref_val, _, _ = reference_run(initial, 2, clip=0.05)
    unclipped, *_ = reference_run(initial, 2)
    for p, q in zip(module.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # the two clip-coefficient formulas round differently
    torch.testing.assert_close(torch.stack(module.val_losses), torch.stack(ref_val), rtol=1e-5, atol=1e-6)
    assert (ref.net[0].weight - unclipped.net[0].weight).abs().max() > 1e-3  # the clipping mattered


# ------------------------------------------------------------------ resume
def _checkpoints(folder: Path) -> list[ModelCheckpoint]:
    # one saving from a training step (train mode: the callback switches to eval for the save), one after validation
    return [
        ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=16, save_top_k=-1),
        ModelCheckpoint(dirpath=folder, filename="val-{epoch}", save_top_k=-1),
    ]


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.parametrize(
    ("ckpt_name", "sanity"), [("step=16.ckpt", 0), ("val-epoch=0.ckpt", 0), ("step=32.ckpt", 2)]
)  # a sanity check on resume validates x before the first training batch moves back to y
def test_resume_from_a_checkpoint_continues_bit_for_bit(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path, ckpt_name: str, sanity: int
) -> None:
    straight = SFModule(warmup_steps=20)  # the warmup straddles the checkpoint
    initial = initial_state(straight)
    trainer, straight = fit(make_trainer, straight, max_epochs=3, callbacks=_checkpoints(tmp_path / "a"))

    resumed = SFModule(warmup_steps=20)
    resumed.load_state_dict(initial)
    again = make_trainer(max_epochs=3, callbacks=_checkpoints(tmp_path / "b"), num_sanity_val_steps=sanity)
    again.fit(resumed, ckpt_path=tmp_path / "a" / ckpt_name)

    assert again.global_step == trainer.global_step == 48
    assert_same_weights(resumed, straight)
    opt_a, opt_b = trainer.optimizers[0], again.optimizers[0]
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        for key in ("z", "exp_avg_sq"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key])
    assert [g["k"] for g in opt_a.param_groups] == [g["k"] for g in opt_b.param_groups] == [48, 48]
    assert all(torch.equal(a, b) for a, b in zip(straight.val_losses[-4:], resumed.val_losses[-4:], strict=True))
    # the later checkpoints of both runs hold the same evaluation weights
    for name in ("step=48.ckpt", "val-epoch=2.ckpt"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / name, weights_only=True)
        assert_same_weights(a["state_dict"], b["state_dict"])


class CopyingStrategy(SingleDeviceStrategy):
    """Dumps the weights as copies (as FSDP's gathered state dict does), not views of the parameters."""

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in super().lightning_module_state_dict().items()}


@pytest.mark.parametrize("copies", [False, True], ids=["views", "copies"])
def test_checkpoints_saved_from_training_steps_hold_x_as_the_reference_saves_it(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path, copies: bool
) -> None:
    module = SFModule()
    initial = initial_state(module)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=5, save_top_k=-1)
    strategy = CopyingStrategy(torch.device("cpu")) if copies else "auto"
    fit(make_trainer, module, callbacks=[checkpoint], strategy=strategy)
    ref, _, ref_val, _, ref_saved = reference_run(initial, 2, save_every=5)
    assert_same_weights(module, ref)
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, ref_val, strict=True))
    assert len(ref_saved) == 6
    for index, want in enumerate(ref_saved):
        saved = torch.load(tmp_path / f"step={5 * (index + 1)}.ckpt", weights_only=True)
        assert_same_weights(saved["state_dict"], want)
        # the optimizer state says eval mode, so resuming recomputes y = x + (1 - beta1)(z - x) with train()
        assert [g["train_mode"] for g in saved["optimizer_states"][0]["param_groups"]] == [False, False]


# ------------------------------------------------------------------ validate / test / predict
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`:UserWarning")  # validate on a new Trainer
def test_validate_test_and_predict_after_fit_and_without_fit_use_x(
    make_trainer: Callable[..., L.Trainer], tmp_path: Path
) -> None:
    module = SFModule()
    initial = initial_state(module)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last-{epoch}")
    trainer, module = fit(make_trainer, module, callbacks=[checkpoint])
    _, _, ref_val, _, _ = reference_run(initial, 2)
    final = ref_val[-4:]

    optimizer = trainer.optimizers[0]
    x = next(iter(module.val_dataloader()))[0]
    at_x = module(x)
    module.val_losses.clear()
    trainer.validate(module, verbose=False)  # same Trainer, after fit
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses, final, strict=True))
    # a user about to train further by hand switches to y; each loop still evaluates x (up to the rounding of the
    # round trip x -> y -> x), not y
    optimizer.train()
    assert (module(x) - at_x).abs().max() > 1e-3
    trainer.test(module, verbose=False)
    torch.testing.assert_close(torch.stack(module.test_losses), torch.stack(final), rtol=1e-6, atol=0)
    optimizer.train()
    (predicted,) = trainer.predict(module, DataLoader([x], batch_size=None))  # type: ignore[misc]
    torch.testing.assert_close(predicted, at_x, rtol=1e-6, atol=1e-7)
    assert train_mode(optimizer) is False

    fresh = SFModule()  # without fit: a new Trainer restores the checkpoint's weights, which are x
    make_trainer().validate(fresh, ckpt_path=checkpoint.best_model_path, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.val_losses, final, strict=True))
    loaded = SFModule.load_from_checkpoint(checkpoint.best_model_path)
    make_trainer().test(loaded, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.test_losses, final, strict=True))


def test_sanity_check_validation_and_val_check_interval_switch_both_ways(
    make_trainer: Callable[..., L.Trainer],
) -> None:
    module = SFModule()
    initial = initial_state(module)
    # sanity check before any step: eval() and train() on a fresh optimizer move nothing; then validation every
    # 4 batches, in the middle of the epoch: eval() for it and train() at the next batch
    fit(make_trainer, module, max_epochs=2, num_sanity_val_steps=2, val_check_interval=4)
    ref, _, ref_val, _, _ = reference_run(initial, 2, validate_every=4)
    assert_same_weights(module, ref)
    assert len(ref_val) == 32
    assert all(torch.equal(a, b) for a, b in zip(module.val_losses[2:], ref_val, strict=True))
