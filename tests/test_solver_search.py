"""Solver-schedule search (samplers/solver_search.py) on the analytic Gaussian mixture: per-step rules run
as one solver and in ExponentialIntegratorScheduler alike, the rule search never loses to its start and
lowers the error against the exact ODE endpoint on held-out noise, the exported config reproduces the
searched run in a diffusers loop (and interpolates to other step counts), and bad input fails clearly."""

import pytest
import torch
from sd_mixture import SCHEDULE, SD, guided_samples, net_of

from samplers import (
    Denoiser,
    DPMSolverPP,
    ExponentialIntegratorScheduler,
    Solver,
    UniPC,
    make_grid,
    sample,
)
from samplers.analytic import GaussianMixture
from samplers.calibrate import CalibratedGrid, relative_rms
from samplers.solver_search import RuleSchedule, search_rules, search_solver_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def problem():
    """Guidance 7.5 on a 16-d class-conditional mixture (hand-made solvers fail there at 5 steps)."""
    gmm = GaussianMixture.random(dim=16, n_components=4, n_classes=2, seed=0)
    return net_of(gmm, 7.5), guided_samples(gmm, 7.5, 24, 1), guided_samples(gmm, 7.5, 48, 2)


def float32_times(net) -> Denoiser:
    """The network as a diffusers loop calls it: at the scheduler's float32 timesteps."""
    return Denoiser(net, time_fn=lambda t: t.float().double())


def run_scheduler(sched, net, x, cond) -> torch.Tensor:
    out = x.clone()
    for t in sched.timesteps:
        out = sched.step(net(out, t.to(torch.float64).expand(x.shape[0]), **cond), t, out).prev_sample
    return out


def test_a_rule_schedule_runs_its_rule_per_step(problem):
    net, (x, _, cond), _ = problem
    grid = make_grid(SCHEDULE, 6, "karras")
    one = RuleSchedule((DPMSolverPP(2, rule="exact"),))
    assert torch.equal(sample(Denoiser(net), x, grid, one, cond=cond),
                       sample(Denoiser(net), x, grid, DPMSolverPP(2, rule="exact"), cond=cond))  # fmt: skip
    dicts = [{"order": 1, "rule": "exact"}, {"order": 3, "rule": "unipc_bh1", "corrector": "unipc_bh2"}]
    mixed = RuleSchedule.from_dicts(dicts, lower_order_final=False)
    assert mixed.rule_at(0).order == 1 and mixed.rule_at(5).order == 3 and mixed.evaluations(grid) == 6
    sched = ExponentialIntegratorScheduler(**SD, rules=dicts, lower_order_final=False, time_grid="karras")
    sched.set_timesteps(6)
    direct = sample(float32_times(net), x, sched.grid, mixed, cond=cond)
    assert relative_rms(run_scheduler(sched, net, x, cond), direct) < 1e-12
    with pytest.raises(ValueError, match="same prediction"):
        RuleSchedule.from_dicts([{"prediction": "data"}, {"prediction": "noise", "rule": "exact"}])
    with pytest.raises(ValueError, match="ODE"):
        RuleSchedule((Solver(eta=1.0),))
    with pytest.raises(ValueError, match="at least one"):
        RuleSchedule(())


def test_the_rule_search_never_loses_and_lowers_the_held_out_error(problem):
    net, (x, exact, cond), (x_held, exact_held, cond_held) = problem
    grid = make_grid(SCHEDULE, 5, "quadratic", final="min")
    start = RuleSchedule((DPMSolverPP(2),))
    denoiser = Denoiser(net)
    found, error, runs = search_rules(denoiser, x, exact, grid, start=start, cond=cond, sweeps=1)
    assert denoiser.nfe == 5 * runs and runs > len(found.rules)
    before = relative_rms(sample(Denoiser(net), x, grid, start, cond=cond), exact)
    assert error == pytest.approx(relative_rms(sample(Denoiser(net), x, grid, found, cond=cond), exact))
    assert error < 0.8 * before, (before, error)
    held_before = relative_rms(sample(Denoiser(net), x_held, grid, start, cond=cond_held), exact_held)
    held_after = relative_rms(sample(Denoiser(net), x_held, grid, found, cond=cond_held), exact_held)
    assert held_after < 0.9 * held_before, (held_before, held_after)


def test_the_searched_schedule_exports_a_config_that_reproduces_it(problem, tmp_path):
    net, (x, exact, cond), (x_held, exact_held, cond_held) = problem
    init = make_grid(SCHEDULE, 5, "quadratic", final="min")
    denoiser = Denoiser(net)
    fit = search_solver_schedule(denoiser, x, exact, init, cond=cond, starts=[UniPC(2)], rounds=1, sweeps=1,
                                 grid_evaluations=60)  # fmt: skip
    assert fit.rules and fit.steps == 5 and fit.nfe == denoiser.nfe and fit.error < fit.initial_error
    solver = RuleSchedule.from_dicts(fit.rules)
    assert fit.error == pytest.approx(
        relative_rms(sample(Denoiser(net), x, fit.grid(SCHEDULE), solver, cond=cond), exact)
    )
    sched = ExponentialIntegratorScheduler.from_config(
        ExponentialIntegratorScheduler(**SD).config, **fit.scheduler_config()
    )
    sched.set_timesteps(5)
    out = run_scheduler(sched, net, x_held, cond_held)
    direct = sample(float32_times(net), x_held, fit.grid(SCHEDULE), solver, cond=cond_held)
    assert relative_rms(out, direct) < 1e-12
    unsearched = UniPC(2)
    plain = relative_rms(sample(Denoiser(net), x_held, init, unsearched, cond=cond_held), exact_held)
    assert relative_rms(out, exact_held) < 0.8 * plain
    sched.set_timesteps(8)  # other step counts: the levels interpolated log-linearly (AYS)
    assert len(sched.timesteps) == 8
    assert torch.isfinite(run_scheduler(sched, net, x_held, cond_held)).all()
    fit.save(tmp_path / "schedule.json")
    assert CalibratedGrid.load(tmp_path / "schedule.json") == fit
    with pytest.raises(ValueError, match="rounds"):
        search_solver_schedule(denoiser, x, exact, init, cond=cond, rounds=0)
