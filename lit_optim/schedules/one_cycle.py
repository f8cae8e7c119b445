"""The one-cycle schedule (re-exported by :mod:`lit_optim.schedules`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

from lit_optim._validation import check_bool, check_choice, check_positive, check_ratio
from lit_optim.schedules.base import Schedule

__all__ = ["OneCycle"]


@dataclass(frozen=True, kw_only=True)
class OneCycle(Schedule):
    r"""One-cycle policy (Smith & Topin), with torch ``OneCycleLR``'s phases; each group's lr is its peak.

    With :math:`T` steps, start :math:`a = 1/\text{div\_factor}`, end :math:`z = a/\text{final\_div\_factor}`,
    phase ends :math:`e_1 = \text{pct\_start}\,T - 1` and :math:`e_2 = T - 1` (three phases:
    :math:`e_2 = 2\,\text{pct\_start}\,T - 2`, :math:`e_3 = T - 1`), each phase goes from its start
    value :math:`u` to its end value :math:`v` as :math:`\pi = (s - e_{j-1}) / (e_j - e_{j-1})` (with
    :math:`e_0 = 0`, clamped to 1) runs from 0 to 1:

    .. math::
        f_\text{cos} = v + (u - v)\,\frac{1 + \cos(\pi\,\pi_j)}{2}, \qquad f_\text{linear} = u + (v - u)\,\pi_j

    Two phases: :math:`a \to 1 \to z`; three phases: :math:`a \to 1 \to a \to z`. With
    ``cycle_momentum``, momentum (or Adam's beta1) moves inversely, as absolute values:
    ``max_momentum -> base_momentum -> max_momentum`` (three phases: then stays at ``max_momentum``).

    Unlike torch, ``cycle_momentum`` defaults to ``False`` (it would overwrite Adam's beta1), and stepping past
    the end holds the final value instead of raising.

    Args:
        pct_start: fraction of the run spent rising to the peak, in ``(0, 1)``.
        anneal: ``"cos"`` or ``"linear"``.
        div_factor: the start lr is ``peak / div_factor``.
        final_div_factor: the final lr is ``start / final_div_factor``.
        three_phase: go back to the start lr symmetrically before the final annihilation.
        cycle_momentum: also set ``momentum``/``betas[0]`` each step.
        base_momentum: momentum at the peak lr, in ``(0, 1]``.
        max_momentum: momentum at the start and end, in ``(0, 1]``.

    Examples:
        >>> s = OneCycle(pct_start=0.5, anneal="linear", div_factor=10.0, final_div_factor=10.0)
        >>> [round(s.factor(i, 6), 4) for i in range(6)]
        [0.1, 0.55, 1.0, 0.67, 0.34, 0.01]
    """

    pct_start: float = 0.3
    anneal: Literal["cos", "linear"] = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    cycle_momentum: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("three_phase", self.three_phase)
        check_bool("cycle_momentum", self.cycle_momentum)
        pct = check_ratio("pct_start", self.pct_start)
        if pct == 1 or (self.three_phase and pct >= 0.5):
            limit = "0.5 with `three_phase=True`" if self.three_phase else "1"
            raise ValueError(f"`pct_start` must be < {limit}, got {self.pct_start!r}.")
        check_choice("anneal", self.anneal, ["cos", "linear"])
        check_positive("div_factor", self.div_factor)
        check_positive("final_div_factor", self.final_div_factor)
        check_ratio("base_momentum", self.base_momentum)
        check_ratio("max_momentum", self.max_momentum)

    def _phases(self, total_steps: int) -> list[tuple[float, float, float, float, float]]:
        """``(end_step, start_factor, end_factor, start_momentum, end_momentum)`` of each phase."""
        a = 1.0 / self.div_factor
        z = a / self.final_div_factor
        lo, hi = self.base_momentum, self.max_momentum
        first = float(self.pct_start * total_steps) - 1
        if self.three_phase:
            second = float(2 * self.pct_start * total_steps) - 2
            return [(first, a, 1.0, hi, lo), (second, 1.0, a, lo, hi), (total_steps - 1, a, z, hi, hi)]
        return [(first, a, 1.0, hi, lo), (total_steps - 1, 1.0, z, lo, hi)]

    def _locate(self, step: int, total_steps: int) -> tuple[float, float, float, float, float]:
        """``(progress, start_factor, end_factor, start_momentum, end_momentum)`` of the phase of ``step``."""
        phases = self._phases(total_steps)
        start = 0.0
        for end, u, v, mu, mv in phases[:-1]:
            if step <= end:
                return (step - start) / (end - start), u, v, mu, mv
            start = end
        end, u, v, mu, mv = phases[-1]
        return min((step - start) / (end - start), 1.0), u, v, mu, mv

    def _anneal(self, u: float, v: float, pct: float) -> float:
        if self.anneal == "cos":
            return v + (u - v) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (v - u) * pct + u

    def factor(self, step: int, total_steps: int) -> float:
        """Multiplier of each group's initial (peak) lr after ``step`` optimizer steps of ``total_steps``."""
        pct, u, v, _, _ = self._locate(step, total_steps)
        return self._anneal(u, v, pct)

    def momentum(self, step: int, total_steps: int) -> float | None:
        """Momentum/beta1 at ``step`` when ``cycle_momentum``, else ``None``."""
        if not self.cycle_momentum:
            return None
        pct, _, _, mu, mv = self._locate(step, total_steps)
        return self._anneal(mu, mv, pct)

    def _check_fits(self, total_steps: int) -> None:
        ends = [0.0] + [end for end, *_ in self._phases(total_steps)]
        if any(b <= a for a, b in itertools.pairwise(ends)):
            raise ValueError(
                f"OneCycle(pct_start={self.pct_start!r}) leaves a phase without steps in a run of {total_steps} "
                "optimizer steps. Lengthen the run or change `pct_start`."
            )
