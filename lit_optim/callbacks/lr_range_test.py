"""``LRRangeTest``: sweep the base lr before training, every param group keeping its ratio, then put everything back."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_optim._validation import check_choice, check_positive, check_positive_int
from lit_optim.callbacks._range_groups import (
    apply_base_lr,
    base_and_ratios,
    batch_scaling,
    check_appliable,
    sweep_groups,
)
from lit_optim.callbacks._snapshot import TrainingSnapshot, swap_back, swap_in
from lit_optim.optim.schedule_free import has_train_eval_modes, set_mode
from lit_optim.schedules.lr_range import (
    SUGGESTION_RULES,
    LossTracker,
    LRRangeResult,
    SuggestionRule,
    SweepMode,
    default_skips,
    suggest_lr,
    sweep_lr,
)

__all__ = ["LRRangeTest"]


class LRRangeTest(Callback):
    r"""Run an LR range test when fitting starts: sweep the base lr, keep every group's ratio, suggest a base lr.

    For ``num_steps`` optimizer steps the base lr moves from ``min_lr`` to ``max_lr``
    (:func:`~lit_optim.schedules.lr_range.sweep_lr`) and every param group of every optimizer runs at
    ``base lr * ratio``, its ratio to the base lr when the test starts: per-module lrs, layer-wise decay and
    the groups of several optimizers keep their proportions (Lightning's ``Tuner.lr_find`` sets every group to
    the same value). The base lr is the ``lr`` given to :func:`lit_optim.configure_optimizers` when every group
    carries ``applied_lr_scale`` (lit_optim's groups), else the largest group lr (plain groups). A group's lr is read
    from ``initial_lr`` when a scheduler set one (a warmup starting at 0 does not zero the ratios).

    Each sweep step is one optimizer step: with gradient accumulation its loss is the mean over the accumulated
    batches, and under DDP the mean over ranks, so every rank records the same curve, stops at the same step
    (the decision is broadcast) and gets the same suggestion. The loss is smoothed and the test stops when it
    diverges (:class:`~lit_optim.schedules.lr_range.LossTracker`); the suggestion follows ``rule``
    (:func:`~lit_optim.schedules.lr_range.suggest_lr`). Afterwards weights, gradients, buffers, optimizer and
    scheduler state, the AMP scaler, the RNGs and the loop progress are restored bit for bit, and the run
    starts as if the test had not happened, except with the suggested lr when ``apply=True``.

    During the sweep no other callback runs and nothing is logged (the Trainer's own ``gradient_clip_val``
    applies; a :class:`~lit_optim.callbacks.GradientClipping` callback does not), validation is off, and the
    sweep runs over as many epochs as it needs. The module's ``on_train_start``/``on_train_end`` hooks run
    for the sweep too. A schedule-free optimizer (one with ``train()``/``eval()``) sweeps in train mode with its own
    ``warmup_steps`` suspended, so each step runs at the swept lr; its mode and warmup come back with its state.
    ``training_step`` must return the loss. Each step reads the loss on the host (one sync
    per optimizer step, during the test only). The test is skipped with a warning under ``fast_dev_run`` and
    when resuming from a checkpoint (the checkpoint's lr wins).

    Args:
        min_lr: first base lr of the sweep (> 0).
        max_lr: last base lr (> ``min_lr``).
        num_steps: optimizer steps of the sweep (enough to leave points after the rule's skips).
        mode: ``"exponential"`` or ``"linear"`` spacing.
        rule: the suggestion rule: ``"valley"`` (fastai's default, robust on smooth and noisy curves),
            ``"steepest"`` (Lightning's: steepest slope over a linear lr axis, which favours small lrs on smooth
            curves) or ``"minimum"`` (fastai's: a tenth of the lr at the lowest loss).
        early_stop_threshold: stop when the smoothed loss exceeds this multiple (> 1) of its best; ``None`` never
            stops.
        beta: smoothing of the loss, in [0, 1).
        skip_begin: points the rule ignores at the start; ``None`` takes the rule's default
            (:func:`~lit_optim.schedules.lr_range.default_skips`).
        skip_end: points the rule ignores at the end; ``None`` takes the rule's default.
        apply: set the suggested base lr (every group at its ratio, ``ScheduleLR`` base lrs included) before
            training. Needs no scheduler or lit_optim's ``ScheduleLR``; with another scheduler, set ``apply=False``
            and use ``result.suggestion`` yourself. When ``hparams["lr"]`` is the lr the groups were built from
            (:class:`~lit_optim.OptimizerMixin`), it is set to ``result.lr_to_configure`` (the suggestion, divided
            by the ``lr_scaling`` factor when there is one), so the checkpoint's hparams rebuild the run's lr.
        plot_path: save the curve as a PNG there (``plot`` extra), on rank 0.
        match_lightning: place the sweep points and correct the smoothing as ``Tuner.lr_find`` does, so that on a
            single group the curve and, with ``rule="steepest"``, the suggestion equal Lightning's exactly.

    Attributes:
        result: the :class:`~lit_optim.schedules.lr_range.LRRangeResult` of the last test (``None`` before).

    Raises:
        ValueError: a bad setting (upside-down range, too few steps for the rule's skips, unknown mode or rule).

    Examples:
        >>> test = LRRangeTest(min_lr=1e-6, max_lr=1.0, num_steps=50, rule="valley")
        >>> test.result is None
        True
        >>> LRRangeTest(min_lr=1.0, max_lr=1e-6)
        Traceback (most recent call last):
        ...
        ValueError: The sweep goes up: `max_lr` (1e-06) must be > `min_lr` (1.0). HINT: swap them.
    """

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_steps: int = 100,
        mode: SweepMode = "exponential",
        rule: SuggestionRule = "valley",
        early_stop_threshold: float | None = 4.0,
        beta: float = 0.98,
        skip_begin: int | None = None,
        skip_end: int | None = None,
        apply: bool = True,
        plot_path: str | Path | None = None,
        match_lightning: bool = False,
    ) -> None:
        self.min_lr = check_positive("min_lr", min_lr)
        self.max_lr = check_positive("max_lr", max_lr)
        if not self.max_lr > self.min_lr:
            raise ValueError(
                f"The sweep goes up: `max_lr` ({max_lr!r}) must be > `min_lr` ({min_lr!r})."
                + (" HINT: swap them." if self.max_lr < self.min_lr else "")
            )
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.mode = check_choice("mode", mode, ("exponential", "linear"))
        self.rule = check_choice("rule", rule, SUGGESTION_RULES)
        self.early_stop_threshold = None if early_stop_threshold is None else check_positive(
            "early_stop_threshold", early_stop_threshold
        )
        if self.early_stop_threshold is not None and self.early_stop_threshold <= 1:
            raise ValueError(
                f"`early_stop_threshold` must be > 1 (the test stops once the smoothed loss exceeds that multiple of "
                f"its best, so at <= 1 it stops at its second point), got {early_stop_threshold!r}. HINT: 4.0 "
                "(Lightning's and the default), or `None` never to stop early."
            )
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"`beta` must be a number in [0, 1), got {beta!r}.")
        self.beta = float(beta)
        defaults = default_skips(self.rule, self.num_steps)
        self.skip_begin = defaults[0] if skip_begin is None else _check_count("skip_begin", skip_begin)
        self.skip_end = defaults[1] if skip_end is None else _check_count("skip_end", skip_end)
        needed = self.skip_begin + self.skip_end + (2 if self.rule == "steepest" else 1)
        if self.num_steps < max(needed, 2):
            raise ValueError(
                f"`num_steps`={num_steps!r} is too few: rule {self.rule!r} skips the first {self.skip_begin} and "
                f"last {self.skip_end} points and needs {needed - self.skip_begin - self.skip_end} more, so "
                f"`num_steps` must be >= {max(needed, 2)}. HINT: raise `num_steps` or lower `skip_begin`/`skip_end`."
            )
        if not isinstance(apply, bool) or not isinstance(match_lightning, bool):
            raise TypeError(f"`apply` and `match_lightning` must be bools, got {apply!r} and {match_lightning!r}.")
        self.apply = apply
        self.plot_path = None if plot_path is None else Path(plot_path)
        if self.plot_path is not None and importlib.util.find_spec("matplotlib") is None:
            raise ImportError(
                "LRRangeTest(plot_path=...) needs matplotlib: `pip install 'lit_optim[plot]'` (or drop `plot_path`)."
            )
        self.match_lightning = match_lightning
        self.result: LRRangeResult | None = None
        self._loaded_state: dict[str, Any] = {}
        self._exit_after = False  # set by lit_optim.find_lr: stop the fit once the test is done

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(trainer, "fast_dev_run", False):
            rank_zero_warn("LRRangeTest skipped: `fast_dev_run` is on.")
        elif trainer.ckpt_path is not None:
            rank_zero_warn(
                f"LRRangeTest skipped: resuming from {trainer.ckpt_path!r}; the checkpoint's lrs are kept. "
                "HINT: run the test on a fresh fit."
            )
        else:
            self._run(trainer)
        if self._exit_after:
            from lightning.pytorch.utilities.exceptions import _TunerExitException

            raise _TunerExitException()

    def _run(self, trainer: Trainer) -> None:
        if self.apply:
            check_appliable(trainer)
        groups, names = sweep_groups(trainer.optimizers)
        base_lr, ratios = base_and_ratios(groups)
        configured, scale = batch_scaling(groups, base_lr)
        snapshot = TrainingSnapshot.take(trainer)
        recorder = _SweepRecorder(self, groups, ratios, trainer)
        saved = swap_in(trainer, recorder)
        try:
            trainer.fit_loop.run()
        finally:
            recorder.remove_hooks()
            swap_back(trainer, saved)
            snapshot.restore(trainer)
        answer = suggest_lr(
            recorder.lrs, recorder.tracker.smoothed, self.rule, self.skip_begin, self.skip_end,  # type: ignore[arg-type]
            float32=self.match_lightning,
        )
        result = LRRangeResult(
            lrs=tuple(recorder.lrs),
            losses=tuple(recorder.tracker.smoothed),
            raw_losses=tuple(recorder.raw),
            ratios=dict(zip(names, ratios, strict=True)),
            base_lr=base_lr,
            rule=self.rule,
            suggestion=None if answer is None else answer[1],
            suggestion_index=None if answer is None else answer[0],
            stopped_early=recorder.stopped_early,
            mode=self.mode,
            batch_scale=scale,
        )
        self.result = result = trainer.strategy.broadcast(result)  # one answer, rank 0's, everywhere
        rank_zero_info(f"LRRangeTest ({len(result.lrs)} steps{', diverged' if result.stopped_early else ''}):\n"
                       f"{result.table()}")
        if self.plot_path is not None and trainer.is_global_zero:
            result.plot(self.plot_path)
        if self.apply:
            if result.suggestion is None:
                rank_zero_warn(f"LRRangeTest: no suggestion (too few finite points); the base lr stays {base_lr!r}.")
            else:
                apply_base_lr(trainer, [result.suggestion * r for r in ratios])
                hparams = getattr(trainer.lightning_module, "hparams", None)
                noted = ""
                if isinstance(hparams, dict) and hparams.get("lr") == configured:  # the lr the groups were built from
                    hparams["lr"] = result.lr_to_configure  # so the checkpoint's hparams say what the run used
                    noted = f"; hparams['lr'] set to {result.lr_to_configure!r}"
                    fallback = hparams.get("fallback_lr")  # a hybrid's other half keeps its ratio in the hparams too
                    if isinstance(fallback, (int, float)) and not isinstance(fallback, bool) and configured:
                        hparams["fallback_lr"] = fallback * float(hparams["lr"]) / configured
                        noted += f", hparams['fallback_lr'] to {hparams['fallback_lr']!r}"
                rank_zero_info(f"LRRangeTest: base lr set to {result.suggestion!r} (was {base_lr!r}){noted}.")

    @override
    def state_dict(self) -> dict[str, Any]:
        """What the last test found (plain values, for the checkpoint's record): base lr before, suggestion, steps."""
        if self.result is None:
            return dict(self._loaded_state)  # a resumed run keeps the record of the test it skipped
        result = self.result
        return {"base_lr": result.base_lr, "suggestion": result.suggestion, "steps": len(result.lrs),
                "applied": self.apply and result.suggestion is not None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = dict(state_dict)  # a record only: a resumed run does not repeat the test

    @property
    def state_key(self) -> str:
        """Identifies the test by its sweep, so two tests can coexist."""
        return self._generate_state_key(min_lr=self.min_lr, max_lr=self.max_lr, num_steps=self.num_steps,
                                        mode=self.mode, rule=self.rule)


class _SweepRecorder(Callback):
    """Sets the swept lr before each batch and records the loss of each optimizer step."""

    def __init__(self, test: LRRangeTest, groups: list[dict[str, Any]], ratios: list[float], trainer: Trainer) -> None:
        self.test, self.groups, self.ratios = test, groups, ratios
        self.tracker = LossTracker(test.beta, test.early_stop_threshold, lightning=test.match_lightning)
        self.lrs: list[float] = []
        self.raw: list[float] = []
        self.stopped_early = False
        self._stepped = False
        self._window: torch.Tensor | None = None
        self._batches = 0
        automatic = trainer.lightning_module.automatic_optimization
        self._scale = float(trainer.accumulate_grad_batches) if automatic else 1.0  # Lightning divides the loss
        self._seen = 0
        self._max_batches = 2 * test.num_steps * trainer.accumulate_grad_batches + 50  # a sweep that never steps
        self._handles = [opt.register_step_post_hook(self._on_step) for opt in trainer.optimizers]
        for opt in trainer.optimizers:  # a schedule-free optimizer's own warmup would scale the swept lr
            if has_train_eval_modes(opt):
                for group in opt.param_groups:
                    if "warmup_steps" in group:
                        group["warmup_steps"] = 0

    def _on_step(self, *_: Any) -> None:
        self._stepped = True

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        test = self.test
        lr = sweep_lr(len(self.lrs), test.num_steps, test.min_lr, test.max_lr, test.mode,  # type: ignore[arg-type]
                      lightning=test.match_lightning)
        self._lr = lr
        set_mode(trainer.optimizers, train=True)  # no ScheduleFreeMode runs during the sweep
        for group, ratio in zip(self.groups, self.ratios, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr * ratio)
            else:
                group["lr"] = lr * ratio

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped, self._stepped = self._stepped, False
        self._seen += 1
        if self._seen > self._max_batches:
            raise ValueError(
                f"LRRangeTest saw {self._seen - 1} batches but only {len(self.lrs)} optimizer steps with a loss (of "
                f"{self.test.num_steps}): does `training_step` return None, or does the optimizer never step?"
            )
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            if stepped and not pl_module.automatic_optimization:
                raise ValueError(
                    "LRRangeTest needs the loss of each step: `training_step` must return it (a tensor or a dict "
                    f"with 'loss'), got {type(outputs).__name__}."
                )
            return  # a skipped batch (training_step returned None: Lightning skips backward): no point
        value = loss.detach().to(torch.float64) * self._scale
        self._window = value if self._window is None else self._window + value
        self._batches += 1
        if not stepped:
            return  # accumulating: the step's loss is the mean over its batches
        mean = self._window / self._batches
        self._window, self._batches = None, 0
        if trainer.world_size > 1:
            mean = trainer.strategy.reduce(mean, reduce_op="mean")
        raw = float(mean)
        self.lrs.append(self._lr)
        self.raw.append(raw)
        diverged = self.tracker.add(raw)
        done = diverged or len(self.lrs) >= self.test.num_steps
        self.stopped_early = self.stopped_early or (diverged and len(self.lrs) < self.test.num_steps)
        trainer.should_stop = bool(trainer.strategy.broadcast(done))


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
    return value
