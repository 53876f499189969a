"""Teacher-matching time grids (samplers/calibrate.py) on the analytic Gaussian mixture: the fit lowers the
error against the exact ODE endpoint on the calibration samples and on held-out ones, the fitted grid runs
unchanged in our diffusers scheduler through ``set_timesteps(sigmas=...)``, it saves and loads, and bad
input fails clearly."""

import pytest
import torch

from samplers import Denoiser, DiscreteVPSchedule, UniPCScheduler, make_grid, sample
from samplers.analytic import GaussianMixture, make_net, solve_probability_flow
from samplers.calibrate import CalibratedGrid, fit_grid, relative_rms

SCHEDULE = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def problem():
    gmm = GaussianMixture.random(dim=16, n_components=4, n_classes=2, seed=0)
    net = make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)), "epsilon")
    start = (float(SCHEDULE.alpha(999.0)), float(SCHEDULE.sigma(999.0)))

    def samples(n: int, seed: int):
        labels = torch.arange(n) % 2
        x = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact = solve_probability_flow(gmm, x, start, [(1.0, 0.0)], class_labels=labels)[0]
        return x, exact, {"class_labels": labels}

    return net, samples(32, 1), samples(64, 2)


def scheduler(**config) -> UniPCScheduler:
    """UniPC-bh1-3 on noise predictions (the best hand-made configuration at 5 steps in
    docs/benchmarks/solvers.md), on SCHEDULE's betas."""
    return UniPCScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=3,
                          solver_type="bh1", predict_x0=False, **config)  # fmt: skip


def run_scheduler(sched, net, x, cond) -> torch.Tensor:
    """The diffusers loop (the network sees the scheduler's float32 timesteps)."""
    out = x.clone()
    for t in sched.timesteps:
        eps = net(out, t.to(torch.float64).expand(x.shape[0]), **cond)
        out = sched.step(eps, t, out).prev_sample
    return out


def test_the_fit_lowers_the_error_on_calibration_and_held_out_samples(problem):
    net, (x, exact, cond), (x_held, exact_held, cond_held) = problem
    solver = scheduler().solvers[0]
    init = make_grid(SCHEDULE, 5, "uniform_lambda")
    denoiser = Denoiser(net, "epsilon")
    fit = fit_grid(denoiser, solver, x, exact, init, cond=cond, max_evaluations=150)
    assert fit.steps == 5 and fit.solver == solver.name and fit.evaluations <= 150
    assert fit.nfe == denoiser.nfe == 5 * fit.evaluations  # every objective evaluation is one 5-step run
    assert fit.error < 0.5 * fit.initial_error
    initial = relative_rms(sample(Denoiser(net), x, init, solver, cond=cond), exact)
    assert fit.initial_error == pytest.approx(initial)
    grid = fit.grid(SCHEDULE)
    assert grid.ends_clean and grid.t[0] == init.t[0] and grid.steps == 5
    assert fit.error == pytest.approx(relative_rms(sample(Denoiser(net), x, grid, solver, cond=cond), exact))
    before = relative_rms(sample(Denoiser(net), x_held, init, solver, cond=cond_held), exact_held)
    after = relative_rms(sample(Denoiser(net), x_held, grid, solver, cond=cond_held), exact_held)
    assert after < 0.75 * before, (before, after)


def test_the_fitted_grid_runs_in_our_scheduler_through_sigmas(problem):
    net, (x, exact, cond), _ = problem
    sched = scheduler()
    fit = fit_grid(Denoiser(net), sched.solvers[0], x, exact, make_grid(SCHEDULE, 6, "karras"), cond=cond,
                   max_evaluations=40)  # fmt: skip
    assert fit.final_sigmas_type == "zero"
    sched.set_timesteps(sigmas=fit.evaluation_sigmas)
    assert len(sched.timesteps) == 6
    out = run_scheduler(sched, net, x, cond)
    direct = sample(Denoiser(net), x, fit.grid(SCHEDULE), sched.solvers[0], cond=cond)
    assert torch.allclose(out, direct, rtol=0, atol=1e-5)
    assert relative_rms(out, exact) == pytest.approx(fit.error, rel=1e-3)


def test_a_grid_to_t_min_keeps_its_ends_and_a_fit_is_never_worse(problem, tmp_path):
    net, (x, exact, cond), _ = problem
    solver = scheduler().solvers[0]
    init = make_grid(SCHEDULE, 4, "quadratic", final="min")
    fit = fit_grid(Denoiser(net), solver, x, exact, init, cond=cond, max_evaluations=60)
    grid = fit.grid(SCHEDULE)
    assert not grid.ends_clean and fit.sigmas[-1] > 0
    assert torch.allclose(grid.t[[0, -1]], init.t[[0, -1]], rtol=0, atol=1e-6)
    assert fit.error <= fit.initial_error
    sched = scheduler(final_sigmas_type=fit.final_sigmas_type)
    sched.set_timesteps(sigmas=fit.evaluation_sigmas)
    assert fit.final_sigmas_type == "sigma_min" and len(sched.timesteps) == 4
    direct = sample(Denoiser(net), x, grid, solver, cond=cond)
    assert torch.allclose(run_scheduler(sched, net, x, cond), direct, rtol=0, atol=1e-5)
    unfitted = fit_grid(Denoiser(net), solver, x, exact, init, cond=cond, max_evaluations=1)
    assert unfitted.error == unfitted.initial_error and unfitted.evaluations == 1
    assert torch.allclose(unfitted.grid(SCHEDULE).t, init.t, rtol=0, atol=1e-6)
    fit.save(tmp_path / "grid.json")
    assert CalibratedGrid.load(tmp_path / "grid.json") == fit


def test_bad_input_fails_clearly(problem, tmp_path):
    net, (x, exact, cond), _ = problem
    solver = scheduler().solvers[0]
    with pytest.raises(ValueError, match="one step"):
        fit_grid(Denoiser(net), solver, x, exact, make_grid(SCHEDULE, 1), cond=cond)
    with pytest.raises(ValueError, match="one shape"):
        fit_grid(Denoiser(net), solver, x, exact[:3], make_grid(SCHEDULE, 4), cond=cond)
    from samplers import FlowMatchingSchedule

    flow = make_grid(FlowMatchingSchedule(), 4, "uniform_t")  # starts at pure noise: log-SNR -inf
    with pytest.raises(ValueError, match="finite log-SNR"):
        fit_grid(Denoiser(net), solver, x, exact, flow, cond=cond)
    with pytest.raises(ValueError, match="max_evaluations"):
        fit_grid(Denoiser(net), solver, x, exact, make_grid(SCHEDULE, 4), cond=cond, max_evaluations=0)
    (tmp_path / "bad.json").write_text(
        '{"sigmas": [1.0, 2.0], "solver": "s", "initial_error": 1, "error": 1, "nfe": 1, "seconds": 1, '
        '"evaluations": 1}'
    )
    with pytest.raises(ValueError, match="decreasing"):
        CalibratedGrid.load(tmp_path / "bad.json")
