"""Teacher-matching time grids: place a solver's N steps where its result best matches a reference.

At 5-10 model evaluations the placement of the steps matters as much as the solver. Hand-made grids
(uniform log-SNR, Karras, AYS) are compromises across models; a grid fitted to one model and one solver
on a few samples does better on that model. :func:`fit_grid` minimises, over the N - 1 free grid points,

    E(grid) = RMS(solve(x_T; grid) - x_ref) / RMS(x_ref)

on calibration samples x_T whose reference endpoints x_ref come from a teacher (the exact ODE solution of
an analytic model, or a many-step run of a real one) -- the teacher-matching idea of GITS (Chen et al.
2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", Sec. 4), with the actual solver
(multistep, any order) inside the objective instead of GITS's first-order local costs, and a derivative-
free search (Nelder-Mead) since the solvers' coefficients are functions of the grid computed in float64
outside autograd.

Parametrisation: the first point is the schedule's start, the last the clean end (sigma = 0, or the
schedule's ``t_min`` with ``final="min"``). The free points are written in log-SNR as
lambda_k = lambda_start + (lambda_end - lambda_start) * (w_1 + ... + w_k) with w = softmax(u), u in R^N,
so every u gives a valid, strictly increasing grid.

The result, :class:`CalibratedGrid`, records the fitted grid as the VE noise levels sigma/alpha of its
points (a trailing 0 for the clean end). Any of our diffusers schedulers runs it with
``final_sigmas_type=fit.final_sigmas_type`` in its config and ``set_timesteps(sigmas=fit.evaluation_sigmas)``;
:meth:`CalibratedGrid.grid` gives it to :func:`samplers.sample`. It also
records what the fit cost (model evaluations and seconds) and the errors before and after, and saves to /
loads from JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .denoiser import Denoiser
from .grids import TimeGrid
from .schedules import NoiseSchedule
from .solvers import Solver, sample

__all__ = ["CalibratedGrid", "fit_grid", "relative_rms"]


def relative_rms(x: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS(x - reference) / RMS(reference) (inf when x is not finite)."""
    error = ((x - reference) ** 2).mean().sqrt() / (reference**2).mean().sqrt()
    return float(error) if torch.isfinite(error) else math.inf


@dataclass(frozen=True)
class CalibratedGrid:
    """A fitted grid and what fitting it cost.

    Attributes:
        sigmas: VE noise levels sigma/alpha of the N + 1 grid points, decreasing (a trailing 0: the clean
            end); what ``set_timesteps(sigmas=...)`` of our schedulers takes.
        solver: the name of the solver the grid was fitted for.
        initial_error, error: the objective on the calibration samples at the initial and the fitted grid.
        nfe: model evaluations the fit spent (calibration runs only; the reference is the caller's).
        seconds: wall time of the fit.
        evaluations: objective evaluations (solver runs).
        rules: per-step rules (keyword dicts of :class:`~samplers.solvers.Solver`) when the schedule was
            searched too (:func:`samplers.solver_search.search_solver_schedule`); empty for a grid alone.
        linear_multistep: ``{"prediction": ..., "weights": [[a_i, b_i0, ...], ...]}`` of a bespoke linear
            multistep solver fitted on this grid (:mod:`samplers.bespoke`), or None.
    """

    sigmas: tuple[float, ...]
    solver: str
    initial_error: float
    error: float
    nfe: int
    seconds: float
    evaluations: int
    rules: tuple[dict, ...] = ()
    linear_multistep: dict | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def evaluation_sigmas(self) -> list[float]:
        """The N levels the model is evaluated at (all but the final one): ``set_timesteps(sigmas=...)``."""
        return list(self.sigmas[:-1])

    @property
    def final_sigmas_type(self) -> str:
        """The scheduler config that ends the run where the grid ends: ``"zero"`` or ``"sigma_min"``."""
        return "zero" if self.sigmas[-1] == 0 else "sigma_min"

    def grid(self, schedule: NoiseSchedule) -> TimeGrid:
        """The grid on ``schedule`` (the one it was fitted on)."""
        levels = torch.tensor(self.sigmas, dtype=torch.float64)
        clean = bool(levels[-1] == 0)
        finite = levels[:-1] if clean else levels
        t = schedule.t_of_lambda(-torch.log(finite)).clamp(schedule.t_min, schedule.t_max)
        if clean:
            t = torch.cat([t, torch.tensor([schedule.t_min], dtype=torch.float64)])
        return TimeGrid.from_times(schedule, t, final="zero" if clean else "min")

    def scheduler_config(self) -> dict:
        """Config keys that make our diffusers schedulers run this grid (and ``rules``, for
        :class:`~samplers.schedulers.ExponentialIntegratorScheduler`, when there are any)::

            config = pipe.scheduler.config
            sched = ExponentialIntegratorScheduler.from_config(config, **fit.scheduler_config())
            sched.set_timesteps(fit.steps)

        The levels go in as an Align-Your-Steps list, so ``set_timesteps(n)`` with another n interpolates
        them log-linearly (AYS); with n = ``steps`` the run is this grid exactly."""
        clean = self.final_sigmas_type == "zero"
        config = {
            "time_grid": "ays",
            "ays_sigmas": self.evaluation_sigmas if clean else list(self.sigmas),
            "final_sigmas_type": self.final_sigmas_type,
        }
        if self.rules:
            config.update(rules=[dict(r) for r in self.rules], lower_order_final=False)
        if self.linear_multistep:
            config.update(linear_multistep=dict(self.linear_multistep))
        return config

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibratedGrid:
        data = json.loads(Path(path).read_text())
        data["sigmas"] = tuple(float(s) for s in data["sigmas"])
        data["rules"] = tuple(dict(r) for r in data.get("rules", ()))
        fit = cls(**data)
        levels = np.asarray(fit.sigmas)
        if levels.size < 2 or not np.all(np.diff(levels) < 0) or np.any(levels < 0):
            raise ValueError(f"{path}: sigmas must be >= 2 decreasing non-negative noise levels")
        return fit


def _end_lambdas(grid: TimeGrid) -> tuple[float, float]:
    """The log-SNR at the grid's first point and at its last finite end (t_min for a grid ending at 0)."""
    lam, schedule = grid.lambdas, grid.schedule
    end = lam[-1] if math.isfinite(lam[-1]) else float(schedule.lambda_(torch.tensor(schedule.t_min)))
    return lam[0], end


def _weights_of(grid: TimeGrid, start: float, end: float) -> np.ndarray:
    """u such that softmax(u) is the grid's log-SNR increments (free points, then the end) / the span."""
    points = np.append(np.asarray(grid.lambdas[1:-1]), end)  # the free points, then the end
    increments = np.diff(np.concatenate([[start], points])) / (end - start)
    return np.log(np.clip(increments, 1e-6, None))


def _grid_of(u: np.ndarray, init: TimeGrid, start: float, end: float) -> TimeGrid:
    """The grid of parameters u: ``init``'s end points, free points at the cumulative softmax fractions."""
    schedule = init.schedule
    w = np.exp(u - u.max())
    fractions = np.cumsum(w / w.sum())[:-1]  # the N - 1 free points; the last fraction is 1 (the end)
    lam = torch.tensor(start + (end - start) * fractions, dtype=torch.float64)
    inner = schedule.t_of_lambda(lam).clamp(schedule.t_min, schedule.t_max)
    t = torch.cat([init.t[:1], inner, init.t[-1:]])
    return TimeGrid.from_times(schedule, t, final="zero" if init.ends_clean else "min")


def fit_grid(
    denoiser: Denoiser,
    solver: Solver,
    x: torch.Tensor,
    reference: torch.Tensor,
    init: TimeGrid,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    max_evaluations: int = 300,
    tolerance: float = 1e-4,
) -> CalibratedGrid:
    """Fit the free points of ``init`` (same step count, same end points) so that ``solver`` maps the
    calibration samples ``x`` (at the grid's first point) to ``reference`` (their teacher endpoints) with the
    least relative RMS error; Nelder-Mead from ``init``, at most ``max_evaluations`` solver runs, stopping
    when the simplex's errors agree to ``tolerance`` (relative). The result is never worse than ``init``.

    ``init`` must have at least 2 steps and be built on the denoiser's schedule (``init.schedule``); a grid
    ending at sigma = 0 keeps that end, one ending at ``t_min`` keeps that."""
    from scipy.optimize import minimize

    if init.steps < 2:
        raise ValueError("a grid of one step has no free point to fit")
    if init.schedule is None:
        raise ValueError("init must be built on a schedule (make_grid or TimeGrid.from_times)")
    if x.shape != reference.shape:
        raise ValueError(f"x {tuple(x.shape)} and reference {tuple(reference.shape)} must have one shape")
    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be >= 1, got {max_evaluations}")
    start, end = _end_lambdas(init)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError("init must start at a finite log-SNR (e.g. t_start=0.999 for flow matching)")
    nfe_before, clock = denoiser.nfe, time.perf_counter()
    evaluations = 0

    def error(u: np.ndarray) -> float:
        nonlocal evaluations
        evaluations += 1
        out = sample(denoiser, x, _grid_of(u, init, start, end), solver, cond=cond)
        return relative_rms(out, reference)

    u0 = _weights_of(init, start, end)
    initial = relative_rms(sample(denoiser, x, init, solver, cond=cond), reference)
    evaluations += 1
    best_u, best = None, initial
    if max_evaluations > 1:
        result = minimize(error, u0, method="Nelder-Mead",
                          options={"maxfev": max_evaluations - 1, "fatol": tolerance * initial,
                                   "xatol": 1e-4, "adaptive": True})  # fmt: skip
        if result.fun < best:
            best_u, best = result.x, float(result.fun)
    grid = init if best_u is None else _grid_of(best_u, init, start, end)
    levels = (grid.sigma / grid.alpha).tolist()
    return CalibratedGrid(
        sigmas=tuple(levels),
        solver=solver.name,
        initial_error=initial,
        error=best,
        nfe=denoiser.nfe - nfe_before,
        seconds=time.perf_counter() - clock,
        evaluations=evaluations,
    )
