"""Look-ahead rewards: Tweedie's x̂0, or a log-space average over x0 draws around it."""

import math

import pytest
import torch

from rewards import linear_reward
from samplers.solvers import SDEDPMSolverPP
from search import fk_steering, gaussian_mixture_chain, sliced_wasserstein
from search.lookahead import Lookahead, lookahead_scores

F64 = torch.float64


def test_one_sample_is_the_reward_of_the_prediction(gmm2, schedule):
    chain = gaussian_mixture_chain(gmm2, schedule, 8, SDEDPMSolverPP(2))
    reward = linear_reward(torch.tensor([1.0, -2.0], dtype=F64))
    state, x0 = chain.predict(chain.step(chain.prior(5, torch.Generator().manual_seed(0))))
    torch.testing.assert_close(lookahead_scores(chain, reward, state, x0, Lookahead()), reward(x0))


def test_log_space_average_matches_the_closed_form_for_a_linear_reward(gmm2, schedule):
    """For r(x) = w.x and x0_j ~ N(x̂0, s^2 I): (1/lam) log E exp(lam r) = w.x̂0 + lam s^2 |w|^2 / 2."""
    chain = gaussian_mixture_chain(gmm2, schedule, 8, SDEDPMSolverPP(2))
    w = torch.tensor([0.6, -0.3], dtype=F64)
    state, x0 = chain.predict(chain.step(chain.prior(3, torch.Generator().manual_seed(1))))
    lam, m = 2.0, 200_000
    got = lookahead_scores(chain, linear_reward(w), state, x0, Lookahead(samples=m), lam,
                           generator=torch.Generator().manual_seed(2))  # fmt: skip
    a, s = chain.grid.alpha_values[state.step], chain.grid.sigma_values[state.step]
    var = s**2 / (a**2 + s**2)
    expected = x0 @ w + lam * var * float(w @ w) / 2
    torch.testing.assert_close(got, expected, atol=0.02, rtol=0)
    assert chain.budget.reward_calls == 3 * m


def test_fk_with_stochastic_lookahead_still_targets_the_tilt(gmm2, schedule):
    """Look-aheads change only the intermediate potentials; the final correction keeps the target exact."""
    reward = linear_reward(torch.tensor([0.8, -0.6], dtype=F64))
    tilted, _ = gmm2.tilted(reward.precision, reward.shift, temperature=0.3)
    exact = tilted.sample(8000, generator=torch.Generator().manual_seed(9))
    chain = gaussian_mixture_chain(gmm2, schedule, 40, SDEDPMSolverPP(2, eta=1.0))
    result = fk_steering(chain, reward, particles=8000, temperature=0.3, lookahead=Lookahead(samples=4),
                         generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert sliced_wasserstein(result.x, exact, generator=torch.Generator().manual_seed(0)) < 0.12
    assert result.reward_calls == 8000 * (4 * 39 + 1)
    assert math.isfinite(result.history[0]["ess"])


@pytest.mark.parametrize(("samples", "scale"), [(0, 1.0), (2, -1.0), (1.5, 1.0)])
def test_bad_lookahead_settings(samples, scale):
    with pytest.raises(ValueError, match="look-ahead"):
        Lookahead(samples=samples, scale=scale)
