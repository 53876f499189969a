"""Time grids: where a sampler evaluates the model, from noise (index 0) to data (index N).

A :class:`TimeGrid` stores, for every point, the model time ``t`` and the exact ``alpha``/``sigma`` of the
schedule there, so the last point may be the clean end sigma = 0 (lambda = +inf) even when the schedule
itself never reaches it (DDPM's sigma at t=0 is positive; diffusers calls this ``final_sigmas_type="zero"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

from .schedules import NoiseSchedule

__all__ = ["TimeGrid", "make_grid", "GRID_KINDS"]

GRID_KINDS = ("uniform_t", "uniform_lambda", "exponential", "quadratic", "karras", "ays")
Final = Literal["zero", "min"]


@dataclass(frozen=True)
class TimeGrid:
    """Grid points t_0 > t_1 > ... > t_N with alpha, sigma and lambda at each (all float64, shape (N+1,))."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    #: The schedule the grid was built on (needed for intermediate stages and t-basis rules).
    schedule: NoiseSchedule | None = field(default=None, compare=False, repr=False)
    #: Values solvers computed for steps on this grid (coefficients, singlestep stage points): they depend
    #: on the grid points and the rule only, so they are kept for the next run on the same grid.
    step_cache: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.t.shape == self.alpha.shape == self.sigma.shape) or self.t.ndim != 1:
            raise ValueError("t, alpha and sigma must be 1-D tensors of the same length")
        if self.t.numel() < 2:
            raise ValueError("a grid needs at least 2 points (1 step)")
        lam = self.lambda_
        if not torch.all(lam[1:] > lam[:-1]):
            raise ValueError("grid must go strictly from noise to data (increasing log-SNR)")

    @property
    def lambda_(self) -> torch.Tensor:
        return torch.log(self.alpha) - torch.log(self.sigma)

    @cached_property
    def lambdas(self) -> list[float]:
        """``lambda_`` as Python floats (what step rules consume)."""
        return self.lambda_.tolist()

    @cached_property
    def alpha_values(self) -> list[float]:
        return self.alpha.tolist()

    @cached_property
    def sigma_values(self) -> list[float]:
        return self.sigma.tolist()

    @property
    def steps(self) -> int:
        return self.t.numel() - 1

    @property
    def ends_clean(self) -> bool:
        """True when the last point is sigma = 0 exactly."""
        return bool(self.sigma[-1] == 0)

    @classmethod
    def from_times(
        cls, schedule: NoiseSchedule, t: Sequence[float] | torch.Tensor, final: Final = "min"
    ) -> TimeGrid:
        """An explicit list of times; with ``final="zero"`` the last time is replaced by sigma = 0."""
        t = torch.as_tensor(t, dtype=torch.float64).flatten().clone()
        alpha, sigma = schedule.alpha(t).clone(), schedule.sigma(t).clone()
        if final == "zero":
            alpha[-1], sigma[-1] = 1.0, 0.0
        elif final != "min":
            raise ValueError(f"final must be 'zero' or 'min', got {final!r}")
        return cls(t, alpha, sigma, schedule)


def _loglinear_interp(values: torch.Tensor, n: int) -> torch.Tensor:
    """Resample a decreasing positive sequence to n points, linear in log value (AYS, Sabour et al. 2024)."""
    x = torch.linspace(0, 1, values.numel(), dtype=torch.float64)
    xs = torch.linspace(0, 1, n, dtype=torch.float64)
    logv = torch.log(values.to(torch.float64))
    idx = torch.searchsorted(x, xs).clamp(1, x.numel() - 1)
    w = (xs - x[idx - 1]) / (x[idx] - x[idx - 1])
    return torch.exp(logv[idx - 1] + w * (logv[idx] - logv[idx - 1]))


def _ays_sigmas(schedule: NoiseSchedule, sigmas: Sequence[float]) -> torch.Tensor:
    """Validate published AYS noise levels against the schedule: a trailing 0 (the clean end) is dropped,
    since ``final`` decides the last point, and levels within 1% outside the schedule's range (published
    lists round) are clamped to it."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() and s[-1] == 0:
        s = s[:-1]
    if s.numel() < 2 or not torch.all(s[1:] < s[:-1]) or not torch.all(s > 0):
        raise ValueError("ays sigmas must be >= 2 strictly decreasing positive VE noise levels (sigma/alpha)")
    ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
    hi, lo = (torch.exp(-schedule.lambda_(ends))).tolist()
    if s[0] > hi * 1.01 or s[-1] < lo * 0.99:
        raise ValueError(
            f"ays sigmas span [{float(s[-1]):.4g}, {float(s[0]):.4g}] but the schedule's VE noise levels "
            f"span [{lo:.4g}, {hi:.4g}]; were they made for another schedule?"
        )
    return s.clamp(lo, hi)


def make_grid(
    schedule: NoiseSchedule,
    steps: int,
    kind: str = "uniform_lambda",
    *,
    final: Final = "zero",
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    sigmas: Sequence[float] | None = None,
) -> TimeGrid:
    """Build an (N+1)-point grid for ``steps`` = N solver steps.

    kind:
      - ``uniform_t``: uniform in t (after the schedule's warp, e.g. the SD3/Flux shift);
      - ``uniform_lambda`` / ``exponential``: uniform in log-SNR (DPM-Solver's ``logSNR``; for VE this is
        k-diffusion's exponential sigmas, the same grid);
      - ``quadratic``: t = (uniform in sqrt t)^2 (DPM-Solver's ``time_quadratic``);
      - ``karras``: sigma_i^{1/rho} uniform in the VE noise level sigma/alpha (Karras et al. 2022, eq. 5);
      - ``ays``: ``sigmas`` (VE noise levels of an Align-Your-Steps schedule) resampled log-linearly to
        ``steps`` evaluation levels (``final="zero"`` then appends sigma = 0; ``"min"`` uses steps + 1).
    final: ``"zero"`` replaces the last point by sigma = 0 exactly; ``"min"`` stops at ``t_end``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t_hi = schedule.t_max if t_start is None else float(t_start)
    t_lo = schedule.t_min if t_end is None else float(t_end)
    if not (schedule.t_min <= t_lo < t_hi <= schedule.t_max):
        raise ValueError(f"need t_min <= t_end < t_start <= t_max, got t_end={t_lo}, t_start={t_hi}")
    n = steps + 1

    def finite_lambda(t: float) -> torch.Tensor:
        lam = schedule.lambda_(torch.tensor(t, dtype=torch.float64))
        if not torch.isfinite(lam):
            raise ValueError(
                f"grid kind {kind!r} needs a finite log-SNR at t={t}; pass t_start/t_end inside the schedule "
                "(e.g. t_start=0.999 for flow matching) or use kind='uniform_t'"
            )
        return lam

    if kind == "uniform_t":
        t = schedule.warp(torch.linspace(t_hi, t_lo, n, dtype=torch.float64))
    elif kind in ("uniform_lambda", "exponential"):
        lam = torch.linspace(float(finite_lambda(t_hi)), float(finite_lambda(t_lo)), n, dtype=torch.float64)
        t = schedule.t_of_lambda(lam)
    elif kind == "quadratic":
        t = torch.linspace(t_hi**0.5, t_lo**0.5, n, dtype=torch.float64) ** 2
    elif kind == "karras":
        s_max, s_min = torch.exp(-finite_lambda(t_hi)), torch.exp(-finite_lambda(t_lo))
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = schedule.t_of_lambda(-torch.log(s))
    elif kind == "ays":
        if sigmas is None:  # the list itself is checked by _ays_sigmas
            raise ValueError("kind='ays' needs the schedule's VE noise levels in `sigmas` (>= 2 values)")
        # AYS lists are the levels the model is evaluated at; with final="zero" the clean end is appended
        levels = _loglinear_interp(_ays_sigmas(schedule, sigmas), steps if final == "zero" else n)
        t = schedule.t_of_lambda(-torch.log(levels))
        if final == "zero":
            t = torch.cat([t, torch.tensor([schedule.t_min], dtype=torch.float64)])
    else:
        raise ValueError(f"unknown grid kind {kind!r}; expected one of {GRID_KINDS} or TimeGrid.from_times")
    if kind != "ays":  # pin the end points exactly (the inverse maps are accurate to rounding only)
        ends = torch.tensor([t_hi, t_lo], dtype=torch.float64)
        t[0], t[-1] = schedule.warp(ends) if kind == "uniform_t" else ends
    return TimeGrid.from_times(schedule, t.clamp(schedule.t_min, schedule.t_max), final=final)
