r"""``Cyclic``: triangular cycles between a floor and each group's lr (torch's ``CyclicLR``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

from lit_optim._validation import check_bool, check_choice, check_ratio
from lit_optim.schedules._anneal import AnnealedSchedule
from lit_optim.schedules.base import Warmup, steps_of
from lit_optim.schedules.durations import Duration, DurationLike

__all__ = ["Cyclic", "CyclicMode"]

CyclicMode = Literal["triangular", "triangular2", "exp_range"]


@dataclass(frozen=True, kw_only=True)
class Cyclic(AnnealedSchedule):
    r"""Cycles up from the floor to each group's lr and back (Smith's cyclical learning rates, torch's ``CyclicLR``).

    Each group's lr is the top of the cycle (torch's ``max_lr``); the floor is ``min_lr`` (a ratio, torch's
    ``base_lr / max_lr``) or ``min_lr_abs`` (torch's ``base_lr`` as one absolute lr). With :math:`U` ``up`` and
    :math:`D` ``down`` steps, :math:`L = U + D`, cycle :math:`n = \lfloor 1 + s / L \rfloor`,
    :math:`x = 1 + s / L - n`, the triangle :math:`t = x L / U` while :math:`x \le U / L`, else
    :math:`(x - 1) L / (U - L)`:

    .. math::
        f(s) = m + (1 - m)\,t\,\sigma, \quad \sigma_\text{triangular} = 1, \quad
        \sigma_\text{triangular2} = 2^{1 - n}, \quad \sigma_\text{exp\_range} = \gamma^{s}

    With ``cycle_momentum``, momentum (or Adam's beta1) moves inversely, as absolute values:
    :math:`\mu = \mu_\max - (\mu_\max - \mu_\text{base})\,t\,\sigma`.

    Args:
        up: steps :math:`U` from the floor to the top (a duration; torch's ``step_size_up``).
        down: steps :math:`D` from the top back to the floor; ``None`` means ``up`` (torch's ``step_size_down``).
        mode: ``"triangular"``, ``"triangular2"`` (each cycle's height halves) or ``"exp_range"``
            (the height scales by :math:`\gamma^s`).
        gamma: :math:`\gamma` of ``"exp_range"``, in ``(0, 1]``.
        cycle_momentum: also set ``momentum``/``betas[0]`` each step.
        base_momentum: momentum at the top of the lr, in ``(0, 1]``.
        max_momentum: momentum at the floor of the lr, in ``(0, 1]``.
        warmup: a :class:`Warmup` or its duration; the cycles start after it.
        min_lr: the floor as a ratio of each group's lr.
        min_lr_abs: the floor as one absolute lr for every group, instead of ``min_lr``.

    Examples:
        >>> s = Cyclic(up=2, mode="triangular2", min_lr=0.2)
        >>> [round(s.factor(i, 10), 4) for i in range(9)]
        [0.2, 0.6, 1.0, 0.6, 0.2, 0.4, 0.6, 0.4, 0.2]
    """

    _durations = ("up", "down")
    _needs_total = False
    up: DurationLike = 2000
    down: DurationLike | None = None
    mode: CyclicMode = "triangular"
    gamma: float = 1.0
    cycle_momentum: bool = False
    base_momentum: float = 0.8
    max_momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, ["exp_range", "triangular", "triangular2"])
        check_ratio("gamma", self.gamma)
        if self.gamma != 1.0 and self.mode != "exp_range":
            raise ValueError(
                f"`gamma` scales mode 'exp_range' only; with mode={self.mode!r} it would be ignored "
                f"(got gamma={self.gamma!r}). Use mode='exp_range' or leave `gamma` at 1.0."
            )
        check_bool("cycle_momentum", self.cycle_momentum)
        check_ratio("base_momentum", self.base_momentum)
        check_ratio("max_momentum", self.max_momentum)

    def _height(self, step: int, run_steps: int) -> float:
        r""":math:`t\,\sigma` at ``step`` counted from the first cycle's start."""
        up = steps_of(cast(Duration, self.up), run_steps)
        down = up if self.down is None else steps_of(cast(Duration, self.down), run_steps)
        size = up + down
        cycle = math.floor(1 + step / size)
        x = 1.0 + step / size - cycle
        ratio = up / size
        t = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == "triangular":
            return t
        if self.mode == "triangular2":
            return t * (1 / (2.0 ** (cycle - 1)))
        return t * self.gamma**step

    def _shape(self, step: int, steps: int, run_steps: int) -> tuple[float, float]:
        return 1.0, self._height(step, run_steps)

    def momentum(self, step: int, total_steps: int) -> float | None:
        """Momentum/beta1 at ``step`` when ``cycle_momentum`` (``max_momentum`` during a warmup), else ``None``."""
        if not self.cycle_momentum:
            return None
        step = min(step, total_steps)
        warmup = cast("Warmup | None", self.warmup)
        w = 0 if warmup is None else steps_of(cast(Duration, warmup.duration), total_steps)
        if step < w:
            return self.max_momentum
        hi = self.max_momentum
        return hi - (hi - self.base_momentum) * self._height(step - w, total_steps)
