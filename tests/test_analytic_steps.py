"""Model-free optimised time steps (samplers/analytic_steps.py, DM-NonUniform style).

Checks that the result is a valid grid with make_grid's end points and that the optimiser is
deterministic. Checks that the objective's coefficients are those of the solver and that the optimiser
lowers its own objective. Then measures what that does to the real error on the analytic Gaussian
mixture (SD-like schedule, epsilon network, exact probability-flow endpoint). The accuracy assertions
state what we observed on this problem, including where the optimised grid is *worse* than uniform
log-SNR (DPM-Solver++(2M) at 5 and 6 steps)."""

import math

import numpy as np
import pytest
import torch
from threads import one_thread

from samplers import Denoiser, DiscreteVPSchedule, DPMSolverPP, UniPC, make_grid, sample
from samplers.analytic import GaussianMixture, make_net, solve_probability_flow
from samplers.analytic_steps import final_coefficients, optimise_steps, paper_solver, step_objective
from samplers.calibrate import relative_rms

SCHEDULE = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
NFES = (5, 6, 8, 10)
KINDS = ("uniform_lambda", "uniform_t", "quadratic", "karras")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def optimised():
    """The default (paper) objective's grid for each NFE, computed once."""
    with one_thread():
        return {n: optimise_steps(SCHEDULE, n) for n in NFES}


@pytest.fixture(scope="module")
def errors(optimised):
    """Relative RMS error vs the exact ODE endpoint: {(solver, nfe): {grid name: error}}."""
    with one_thread():  # module-scoped: set up before the function-scoped one_torch_thread fixture
        return _errors(optimised)


def _errors(optimised):
    gmm = GaussianMixture.random(dim=16, n_components=4, n_classes=2, seed=0)
    net = make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)), "epsilon")
    labels = torch.arange(64) % 2
    x = torch.randn(64, gmm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = (float(SCHEDULE.alpha(999.0)), float(SCHEDULE.sigma(999.0)))
    exact = solve_probability_flow(gmm, x, start, [(1.0, 0.0)], class_labels=labels)[0]
    denoiser, cond = Denoiser(net, "epsilon"), {"class_labels": labels}
    table = {}
    for solver in (DPMSolverPP(2), DPMSolverPP(3), UniPC(2)):
        for n in NFES:
            grids = {"optimised": optimised[n], **{k: make_grid(SCHEDULE, n, k) for k in KINDS}}
            table[solver.name, n] = {
                k: relative_rms(sample(denoiser, x, g, solver, cond=cond), exact) for k, g in grids.items()
            }
    print("\nsolver NFE | " + " ".join(f"{k:>14}" for k in ("optimised", *KINDS)))
    for (name, n), row in table.items():
        print(f"{name:14} {n:2d} | " + " ".join(f"{v:14.4f}" for v in row.values()))
    return table


@pytest.mark.parametrize("final", ["zero", "min"])
def test_valid_grid_with_make_grids_end_points(optimised, final):
    for n in (5, 8) if final == "zero" else (5,):
        grid = optimised[n] if final == "zero" else optimise_steps(SCHEDULE, n, final=final)
        ref = make_grid(SCHEDULE, n, "uniform_lambda", final=final)
        assert grid.steps == n and grid.schedule is SCHEDULE
        assert torch.all(grid.lambda_[1:] > grid.lambda_[:-1])
        assert grid.t[0] == ref.t[0] and grid.t[-1] == ref.t[-1] and grid.ends_clean == (final == "zero")
        assert not torch.equal(grid.t, ref.t)  # the interior points moved
    inner = optimise_steps(SCHEDULE, 4, t_start=800.0, t_end=10.0, final="min")
    ref = make_grid(SCHEDULE, 4, "karras", t_start=800.0, t_end=10.0, final="min")
    assert inner.t[0] == ref.t[0] == 800.0 and inner.t[-1] == ref.t[-1] == 10.0
    one = optimise_steps(SCHEDULE, 1)
    assert one.steps == 1 and torch.equal(one.t, make_grid(SCHEDULE, 1).t)


def test_deterministic(optimised):
    again = optimise_steps(SCHEDULE, 5)
    assert torch.equal(again.t, optimised[5].t)


def test_coefficients_are_the_solvers():
    lam = np.asarray(make_grid(SCHEDULE, 6, "uniform_lambda", final="min").lambdas)
    for solver in (paper_solver(), DPMSolverPP(2), UniPC(3)):
        # a consistent rule integrates the constant exactly: sum C_i = (e^{lam_N} - e^{lam_0}) / e^{lam_N}
        assert final_coefficients(lam, solver).sum() == pytest.approx(1 - math.exp(lam[0] - lam[-1]))
    # first order (DDIM) on two steps: C = (1 - e^{-h_0}) e^{-h_1}, 1 - e^{-h_1}
    h = np.diff(lam[:3])
    c = final_coefficients(lam[:3], DPMSolverPP(1))
    np.testing.assert_allclose(c, [-np.expm1(-h[0]) * np.exp(-h[1]), -np.expm1(-h[1])], rtol=1e-12)
    with pytest.raises(ValueError, match="multistep ODE"):
        step_objective(lam, DPMSolverPP(2, multistep=False))


def test_the_optimiser_lowers_its_own_objective(optimised):
    for n in NFES:
        uniform = make_grid(SCHEDULE, n, "uniform_lambda", final="min").lambdas
        # the objective is taken on the finite grid ending at t_min (the clean end replaces that point)
        lam = optimised[n].lambdas[:-1] + uniform[-1:]
        assert step_objective(lam) < 0.9 * step_objective(uniform)
    solver = DPMSolverPP(2)
    own = optimise_steps(SCHEDULE, 5, solver=solver, final="min")
    uniform = make_grid(SCHEDULE, 5, "uniform_lambda", final="min").lambdas
    assert step_objective(own.lambdas, solver) < 0.5 * step_objective(uniform, solver)
    # noise prediction: the objective exists, but its minimiser collapses onto the clean end: refused
    noise = UniPC(2, prediction="noise")
    assert step_objective(uniform, noise) > step_objective(uniform, UniPC(2))
    with pytest.raises(ValueError, match="data-prediction"):
        optimise_steps(SCHEDULE, 5, solver=noise)


def test_accuracy_on_the_gaussian_mixture(errors):
    """What the paper's objective (order-3 Lagrange multistep, sigma^2/alpha error model) does here."""
    for n in NFES:
        unipc, dpm3, dpm2 = errors["UniPC-bh2-2", n], errors["DPMSolver++3M", n], errors["DPMSolver++2M", n]
        # UniPC-2 (the paper's pairing): better than uniform log-SNR at every NFE tried.
        assert unipc["optimised"] < 0.95 * unipc["uniform_lambda"]
        # DPM-Solver++(3M): clearly better at 5-8 steps, level at 10.
        assert dpm3["optimised"] < (0.9 if n < 10 else 1.1) * dpm3["uniform_lambda"]
        # DPM-Solver++(2M): worse than uniform log-SNR at 5 and 6 steps, better at 8 and 10.
        if n <= 6:
            assert dpm2["optimised"] > 1.2 * dpm2["uniform_lambda"]
        else:
            assert dpm2["optimised"] < 0.85 * dpm2["uniform_lambda"]
        # uniform-t is far worse than everything at these step counts.
        assert all(row["uniform_t"] > 2 * row["optimised"] for row in (unipc, dpm3, dpm2))
    # At 5-6 steps the optimised grid beats every hand-made kind for UniPC-2 and DPM-Solver++(3M) ...
    for name in ("UniPC-bh2-2", "DPMSolver++3M"):
        for n in (5, 6):
            row = errors[name, n]
            assert row["optimised"] < 0.95 * min(row[k] for k in KINDS)
    # ... but at 10 steps the quadratic-t grid is as good or better.
    for name in ("UniPC-bh2-2", "DPMSolver++3M"):
        row = errors[name, 10]
        assert row["quadratic"] < 1.05 * row["optimised"]
