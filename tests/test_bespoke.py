"""Bespoke linear multistep solvers (samplers/bespoke.py): the general form reproduces DDIM with DDIM's
weights; on an isotropic Gaussian, where the exact step is affine in (x_i, x0_i), the fit recovers the exact
ODE endpoint in 3 steps; on a guided mixture it beats the engine's solvers on held-out noise; it runs
unchanged in ExponentialIntegratorScheduler from its exported config; bad input fails clearly."""

import math

import pytest
import torch
from sd_mixture import SCHEDULE, SD, START, guided_samples, net_of, noise

from samplers import DDIM, Denoiser, ExponentialIntegratorScheduler, UniPC, make_grid, sample
from samplers.analytic import GaussianMixture, solve_probability_flow
from samplers.bespoke import LinearMultistep, calibrate_linear_multistep, fit_linear_multistep, teacher_states
from samplers.calibrate import CalibratedGrid, relative_rms

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ddim_weights_reproduce_ddim():
    gmm = GaussianMixture.random(dim=8, n_components=3, seed=0)
    grid = make_grid(SCHEDULE, 6, "karras", final="min")
    a, s, lam = grid.alpha_values, grid.sigma_values, grid.lambdas
    weights = []
    for i in range(grid.steps):  # DDIM: x_{i+1} = (s_{i+1}/s_i) x_i + a_{i+1} (1 - e^{-h}) x0_i
        row = [s[i + 1] / s[i]] + [0.0] * i + [a[i + 1] * -math.expm1(-(lam[i + 1] - lam[i]))]
        weights.append(tuple(row))
    x = noise(16, 8, 1)
    ours = sample(Denoiser(net_of(gmm)), x, grid, LinearMultistep(tuple(weights)))
    assert torch.allclose(ours, sample(Denoiser(net_of(gmm)), x, grid, DDIM()), rtol=0, atol=1e-12)


def test_the_fit_is_exact_where_the_exact_step_is_in_its_span():
    """N(mu, v I): x0 is affine in x, so the exact step x_{i+1} = A x_i + c mu = a x_i + b x0_i."""
    dim = 6
    gmm = GaussianMixture(torch.full((1, dim), 0.7), 0.3 * torch.eye(dim).unsqueeze(0), torch.ones(1))
    grid = make_grid(SCHEDULE, 3, "uniform_lambda", final="min")  # ends at t_min: the exact end is known
    x = noise(32, dim, 2)
    denoiser = Denoiser(net_of(gmm))
    states = teacher_states(denoiser, x, grid, substeps=200)
    assert len(states) == 4 and denoiser.nfe == 3 * 200
    solver = fit_linear_multistep(denoiser, x, states, grid)
    held = noise(64, dim, 3)
    exact = solve_probability_flow(gmm, held, START, [(grid.alpha_values[-1], grid.sigma_values[-1])])[0]
    bespoke = relative_rms(sample(Denoiser(net_of(gmm)), held, grid, solver), exact)
    unipc = relative_rms(sample(Denoiser(net_of(gmm)), held, grid, UniPC(2)), exact)
    assert bespoke < 1e-5 and unipc > 1e-3, (bespoke, unipc)


@pytest.fixture(scope="module")
def guided():
    gmm = GaussianMixture.random(dim=16, n_components=4, n_classes=2, seed=0)
    return net_of(gmm, 7.5), guided_samples(gmm, 7.5, 32, 1), guided_samples(gmm, 7.5, 64, 2)


def test_the_fit_beats_the_engine_on_held_out_noise_and_runs_in_the_scheduler(guided, tmp_path):
    net, (x, exact, cond), (x_held, exact_held, cond_held) = guided
    grid = make_grid(SCHEDULE, 5, "quadratic", final="min")
    denoiser = Denoiser(net)
    fit = calibrate_linear_multistep(denoiser, x, exact, grid, cond=cond, substeps=100)
    assert fit.nfe == denoiser.nfe - 5 == 4 * 100 + 5 + 5  # teacher inside the grid, the fit, its error run
    assert fit.error < 0.5 * fit.initial_error, (fit.initial_error, fit.error)
    spec = fit.linear_multistep
    solver = LinearMultistep(tuple(tuple(w) for w in spec["weights"]), spec["prediction"])
    held = relative_rms(sample(Denoiser(net), x_held, grid, solver, cond=cond_held), exact_held)
    unipc = relative_rms(sample(Denoiser(net), x_held, grid, UniPC(2), cond=cond_held), exact_held)
    assert held < 0.85 * unipc, (held, unipc)  # measured 0.070 vs 0.092
    sched = ExponentialIntegratorScheduler(**SD, **fit.scheduler_config())
    sched.set_timesteps(5)
    out = x_held.clone()
    for t in sched.timesteps:
        out = sched.step(net(out, t.to(torch.float64).expand(len(out)), **cond_held), t, out).prev_sample
    direct = sample(Denoiser(net, time_fn=lambda t: t.float().double()), x_held, grid, solver, cond=cond_held)
    assert relative_rms(out, direct) < 1e-12
    refined = calibrate_linear_multistep(
        Denoiser(net), x, exact, grid, cond=cond, substeps=100, refine_evaluations=150
    )  # the same step-by-step fit, then all weights polished on the end point
    assert refined.error < 0.95 * fit.error and fit.nfe < refined.nfe <= fit.nfe + 5 * 150
    fit.save(tmp_path / "bespoke.json")
    assert CalibratedGrid.load(tmp_path / "bespoke.json") == fit
    sched.set_timesteps(6)  # the weights belong to the 5-step grid
    with pytest.raises(ValueError, match="fitted for 5 steps"):
        sched.step(torch.zeros_like(x_held), sched.timesteps[0], x_held)


def test_bad_input_fails_clearly(guided):
    net, (x, exact, cond), _ = guided
    with pytest.raises(ValueError, match="step 1 needs 3 weights"):
        LinearMultistep(((1.0, 0.0), (1.0, 0.0)))
    with pytest.raises(ValueError, match="non-finite"):
        LinearMultistep(((math.nan, 0.0),))
    with pytest.raises(ValueError, match="prediction"):
        LinearMultistep(((1.0, 0.0),), "v")
    grid = make_grid(SCHEDULE, 2)
    with pytest.raises(ValueError, match="each of the 3 grid points"):
        fit_linear_multistep(Denoiser(net), x, [x], grid, cond=cond)
    with pytest.raises(ValueError, match="at most one"):
        ExponentialIntegratorScheduler(**SD, rules=[{"order": 1}], linear_multistep={"weights": [[1.0, 0.0]]})
