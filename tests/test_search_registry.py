"""Search methods by name: aliases, what "particles" means for each, and the budget fallback."""

import pytest
import torch

from rewards import linear_reward
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP
from search import SEARCH_METHODS, get_search, run_search
from search.chain import gaussian_mixture_chain


@pytest.fixture(scope="module")
def chains(gmm2, schedule):
    return {
        False: gaussian_mixture_chain(gmm2, schedule, 6, DPMSolverPP(2)),
        True: gaussian_mixture_chain(gmm2, schedule, 6, SDEDPMSolverPP(2)),
    }


def test_names_and_aliases():
    assert set(SEARCH_METHODS) == {"bon", "zero-order", "paths", "beam", "smc", "dts", "evo", "rbf"}
    assert get_search("Best-of-N").name == "bon" and get_search("dts*").name == "dts"
    assert get_search("fk").name == "smc" and get_search("EvoSearch").name == "evo"
    with pytest.raises(ValueError, match="unknown search method 'mcts'"):
        get_search("mcts")


@pytest.mark.parametrize("name", sorted(SEARCH_METHODS))
def test_every_method_runs_from_particles_or_a_budget(chains, name):
    """Every method runs from ``particles`` alone (sized methods use it as their size, the others get the
    budget of that many trajectories) and within a ``max_nfe`` alone."""
    method = get_search(name)
    chain = chains[method.stochastic]
    reward = linear_reward(torch.tensor([0.8, -0.6], dtype=torch.float64))
    result = run_search(name, chain, reward, particles=4, generator=torch.Generator().manual_seed(0))
    assert 0 < result.nfe and result.scores.shape[0] >= 1
    if method.size is None:
        assert result.nfe <= 4 * chain.trajectory_nfe()
    budgeted = run_search(name, chain, reward, max_nfe=120, generator=torch.Generator().manual_seed(0))
    assert budgeted.nfe <= 120


def test_bad_arguments(chains):
    reward = linear_reward(torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="particles, max_nfe or both"):
        run_search("bon", chains[False], reward)
    with pytest.raises(ValueError, match="positive integer"):
        run_search("smc", chains[True], reward, particles=0)
