r"""Model-free optimised time steps in the style of DM-NonUniform (Xue, Liu, Chen, Zhang, Hu, Xie and Li,
CVPR 2024, "Accelerating Diffusion Sampling with Optimized Time Steps", arXiv:2402.17376; reference code
scxue/DM-NonUniform, ``step_optim.py``).

What the method does, as far as we could check it. We could read the abstract and the reference code,
but not the body of the paper, so no equation numbers are cited here:

* The abstract: an optimisation problem "that seeks more appropriate time steps for a specific numerical
  ODE solver", minimising "the distance between the ground-truth solution to the ODE and an approximate
  solution corresponding to the numerical solver", solved "using the constrained trust region method".
* The reference code (``StepOptim.sel_lambdas_lof_obj`` / ``get_ts_lambdas``): the variables are the
  N - 1 interior log-SNRs lambda_1 < ... < lambda_{N-1}; the end points lambda_0 = lambda(T) and
  lambda_N = lambda(eps) stay fixed. The constraints are linear, lambda_{i+1} - lambda_i >= 0. The problem
  is solved with ``scipy.optimize.minimize(method="trust-constr")``, starting from the uniform-log-SNR grid
  (pixel-space models) or the uniform-t grid (latent models). The solver is the data-prediction multistep
  exponential integrator with exact Lagrange integration in lambda (DPM-Solver++ / UniP with its order
  pattern 1, 2, 3, ..., 3, 2, 1). Its update is x_N = (sigma_N/sigma_0) x_0 + sigma_N
  sum_i C_i x_theta(lambda_i), where C_i = sum over the steps using node i of \int e^lambda l_i(lambda),
  and l_i is the Lagrange basis polynomial. The data predictions are modelled as
  x_theta(lambda_i) = x_0 + delta_i. The exact solution integrates the constant x_0 exactly, and the C_i of
  a consistent rule sum to that integral. So the global error is sigma_N sum_i C_i delta_i, with
  |delta_i| <= w(lambda_i) = sigma_i^2 / alpha_i ("latent" models; sigma_i / alpha_i for pixel models).
  The objective is the triangle-inequality bound sum_i |C_i| w(lambda_i). (The reference code
  additionally scores the first three steps step by step with an L2 norm and keeps the order-1 steps out
  of the per-node sums; we use the plain per-node bound.)

What this module adds:

* The C_i are not written out by hand for one solver. They are read off any multistep ODE
  :class:`~samplers.solvers.Solver` of this package (its rule, prediction type, order pattern and UniC
  corrector included). The solver is run symbolically: every model output is a fresh unit vector, so the
  final state *is* the coefficient vector (x_N = A x_start + sum_i C_i m_i).
* Noise prediction is supported through the same model. If x_theta = x_0 + delta, then
  eps_theta = (x - alpha x_theta)/sigma has the error -e^{lambda} delta. So a noise-prediction node weighs
  e^{lambda_i} w(lambda_i). Errors are measured on x_N / alpha_N, which is the same for every schedule
  with the same log-SNRs; the objective therefore depends on the lambdas only.
* With ``final="zero"`` the last point is sigma = 0 (lambda = +inf). There the model says nothing: the
  last step hands the final node's prediction through unchanged, so every earlier C_i vanishes. The
  objective is therefore taken on the finite grid that ends at ``t_end`` (``t_min``), the grid make_grid
  would build with ``final="min"``. The clean end then replaces that last point, as in
  :func:`~samplers.grids.make_grid`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .denoiser import DenoiserOutput
from .grids import Final, TimeGrid, make_grid
from .schedules import NoiseSchedule
from .solvers import Solver, drive

__all__ = ["paper_solver", "final_coefficients", "step_objective", "optimise_steps"]


def paper_solver(order: int = 3, prediction: str = "data") -> Solver:
    """The solver family of the reference objective: multistep, Lagrange polynomial in lambda integrated
    exactly, lower orders in the first and last steps (orders 1, 2, 3, ..., 3, 2, 1 for order 3)."""
    return Solver(order=order, prediction=prediction, rule="exact", lower_order_final=True,
                  name=f"Lagrange-{prediction}-{order}M")  # fmt: skip


def _vp(lambdas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha, sigma of the variance-preserving schedule with these log-SNRs (alpha^2 + sigma^2 = 1)."""
    return np.sqrt(1 / (1 + np.exp(-2 * lambdas))), np.sqrt(1 / (1 + np.exp(2 * lambdas)))


def final_coefficients(lambdas: Sequence[float], solver: Solver) -> np.ndarray:
    """C_0..C_{N-1}: the weight of the model output at grid point i in x_N / alpha_N when ``solver`` runs
    over the (finite, strictly increasing) log-SNRs ``lambdas`` (N + 1 values).

    The solver runs symbolically: the state is a vector over (x_start, m_0, ..., m_{N-1}), and each model
    output is a fresh unit vector. The corresponding eps or x0 is derived from it linearly, so correctors
    see consistent inputs. The VP alpha/sigma of the lambdas are used; x_N / alpha_N is the same on every
    schedule."""
    _check_solver(solver)
    lam = np.asarray(lambdas, dtype=np.float64)
    n = lam.size - 1
    alpha, sigma = _vp(lam)
    grid = TimeGrid(torch.from_numpy(-lam), torch.from_numpy(alpha), torch.from_numpy(sigma))
    basis = torch.eye(n + 1, dtype=torch.float64)
    state = solver.init(basis[:1], grid)

    def unit_output(x, t, a, s, cond) -> DenoiserOutput:  # the model output at step i: unit vector 1 + i
        unit = basis[1 + state.step : 2 + state.step]
        if solver.prediction == "data":
            return DenoiserOutput(x0=unit, eps=(x - a * unit) / s)
        return DenoiserOutput(x0=(x - s * unit) / a, eps=unit)

    for _ in range(n):
        state = drive(solver.advance(state, grid), unit_output, state.cond)
    return state.x[0, 1:].numpy() / alpha[-1]


def step_objective(
    lambdas: Sequence[float], solver: Solver | None = None, *, sigma_power: float = 2.0
) -> float:
    """The model-free error bound sum_i |C_i| w_i of ``solver`` on the grid with log-SNRs ``lambdas``
    (N + 1 finite, increasing values, noise to data).

    C_i come from :func:`final_coefficients`. w_i = sigma_i^p / alpha_i (VP values, p = ``sigma_power``)
    bounds the data-prediction error at node i: p = 2 is the reference code's choice for latent models,
    p = 1 its choice for pixel-space models. For noise prediction the node's error is e^{lambda_i} times
    larger (eps = (x - alpha x0)/sigma). ``solver`` defaults to :func:`paper_solver`."""
    solver = paper_solver() if solver is None else solver
    lam = np.asarray(lambdas, dtype=np.float64)
    coefs = final_coefficients(lam, solver)
    alpha, sigma = _vp(lam[:-1])
    weights = sigma**sigma_power / alpha
    if solver.prediction == "noise":
        weights = weights * np.exp(lam[:-1])
    return float(np.sum(np.abs(coefs) * weights))


def _check_solver(solver: Solver) -> None:
    if not solver.multistep or solver.is_stochastic:
        raise ValueError(f"{solver.name}: the objective is defined for multistep ODE solvers (eta = 0)")


def optimise_steps(
    schedule: NoiseSchedule,
    steps: int,
    *,
    solver: Solver | None = None,
    order: int = 3,
    prediction: str = "data",
    final: Final = "zero",
    t_start: float | None = None,
    t_end: float | None = None,
    init: str = "uniform_lambda",
    sigma_power: float = 2.0,
    min_gap: float = 1e-3,
    max_iterations: int = 50,
) -> TimeGrid:
    """Time steps that minimise :func:`step_objective` (DM-NonUniform's model-free objective), as a grid.

    Args:
        schedule, steps, final, t_start, t_end: as in :func:`~samplers.grids.make_grid`; the result has the
            same end points as ``make_grid(schedule, steps, kind, final=final, t_start=..., t_end=...)``.
        solver: the multistep ODE solver whose coefficients define the objective (e.g. the one you will
            sample with). Default: :func:`paper_solver` ``(order, prediction)``. ``order`` and
            ``prediction`` are only used for that default.
        init: the make_grid kind to start from (the reference code uses ``uniform_lambda`` for pixel-space
            and ``uniform_t`` for latent models).
        sigma_power: p in the error model w = sigma^p / alpha (2: latent models, 1: pixel-space).
        min_gap: the smallest allowed log-SNR increment, as a fraction of the mean increment.
        max_iterations: trust-constr iterations. The objective is not smooth (absolute values) and its
            gradient is taken by finite differences, so trust-constr rarely meets its tolerances; 50
            iterations get within a few percent of 300 on 5-10 steps (about 1 ms per objective evaluation).

    The N - 1 interior log-SNRs are optimised by ``scipy.optimize.minimize(method="trust-constr")`` under
    the linear constraints lambda_{i+1} - lambda_i >= min_gap * span / N. The end points stay fixed. The
    run is deterministic, and the returned grid is never worse (by the objective) than ``init``.
    """
    from scipy.optimize import LinearConstraint, minimize

    if solver is None:
        solver = paper_solver(order, prediction)
    elif (order, prediction) != (3, "data"):
        raise ValueError("pass either solver or order/prediction, not both")
    _check_solver(solver)
    if solver.prediction != "data":
        # the objective is defined for noise prediction (step_objective), but its minimiser is degenerate:
        # every interior point collapses onto the clean end (one giant first step), as we observed
        raise ValueError(f"{solver.name}: the time-step optimisation needs a data-prediction solver")
    if not 0 < min_gap < 1:
        raise ValueError(f"min_gap must be in (0, 1), got {min_gap}")
    # make_grid pins the end points to t_start/t_end exactly (and checks their log-SNR is finite)
    base = make_grid(schedule, steps, "uniform_lambda", final="min", t_start=t_start, t_end=t_end)
    if steps < 2:
        return TimeGrid.from_times(schedule, base.t, final=final)  # no free point
    lo, hi = base.lambdas[0], base.lambdas[-1]
    lam0 = np.asarray(make_grid(schedule, steps, init, final="min", t_start=t_start, t_end=t_end).lambdas)
    gap = min_gap * (hi - lo) / steps

    def full(inner: np.ndarray) -> np.ndarray:
        return np.concatenate([[lo], inner, [hi]])

    def objective(inner: np.ndarray) -> float:
        lam = full(inner)
        increments = np.diff(lam)
        violation = np.clip(gap - increments, 0, None)
        if np.any(violation > 0):  # trust-constr may probe infeasible points: repair, and penalise
            fixed = np.maximum(increments, gap)
            lam = lo + (hi - lo) * np.concatenate([[0], np.cumsum(fixed) / fixed.sum()])
            return step_objective(lam, solver, sigma_power=sigma_power) * (1 + 1e3 * violation.sum() / gap)
        return step_objective(lam, solver, sigma_power=sigma_power)

    diff = np.zeros((steps, steps - 1))
    diff[np.arange(steps - 1), np.arange(steps - 1)] = 1.0
    diff[np.arange(1, steps), np.arange(steps - 1)] = -1.0
    bounds = np.full(steps, gap)
    bounds[0], bounds[-1] = gap + lo, gap - hi  # lambda_1 - lo >= gap and hi - lambda_{N-1} >= gap
    constraint = LinearConstraint(diff, bounds, np.inf)
    x0 = np.clip(lam0[1:-1], lo + gap, hi - gap)
    initial = objective(x0)
    with warnings.catch_warnings():  # BFGS notes flat directions of the piecewise-smooth objective
        warnings.simplefilter("ignore", UserWarning)
        result = minimize(objective, x0, method="trust-constr", constraints=[constraint],
                          options={"maxiter": max_iterations, "xtol": 1e-6, "gtol": 1e-8})  # fmt: skip
    best = result.x if (np.all(np.diff(full(result.x)) >= gap * (1 - 1e-6)) and result.fun < initial) else x0
    inner = schedule.t_of_lambda(torch.from_numpy(np.asarray(best, dtype=np.float64)))
    t = torch.cat([base.t[:1], inner.clamp(schedule.t_min, schedule.t_max), base.t[-1:]])
    return TimeGrid.from_times(schedule, t, final=final)
