"""Reward-based noise optimisation: gradients through the sampler, monotone improvement, norm kept, NFE."""

import math

import pytest
import torch
from counting import count_model_rows

from rewards import JPEGCompressibility, least_squares_reward
from samplers.analytic import GaussianMixture
from samplers.solvers import DPMSolverPP
from search import gaussian_mixture_chain
from search.noise_optimisation import chi_log_density, noise_optimisation

F64 = torch.float64


@pytest.fixture
def problem(schedule):
    """A 16-D mixture, a 4-step second-order sampler, and a reward peaked between two modes."""
    gmm = GaussianMixture.random(dim=16, n_components=3, n_classes=1, seed=1)
    chain = gaussian_mixture_chain(gmm, schedule, 4, DPMSolverPP(2))
    reward = least_squares_reward(torch.eye(16, dtype=F64), 0.5 * (gmm.means[0] + gmm.means[1]))
    return chain, reward


def test_gradients_flow_through_the_sampler(problem):
    """gradcheck of eps -> reward(sample(noise_scale * eps)) through the 4-step solver."""
    chain, reward = problem

    def objective(eps):
        state = chain.start(chain.noise_scale * eps)
        while state.step < chain.steps:
            state = chain.step(state)
        return reward(state.x, grad=True)

    eps = torch.randn(2, 16, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(objective, (eps,))


def test_reward_rises_monotonically_on_average_and_the_norm_is_kept(problem):
    chain, reward = problem
    curves, norms = [], []
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        result = noise_optimisation(chain, reward, iterations=30, generator=g)
        curves.append([h["mean_reward"] for h in result.history])
        norms.append(result.history[-1]["norm_ratio"])
    mean = torch.tensor(curves).mean(0)
    assert torch.all(mean[1:] >= mean[:-1]), mean
    assert mean[-1] > mean[0] + 2.0, mean  # measured: about -7.2 -> -4.0
    assert all(abs(n - 1) < 0.05 for n in norms), norms


def test_nfe_restarts_budget_and_best_sample(problem):
    chain, reward = problem
    counter = count_model_rows(chain)
    result = noise_optimisation(chain, reward, max_nfe=3 * 4 * 7 + 5, restarts=3,
                                generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert len(result.history) == 7 and result.nfe == counter.rows == 3 * 4 * 7
    assert result.all_scores.shape == (21,) and result.scores[0] == result.all_scores.max()
    torch.testing.assert_close(reward(result.x), result.scores)
    with pytest.raises(ValueError, match="smaller than one iteration"):
        noise_optimisation(chain, reward, max_nfe=11, restarts=3)
    with pytest.raises(ValueError, match="differentiable reward"):
        noise_optimisation(chain, JPEGCompressibility())
    with pytest.raises(ValueError, match="regulariser"):
        noise_optimisation(chain, reward, regulariser="l2")


def test_chi_regulariser_is_maximal_at_the_typical_norm(problem):
    d = 16
    norms = torch.linspace(1.0, 8.0, 701, dtype=F64)
    eps = torch.zeros(701, d, dtype=F64)
    eps[:, 0] = norms
    assert float(norms[torch.argmax(chi_log_density(eps))]) == pytest.approx(math.sqrt(d - 1), abs=0.01)
    chain, reward = problem
    result = noise_optimisation(chain, reward, iterations=3, regulariser="chi", weight=5.0,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(result.history) == 3 and result.history[-1]["mean_reward"] > result.history[0]["mean_reward"]
