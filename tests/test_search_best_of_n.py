"""Best-of-N: the best of N trajectories, importance resampling toward the tilted target, exact NFE."""

import pytest
import torch
from counting import Scripted, count_model_rows

from rewards import linear_reward
from samplers.solvers import DPMSolverPP
from search.best_of_n import best_of_n
from search.chain import gaussian_mixture_chain

F64 = torch.float64


def counted_chain(gmm, schedule, steps=8):
    chain = gaussian_mixture_chain(gmm, schedule, steps, DPMSolverPP(2))
    counter = count_model_rows(chain)
    return chain, counter


def test_best_of_n_returns_the_best_and_counts_exactly(gmm2, schedule):
    chain, counter = counted_chain(gmm2, schedule)
    reward = linear_reward(torch.tensor([1.0, -0.5], dtype=F64))
    result = best_of_n(chain, reward, n=37, k=3, batch_size=10, generator=torch.Generator().manual_seed(0))
    assert result.all_scores.shape == (37,)
    torch.testing.assert_close(result.scores, torch.sort(result.all_scores, descending=True).values[:3])
    torch.testing.assert_close(reward(result.x).double(), result.scores)
    assert result.nfe == counter.rows == 37 * chain.trajectory_nfe()
    assert result.reward_calls == 37


def test_budget_sets_the_number_of_trajectories(gmm2, schedule):
    chain, counter = counted_chain(gmm2, schedule)
    result = best_of_n(chain, linear_reward(torch.ones(2, dtype=F64)), max_nfe=8 * 5 + 7)
    assert result.all_scores.shape == (5,) and result.nfe == counter.rows == 40
    with pytest.raises(ValueError, match="smaller than one trajectory"):
        best_of_n(chain, linear_reward(torch.ones(2, dtype=F64)), max_nfe=7)
    with pytest.raises(ValueError, match="exactly one of n"):
        best_of_n(chain, linear_reward(torch.ones(2, dtype=F64)))


def test_degenerate_rewards(gmm2, schedule):
    chain, _ = counted_chain(gmm2, schedule, steps=3)
    equal = best_of_n(chain, Scripted(2.0), n=4, k=4)
    assert torch.equal(equal.scores, torch.full((4,), 2.0, dtype=F64))
    with pytest.raises(ValueError, match="NaN for 4 of 4"):
        best_of_n(chain, Scripted(float("nan")), n=4)
    minus_inf = Scripted([1.0] + [float("-inf")] * 4)
    for select in ("max", "resample"):
        g = torch.Generator().manual_seed(1)
        result = best_of_n(chain, minus_inf, n=5, k=3, select=select, generator=g)
        if select == "resample":
            assert torch.equal(result.scores, torch.ones(3, dtype=F64))  # -inf particles have zero weight
        else:
            assert result.scores[0] == 1.0
    with pytest.raises(ValueError, match="every sample has zero weight"):
        best_of_n(chain, Scripted(float("-inf")), n=3, select="resample")
    single = best_of_n(chain, Scripted(0.0), n=1)
    assert single.x.shape == (1, 2)


def test_importance_resampling_approaches_the_tilted_target(gmm2, schedule):
    """Resampled best-of-N with many samples has the exactly tilted mixture's mean (within 5 SE)."""
    chain = gaussian_mixture_chain(gmm2, schedule, 25, DPMSolverPP(3))
    reward = linear_reward(torch.tensor([0.8, -0.6], dtype=F64))
    tilted, _ = gmm2.tilted(reward.precision, reward.shift, temperature=1.0)
    result = best_of_n(chain, reward, n=20000, k=4000, select="resample", batch_size=5000,
                       generator=torch.Generator().manual_seed(2))  # fmt: skip
    se = (torch.diagonal(tilted.covariance()) / 4000).sqrt()
    assert torch.all((result.x.mean(0) - tilted.mean()).abs() < 5 * se), (result.x.mean(0), tilted.mean())
