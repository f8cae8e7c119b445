"""The maths of an LR range test, without a Trainer: the sweep, the smoothed loss, the stop rule, the suggestion.

The loop that drives a Trainer through the sweep is :class:`lit_optim.callbacks.LRRangeTest`; everything here
is a pure function of its arguments, so a curve can be re-read with another rule or checked against a formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lit_optim._validation import check_choice, check_positive, check_positive_int
from lit_optim.schedules._output import new_figure, save_png, write_csv

__all__ = [
    "SUGGESTION_RULES",
    "LRRangeResult",
    "LossTracker",
    "SuggestionRule",
    "SweepMode",
    "default_skips",
    "suggest_lr",
    "sweep_lr",
]

SweepMode = Literal["exponential", "linear"]
SuggestionRule = Literal["minimum", "steepest", "valley"]

#: The suggestion rules :func:`suggest_lr` knows.
SUGGESTION_RULES: tuple[str, ...] = ("minimum", "steepest", "valley")


def sweep_lr(
    step: int, num_steps: int, min_lr: float, max_lr: float, mode: SweepMode = "exponential", *, lightning: bool = False
) -> float:
    r"""The base lr of sweep step ``step`` (0-based) of ``num_steps``.

    .. math::
        \text{exponential: } lr_k = lr_{min} (lr_{max}/lr_{min})^{k/(N-1)}, \qquad
        \text{linear: } lr_k = lr_{min} + \tfrac{k}{N-1}(lr_{max} - lr_{min})

    so the first step uses ``min_lr`` and the last ``max_lr``. With ``lightning=True`` the points are placed as
    Lightning's ``Tuner.lr_find`` places them: step 0 uses ``min_lr`` and step *k* >= 1 uses the formula with
    :math:`(k+1)/N` in place of :math:`k/(N-1)` (its scheduler skips the point :math:`1/N`).

    Examples:
        >>> [sweep_lr(k, 3, 1e-4, 1e-2) for k in range(3)]
        [0.0001, 0.001, 0.01]
        >>> [round(sweep_lr(k, 5, 0.0, 1.0, "linear"), 2) for k in range(5)]
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if lightning:
        if step == 0:
            return min_lr
        r = (step + 1) / num_steps
    else:
        r = step / (num_steps - 1)
    if mode == "linear":
        return min_lr + r * (max_lr - min_lr)
    return min_lr * (max_lr / min_lr) ** r


@dataclass
class LossTracker:
    r"""The smoothed loss and the divergence rule of a range test, fed one raw loss per sweep step.

    .. math::
        a_k = \beta a_{k-1} + (1 - \beta)\,\ell_k,\quad a_{-1} = 0, \qquad s_k = a_k / (1 - \beta^{k+1})

    (a bias-corrected exponential average, as fastai's). The test stops at step *k* >= 1 when
    :math:`s_k > \text{threshold} \cdot \min_{j<k} s_j`, or at any step whose raw loss is not finite. When that
    best is <= 0 (a loss that can be negative) it stops when :math:`s_k - b > (\text{threshold} - 1)\,|b|`
    instead, :math:`b` the best (the same rule written for any sign).
    With ``lightning=True`` the correction is :math:`1 - \beta^{k+2}`, as ``Tuner.lr_find`` computes it
    from a fresh Trainer (it counts the step just taken).

    Examples:
        >>> tracker = LossTracker(beta=0.5)
        >>> [tracker.add(loss) for loss in (1.0, 1.0, 10.0)], tracker.smoothed
        ([False, False, True], [1.0, 1.0, 6.142857142857143])
    """

    beta: float = 0.98
    threshold: float | None = 4.0
    lightning: bool = False
    smoothed: list[float] = field(default_factory=list)
    _average: float = 0.0
    _best: float = 0.0

    def add(self, loss: float) -> bool:
        """Record the raw loss of the next step; return whether the test should stop after it."""
        k = len(self.smoothed)
        self._average = self.beta * self._average + (1 - self.beta) * loss
        value = self._average / (1 - self.beta ** (k + 2 if self.lightning else k + 1))
        diverged = False
        if self.threshold is not None and k >= 1:
            best = self._best
            # a loss that can be negative (a log-likelihood): "grew by (threshold - 1) times its size" instead
            diverged = value > self.threshold * best if best > 0 else value - best > (self.threshold - 1) * -best
        stop = diverged or not math.isfinite(loss)
        if k == 0 or value < self._best:
            self._best = value
        self.smoothed.append(value)
        return stop


def default_skips(rule: str, num_steps: int) -> tuple[int, int]:
    """The points :func:`suggest_lr` ignores at the start and end of a curve by default.

    ``steepest`` skips 10 and 1 (Lightning's ``suggestion()``), ``valley`` and ``minimum`` skip
    ``num_steps // 10`` and 5 (fastai's ``lr_find``).

    Examples:
        >>> default_skips("steepest", 100), default_skips("valley", 100)
        ((10, 1), (10, 5))
    """
    return (10, 1) if rule == "steepest" else (num_steps // 10, 5)


def suggest_lr(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: SuggestionRule = "steepest",
    skip_begin: int = 10,
    skip_end: int = 1,
    *,
    float32: bool = False,
) -> tuple[int, float] | None:
    """The suggested lr of a range-test curve and the index of the point it comes from.

    Points ``[skip_begin, len - skip_end)`` with a finite loss are considered; ``None`` when too few remain
    (2 for ``steepest``, 1 otherwise).

    - ``steepest``: the point where ``d loss / d lr`` is most negative, the gradient taken by
      ``torch.gradient`` over the (non-uniform) lr spacing, as Lightning's ``suggestion()``
      (``float32=True`` computes in float32, exactly as Lightning does).
    - ``valley`` (fastai): the longest strictly decreasing run of losses (a longest decreasing subsequence
      ending at index *e* with length *L*, the earliest such *e*); the lr at ``e - L + L // 3 + L // 6``,
      i.e. about halfway down that valley (never before the first point).
    - ``minimum`` (fastai): a tenth of the lr at the lowest loss.

    Raises:
        ValueError: an unknown rule, lists of different lengths, or negative skips.

    Examples:
        >>> lrs = [k / 8 for k in range(1, 7)]
        >>> losses = [1.0, 0.99, 0.9, 0.5, 0.45, 3.0]
        >>> suggest_lr(lrs, losses, "steepest", skip_begin=0, skip_end=0)
        (2, 0.375)
        >>> suggest_lr(lrs, losses, "minimum", skip_begin=0, skip_end=0)
        (4, 0.0625)
    """
    check_choice("rule", rule, SUGGESTION_RULES)
    if len(lrs) != len(losses):
        raise ValueError(f"`lrs` and `losses` must have the same length, got {len(lrs)} and {len(losses)}.")
    for name, value in (("skip_begin", skip_begin), ("skip_end", skip_end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
    kept = [i for i in range(skip_begin, len(lrs) - skip_end) if math.isfinite(losses[i])]
    if len(kept) < (2 if rule == "steepest" else 1):
        return None
    if rule == "minimum":
        best = min(kept, key=lambda i: losses[i])
        return best, lrs[best] / 10
    if rule == "valley":
        best = kept[_valley_position([losses[i] for i in kept])]
        return best, lrs[best]
    dtype = torch.float32 if float32 else torch.float64
    x = torch.tensor([lrs[i] for i in kept], dtype=dtype)
    y = torch.tensor([losses[i] for i in kept], dtype=dtype)
    slope = torch.gradient(y, spacing=[x])[0]
    best = kept[int(torch.argmin(slope))]
    return best, lrs[best]


def _valley_position(losses: Sequence[float]) -> int:
    # length of the longest strictly decreasing subsequence ending at each point
    length = [1] * len(losses)
    for i in range(1, len(losses)):
        length[i] = 1 + max((length[j] for j in range(i) if losses[i] < losses[j]), default=0)
    longest = max(length)
    end = length.index(longest)
    # fastai's index; clamped at 0 where its formula reaches -1 (a valley of 2 points starting at the first)
    return max(0, end - longest + longest // 3 + longest // 6)


@dataclass(frozen=True)
class LRRangeResult:
    """What an LR range test measured: per sweep step the base lr, the raw and the smoothed loss.

    Every param group ran at ``base lr * ratios[name]`` (its ratio to the base lr when the test started), so
    :meth:`group_lrs` turns the suggested base lr into each group's lr.

    Attributes:
        lrs: the base lr of each step taken.
        losses: the smoothed loss after each step (what the suggestion reads).
        raw_losses: the loss of each step (averaged over its accumulated batches and over ranks).
        ratios: each param group's lr over the base lr (groups named ``name`` or ``<optimizer>/<index>``).
        base_lr: the base lr before the test (``lr`` of :func:`lit_optim.configure_optimizers`, or the largest
            group lr for groups not built by lit_optim).
        rule: the suggestion rule; ``suggestion``/``suggestion_index``: its answer (``None`` without one).
        stopped_early: the loss diverged before the last step.
        mode: ``"exponential"`` or ``"linear"`` (the plot's x scale).
        batch_scale: the run's ``lr_scaling`` factor (its base lr over the configured ``lr``; 1.0 without scaling).

    Examples:
        >>> result = LRRangeResult((1e-3, 1e-2), (1.0, 0.5), (1.0, 0.5), {"decay": 1.0}, 1e-3, "minimum", 1e-3, 1)
        >>> result.group_lrs()
        {'decay': 0.001}
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    raw_losses: tuple[float, ...]
    ratios: dict[str, float]
    base_lr: float
    rule: str
    suggestion: float | None
    suggestion_index: int | None
    stopped_early: bool = False
    mode: str = "exponential"
    batch_scale: float = 1.0

    @property
    def lr_to_configure(self) -> float | None:
        """The ``lr`` to give ``configure_optimizers`` (``hparams["lr"]``) for the suggestion.

        It is the suggestion divided by :attr:`batch_scale`, since ``lr_scaling`` multiplies the configured lr
        again; the suggestion itself without ``lr_scaling``. ``None`` without a suggestion.
        """
        return None if self.suggestion is None else self.suggestion / self.batch_scale

    def group_lrs(self, base_lr: float | None = None) -> dict[str, float]:
        """Each group's lr for a base lr (default: the suggestion).

        Raises:
            ValueError: no base lr given and the test made no suggestion.
        """
        lr = self.suggestion if base_lr is None else check_positive("base_lr", base_lr)
        if lr is None:
            raise ValueError("The range test made no suggestion (too few finite points); pass `base_lr`.")
        return {name: lr * ratio for name, ratio in self.ratios.items()}

    def table(self, max_rows: int | None = 25) -> str:
        """The curve as an aligned text table (evenly spaced rows, first, last and suggested step included).

        Raises:
            ValueError: ``max_rows`` below 2.
        """
        if max_rows is not None:
            check_positive_int("max_rows", max_rows)
            if max_rows < 2:
                raise ValueError(f"`max_rows` must be None or an int >= 2 (the first and last step), got {max_rows}.")
        n = len(self.lrs)
        rows = set(range(n)) if max_rows is None or n <= max_rows else {
            round(i * (n - 1) / (max_rows - 1)) for i in range(max_rows)
        }
        if self.suggestion_index is not None:
            rows.add(self.suggestion_index)
        lines = [f"{'step':>5}  {'base lr':<12}  {'loss':<12}  smoothed"]
        for k in sorted(rows):
            mark = "  <- suggestion" if k == self.suggestion_index else ""
            lines.append(f"{k:>5}  {self.lrs[k]:<12.6g}  {self.raw_losses[k]:<12.6g}  {self.losses[k]:.6g}{mark}")
        if self.suggestion is None:
            lines.append(f"rule {self.rule!r}: no suggestion (too few finite points)")
        else:
            groups = ", ".join(f"{name}={lr:.6g}" for name, lr in self.group_lrs().items())
            base = f"base lr {self.suggestion:.6g} (was {self.base_lr:.6g})"
            lines.append(f"rule {self.rule!r}: {base}; groups: {groups}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_csv(self, path: str | Path) -> Path:
        """Write ``step,lr,loss,smoothed_loss`` rows (full precision) to ``path`` and return it."""
        rows = zip(self.lrs, self.raw_losses, self.losses, strict=True)
        return write_csv(path, ["lr", "loss", "smoothed_loss"], rows)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Save smoothed loss vs base lr as a PNG, the suggestion marked, and return ``path``. Needs the ``plot`` extra.

        Raises:
            ImportError: matplotlib is not installed.
        """
        fig = new_figure("LRRangeResult.plot", figsize=(7, 3.6))
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.raw_losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.losses, linewidth=1.6, label="smoothed loss")
        if self.suggestion_index is not None and self.suggestion is not None:
            k = self.suggestion_index
            ax.plot([self.lrs[k]], [self.losses[k]], "o", color="red", markersize=8)
            ax.axvline(self.suggestion, color="red", linewidth=0.8, linestyle="--",
                       label=f"{self.rule}: {self.suggestion:.3g}")
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("base learning rate")
        ax.set_ylabel("loss")
        ax.set_title(title or "LR range test")
        ax.legend(loc="best", frameon=False)
        ax.grid(alpha=0.3)
        return save_png(fig, path)
