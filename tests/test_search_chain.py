"""The chain interface: a solver run as a chain equals the plain sampler, look-aheads are cached, particles
resample mid-trajectory with multistep solvers, and NFE is counted per particle exactly."""

import pytest
import torch
from counting import count_model_rows

from samplers import sample
from samplers.analytic import GaussianMixture, make_net
from samplers.denoiser import Denoiser
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP, UniPC
from search.budget import Budget, BudgetExceeded
from search.chain import ChainState, SolverChain, gaussian_mixture_chain

F64 = torch.float64


def _counted_chain(gmm, schedule, steps, solver, budget=None):
    chain = gaussian_mixture_chain(gmm, schedule, steps, solver, budget=budget)
    counter = count_model_rows(chain)
    return chain, counter


@pytest.mark.parametrize("solver", [DPMSolverPP(2), UniPC(3), DPMSolverPP(3, multistep=False)])
def test_chain_run_equals_the_sampler_and_counts_nfe_per_particle(gmm2, schedule, solver):
    chain, counter = _counted_chain(gmm2, schedule, 8, solver)
    g = torch.Generator().manual_seed(0)
    state = chain.prior(5, g)
    x_T = state.x.clone()
    while state.step < chain.steps:
        state = chain.step(state)
    expected = sample(chain.denoiser, x_T, chain.grid, solver)
    torch.testing.assert_close(state.x, expected, rtol=0, atol=0)
    assert chain.budget.nfe == counter.rows - 5 * solver.evaluations(chain.grid)  # sample() also called it
    assert chain.budget.nfe == 5 * chain.trajectory_nfe() == 5 * chain.segment_nfe(0, chain.steps)


def test_predict_is_cached_and_reused_by_step(gmm2, schedule):
    chain, counter = _counted_chain(gmm2, schedule, 6, DPMSolverPP(2))
    state = chain.prior(4, torch.Generator().manual_seed(1))
    plain = state
    for _ in range(chain.steps):
        state, x0 = chain.predict(state)
        state, again = chain.predict(state)
        assert again is x0
        state = chain.step(state)
        plain = chain.step(plain)
    torch.testing.assert_close(state.x, plain.x, rtol=0, atol=0)
    assert counter.rows == chain.budget.nfe == 2 * 4 * 6  # look-aheads cost nothing extra
    final, x0 = chain.predict(state)
    assert x0 is state.x and chain.budget.nfe == 48


def test_x0_prediction_is_the_exact_posterior_mean(gmm2, schedule):
    chain = gaussian_mixture_chain(gmm2, schedule, 5, DPMSolverPP(2))
    state = chain.step(chain.prior(3, torch.Generator().manual_seed(2)))
    state, x0 = chain.predict(state)
    i = state.step
    expected = gmm2.posterior_mean(state.x, chain.grid.alpha_values[i], chain.grid.sigma_values[i])
    torch.testing.assert_close(x0, expected, rtol=1e-12, atol=1e-12)


def test_resampling_mid_trajectory_with_a_multistep_solver(gmm2, schedule):
    """Particles indexed and duplicated halfway continue exactly as the originals would."""
    chain = gaussian_mixture_chain(gmm2, schedule, 10, DPMSolverPP(3))
    state = chain.prior(4, torch.Generator().manual_seed(3))
    for _ in range(5):
        state, _ = chain.predict(state)
        state = chain.step(state)
    idx = torch.tensor([2, 2, 0, 3])
    resampled = state[idx]
    merged = ChainState.cat([state[[0, 1]], state[[2, 3]]])
    for _ in range(5):
        state, resampled, merged = chain.step(state), chain.step(resampled), chain.step(merged)
    torch.testing.assert_close(resampled.x, state.x[idx], rtol=0, atol=0)
    torch.testing.assert_close(merged.x, state.x, rtol=0, atol=0)


def test_stochastic_steps_follow_the_generator(gmm2, schedule):
    chain = gaussian_mixture_chain(gmm2, schedule, 6, SDEDPMSolverPP(2))
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        state = chain.prior(3, g)
        while state.step < chain.steps:
            state = chain.step(state, g)
        runs.append(state.x)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    g = torch.Generator().manual_seed(8)
    other = chain.prior(3, torch.Generator().manual_seed(7))
    while other.step < chain.steps:
        other = chain.step(other, g)
    assert not torch.allclose(other.x, runs[0])


def test_budget_refuses_a_call_it_cannot_pay_and_chain_errors(gmm2, schedule):
    chain = gaussian_mixture_chain(gmm2, schedule, 4, DPMSolverPP(2), budget=Budget(max_nfe=10))
    state = chain.step(chain.prior(4))
    state = chain.step(state)
    with pytest.raises(BudgetExceeded, match="budget is 10"):
        chain.step(state)
    assert chain.budget.nfe == 8
    with pytest.raises(ValueError, match="at least one particle"):
        chain.prior(0)
    with pytest.raises(ValueError, match="max_nfe"):
        Budget(max_nfe=0)
    done = gaussian_mixture_chain(gmm2, schedule, 1, DPMSolverPP(2))
    end = done.step(done.prior(1))
    with pytest.raises(ValueError, match="already at the end"):
        done.step(end)


def test_solver_chain_on_any_denoiser_with_conditioning(gmm2, schedule):
    """A class-conditional net through SolverChain's cond (broadcast from one row) and decode."""
    gmm = GaussianMixture.random(dim=2, n_components=4, n_classes=2, seed=0)
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)))
    from samplers.grids import make_grid

    grid = make_grid(schedule, 8, "uniform_lambda")
    chain = SolverChain(
        Denoiser(net), grid, DPMSolverPP(2), (2,), cond={"class_labels": torch.tensor([1])},
        decode=lambda x: x * 2, dtype=F64,
    )  # fmt: skip
    state = chain.prior(3, torch.Generator().manual_seed(0))
    while state.step < chain.steps:
        state = chain.step(state)
    expected = sample(Denoiser(net), chain.prior(3, torch.Generator().manual_seed(0)).x, grid, DPMSolverPP(2),
                      cond={"class_labels": torch.tensor([1, 1, 1])})  # fmt: skip
    torch.testing.assert_close(state.x, expected, rtol=0, atol=0)
    torch.testing.assert_close(chain.decode(state.x), 2 * state.x)


def test_renoise_is_the_forward_process(gmm2, schedule):
    """Exact marginal samples at grid index 7 renoised to index 4 have the exact marginal at 4."""
    from samplers.state import SolverState

    chain = gaussian_mixture_chain(gmm2, schedule, 10, DPMSolverPP(2))
    g = torch.Generator().manual_seed(0)
    x0 = gmm2.sample(200_000, generator=g)
    a7, s7 = chain.grid.alpha_values[7], chain.grid.sigma_values[7]
    x7 = a7 * x0 + s7 * torch.randn(x0.shape, generator=g, dtype=F64)
    noisy = chain.renoise(ChainState(SolverState(x=x7, step=7)), 4, torch.Generator().manual_seed(1))
    a, s = chain.grid.alpha_values[4], chain.grid.sigma_values[4]
    assert noisy.step == 4 and noisy.solver.history == ()
    torch.testing.assert_close(noisy.x.mean(0), a * gmm2.mean(), atol=0.02, rtol=0)
    exact_cov = a**2 * gmm2.covariance() + s**2 * torch.eye(2, dtype=F64)
    torch.testing.assert_close(torch.cov(noisy.x.T), exact_cov, atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="grid index in 0..4"):
        chain.renoise(noisy, 5)


def test_max_batch_chunks_model_calls_without_changing_anything_else(gmm2, schedule):
    """Per-row conditioning (two classes) and classifier-free guidance, 7 particles in calls of at most 3:
    the same samples as one call, the same NFE, and no network call sees more than 3 particles (6 rows with
    the CFG twins)."""
    from samplers.grids import make_grid

    gmm = GaussianMixture.random(dim=2, n_components=4, n_classes=2, seed=0)
    sizes = []

    def net(x, t, class_labels):
        sizes.append(x.shape[0])
        return make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)))(x, t, class_labels)

    grid = make_grid(schedule, 6, "uniform_lambda")
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    runs = {}
    for max_batch in (None, 3):
        denoiser = Denoiser(net, guidance_scale=2.0, uncond={"class_labels": torch.tensor([-1])})
        chain = SolverChain(denoiser, grid, SDEDPMSolverPP(2), (2,), cond={"class_labels": labels},
                            dtype=F64, max_batch=max_batch)  # fmt: skip
        sizes.clear()
        state = chain.prior(7, torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        while state.step < chain.steps:
            state = chain.step(state, g)
        runs[max_batch] = (state.x, chain.budget.nfe, max(sizes))
    torch.testing.assert_close(runs[3][0], runs[None][0], rtol=1e-12, atol=1e-12)
    assert runs[3][1] == runs[None][1] == 7 * 6
    assert runs[None][2] == 14 and runs[3][2] == 6
    with pytest.raises(ValueError, match="max_batch"):
        SolverChain(Denoiser(net), grid, DPMSolverPP(2), (2,), max_batch=0)


def test_draws_come_from_the_generators_device_and_match_torch_randn_on_the_cpu():
    """search.noise.randn draws on the generator's device (diffusers' convention, so a CPU generator serves a
    CUDA chain) and, on the CPU, is exactly torch.randn."""
    from search.noise import randn

    ours = randn((3, 2), torch.Generator().manual_seed(5), F64, "cpu")
    torch.testing.assert_close(ours, torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=F64))
    assert randn((4,), None, torch.float32, "cpu").shape == (4,)
