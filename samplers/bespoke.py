"""Bespoke linear multistep solvers: per-step weights fitted to a teacher's trajectory.

With N model evaluations on a grid t_0 > ... > t_N, every multistep sampler of this package takes steps

    x_{i+1} = a_i x_i + sum_{j <= i} b_ij m_j,        m_j = x0 (or eps) prediction at (x_j, t_j),

and an exponential integrator derives (a_i, b_ij) from the grid by polynomial interpolation of m in
log-SNR. A *bespoke* solver learns them for one model instead: Bespoke Non-Stationary solvers (Shaul et al.
2024, "Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion and Flow Models") fit the coefficients
of exactly this general linear multistep form against a many-step teacher. Here the fit is in closed form:

1. :func:`teacher_states` runs the teacher (DPM-Solver++(2M), ``substeps`` uniform log-SNR steps between
   consecutive grid points) from the calibration x_T and keeps its states x*_1, ..., x*_N at the grid points;
2. :func:`fit_linear_multistep` goes step by step: given the bespoke solver's own x_i and outputs m_0..m_i
   (it runs the model on its own trajectory, so earlier errors are seen), the weights (a_i, b_i0..b_ii)
   are the least-squares solution of x_{i+1} = x*_{i+1} over all calibration samples and dimensions
   (one scalar per term, shared by every sample and dimension: i + 2 numbers per step);
3. optionally (:func:`calibrate_linear_multistep` with ``refine_evaluations``) all weights are then polished
   together on the end-point error by Nelder-Mead, since only the end point matters (BNS train end to end).

The result runs in :func:`~samplers.solvers.sample` and in
:class:`~samplers.schedulers.ExponentialIntegratorScheduler` (config ``linear_multistep``). The weights are
tied to the grid they were fitted on (same N and points).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .calibrate import CalibratedGrid, relative_rms
from .coefficients import StepCoefficients
from .denoiser import Denoiser, DenoiserOutput
from .grids import TimeGrid, make_grid
from .solvers import DPMSolverPP, Evaluation, _combine, _evaluate, drive, sample
from .state import SolverState

__all__ = ["LinearMultistep", "teacher_states", "fit_linear_multistep", "calibrate_linear_multistep"]


@dataclass(frozen=True)
class LinearMultistep:
    """x_{i+1} = weights[i][0] x_i + sum_j weights[i][j + 1] m_j with m the model's ``prediction`` (x0 for
    ``"data"``, eps for ``"noise"``) at grid points 0..i. Quacks like :class:`~samplers.solvers.Solver`."""

    weights: tuple[tuple[float, ...], ...]
    prediction: Literal["data", "noise"] = "data"
    lower_order_final: bool | None = None  # accepted for the schedulers' config; the weights fix each step
    name: str = "bespoke-linear-multistep"

    multistep = True
    is_stochastic = False

    def __post_init__(self) -> None:
        if self.prediction not in ("data", "noise"):
            raise ValueError(f"{self.name}: prediction must be 'data' or 'noise', got {self.prediction!r}")
        weights = tuple(tuple(float(w) for w in row) for row in self.weights)
        if not weights:
            raise ValueError(f"{self.name}: needs the weights of at least one step")
        for i, row in enumerate(weights):
            if len(row) != i + 2:
                raise ValueError(
                    f"{self.name}: step {i} needs {i + 2} weights (x_i and m_0..m_{i}), got {len(row)}"
                )
            if not all(math.isfinite(w) for w in row):
                raise ValueError(f"{self.name}: step {i} has a non-finite weight")
        object.__setattr__(self, "weights", weights)

    @property
    def order(self) -> int:
        return len(self.weights)

    @property
    def steps(self) -> int:
        return len(self.weights)

    def init(
        self, x: torch.Tensor, grid: TimeGrid, cond: Mapping[str, torch.Tensor] | None = None
    ) -> SolverState:
        if grid.steps != self.steps:
            raise ValueError(
                f"{self.name}: its weights were fitted for {self.steps} steps; the grid has {grid.steps}"
            )
        if self.prediction == "noise" and grid.alpha_values[0] == 0:
            raise ValueError(f"{self.name}: noise prediction cannot start at alpha = 0; start at t < t_max")
        return SolverState(x=x, cond=dict(cond or {}))

    def advance(
        self, state: SolverState, grid: TimeGrid, noise=None
    ) -> Generator[Evaluation, DenoiserOutput, SolverState]:
        i = state.step
        if not 0 <= i < min(grid.steps, self.steps):
            raise ValueError(f"state is at step {i}; the solver has steps 0..{self.steps - 1}")
        out = yield Evaluation(state.x, grid.t[i], grid.alpha_values[i], grid.sigma_values[i], i)
        history = (*state.history, out.x0 if self.prediction == "data" else out.eps)
        return _stepped(state, self.weights[i], history)

    def step(self, denoiser: Denoiser, state: SolverState, grid: TimeGrid, noise=None) -> SolverState:
        return drive(self.advance(state, grid), denoiser, state.cond)

    def evaluations(self, grid: TimeGrid) -> int:
        return grid.steps

    def step_evaluations(self, i: int, grid: TimeGrid) -> list[tuple[float, float, float]]:
        return [(float(grid.t[i]), grid.alpha_values[i], grid.sigma_values[i])]


def _stepped(state: SolverState, row: Sequence[float], history: tuple[torch.Tensor, ...]) -> SolverState:
    """The state after step ``state.step`` with weights ``row`` = (a_i, b_i0, ..., b_ii) on (x_i, history)."""
    i = state.step
    weights = StepCoefficients(row[0], tuple(row[1:]), 0.0)
    return replace(
        state,
        x=_combine(weights, state.x, list(history)),
        step=i + 1,
        history=history,
        history_steps=(*state.history_steps, i),
        x_prev=state.x,
        prev_order=i + 1,
    )


def teacher_states(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    substeps: int = 100,
) -> list[torch.Tensor]:
    """The teacher's states at every point of ``grid`` (index 0 is ``x`` itself): DPM-Solver++(2M) with
    ``substeps`` uniform-log-SNR steps between consecutive points (``grid.steps * substeps`` evaluations)."""
    if grid.schedule is None:
        raise ValueError("the grid must be built on a schedule (make_grid or TimeGrid.from_times)")
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    states = [x]
    for i in range(grid.steps):
        last = i == grid.steps - 1
        final = "zero" if last and grid.ends_clean else "min"
        piece = make_grid(grid.schedule, substeps, "uniform_lambda", final=final,
                          t_start=float(grid.t[i]), t_end=float(grid.t[i + 1]))  # fmt: skip
        states.append(sample(denoiser, states[-1], piece, DPMSolverPP(2, lower_order_final=False), cond=cond))
    return states


def fit_linear_multistep(
    denoiser: Denoiser,
    x: torch.Tensor,
    states: Sequence[torch.Tensor],
    grid: TimeGrid,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    prediction: Literal["data", "noise"] = "data",
) -> LinearMultistep:
    """Weights fitted step by step by least squares to the teacher's ``states`` at the grid points (see the
    module docstring); one model evaluation per step on the calibration samples ``x``."""
    if len(states) != grid.steps + 1:
        raise ValueError(f"need the teacher's state at each of the {grid.steps + 1} grid points")
    weights: list[tuple[float, ...]] = []
    if prediction not in ("data", "noise"):
        raise ValueError(f"prediction must be 'data' or 'noise', got {prediction!r}")
    state = SolverState(x=x, cond=dict(cond or {}))
    for i in range(grid.steps):
        request = Evaluation(state.x, grid.t[i], grid.alpha_values[i], grid.sigma_values[i], i)
        out = _evaluate(denoiser, request, state.cond)
        history = (*state.history, out.x0 if prediction == "data" else out.eps)
        terms = torch.stack([t.reshape(-1) for t in (state.x, *history)], dim=1).to(torch.float64)
        target = states[i + 1].reshape(-1).to(torch.float64)
        row = tuple(torch.linalg.lstsq(terms, target.unsqueeze(1)).solution.squeeze(1).tolist())
        weights.append(row)
        state = _stepped(state, row, history)
    return LinearMultistep(tuple(weights), prediction)


def calibrate_linear_multistep(
    denoiser: Denoiser,
    x: torch.Tensor,
    reference: torch.Tensor,
    grid: TimeGrid,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    prediction: Literal["data", "noise"] = "data",
    substeps: int = 100,
    refine_evaluations: int = 0,
) -> CalibratedGrid:
    """Teacher states on ``grid`` + the fit, as a :class:`~samplers.calibrate.CalibratedGrid` whose
    ``scheduler_config()`` runs it in ExponentialIntegratorScheduler. ``reference`` (the teacher's endpoints
    of ``x``, e.g. at sigma = 0) is the target of the last step, whatever the grid's last point, and measures
    the errors; ``initial_error`` is DPM-Solver++(2M) on the same grid.

    ``refine_evaluations`` > 0 then polishes all weights together on the end-point error (Nelder-Mead from
    the step-by-step fit, at most that many solver runs; kept only if better): the step-by-step fit matches
    every intermediate state, while only the end point matters, as in BNS's end-to-end training. The cost
    counts the teacher states inside the grid, the fit and the refinement (model calls on the calibration
    batch)."""
    nfe_before, clock = denoiser.nfe, time.perf_counter()
    if grid.steps > 1:  # the teacher's states inside the grid; the last step aims at the reference itself
        inner = TimeGrid.from_times(grid.schedule, grid.t[:-1], final="min")
        states = [*teacher_states(denoiser, x, inner, cond=cond, substeps=substeps), reference]
    else:
        states = [x, reference]
    solver = fit_linear_multistep(denoiser, x, states, grid, cond=cond, prediction=prediction)
    error = relative_rms(sample(denoiser, x, grid, solver, cond=cond), reference)
    if refine_evaluations > 0:
        solver, error = _refine(denoiser, x, reference, grid, solver, error, cond, refine_evaluations)
    cost, seconds = denoiser.nfe - nfe_before, time.perf_counter() - clock
    initial = relative_rms(sample(denoiser, x, grid, DPMSolverPP(2), cond=cond), reference)
    return CalibratedGrid(
        sigmas=tuple((grid.sigma / grid.alpha).tolist()),
        solver=solver.name,
        initial_error=initial,
        error=error,
        nfe=cost,
        seconds=seconds,
        evaluations=1,
        linear_multistep={"prediction": prediction, "weights": [list(w) for w in solver.weights]},
    )


def _refine(denoiser, x, reference, grid, solver: LinearMultistep, error: float, cond, evaluations: int):
    """Nelder-Mead on all weights (flattened) from ``solver``; returns the better of the two and its error."""
    from scipy.optimize import minimize

    sizes = [len(row) for row in solver.weights]
    start = [w for row in solver.weights for w in row]

    def unflatten(flat) -> LinearMultistep:
        rows, at = [], 0
        for n in sizes:
            rows.append(tuple(flat[at : at + n]))
            at += n
        return LinearMultistep(tuple(rows), solver.prediction)

    def objective(flat) -> float:
        try:
            return relative_rms(sample(denoiser, x, grid, unflatten(flat), cond=cond), reference)
        except ValueError:  # non-finite model inputs: a diverging candidate
            return math.inf

    options = {"maxfev": evaluations, "adaptive": True, "xatol": 1e-6, "fatol": 1e-6 * error}
    result = minimize(objective, start, method="Nelder-Mead", options=options)
    if result.fun < error:
        return unflatten(result.x), float(result.fun)
    return solver, error
