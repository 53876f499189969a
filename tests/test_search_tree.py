"""Diffusion Tree Sampling / Search: exact NFE, convergence toward the tilted target, mode finding, the soft
backup, the memory bound and degenerate rewards."""

import math

import pytest
import torch
from counting import count_model_rows

from rewards import least_squares_reward, linear_reward
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP
from search.chain import gaussian_mixture_chain, stochastic_step
from search.metrics import sliced_wasserstein
from search.tree import TreeNode, diffusion_tree_sampling, soft_value

F64 = torch.float64
TEMPERATURE = 0.5


def sde_chain(gmm2, schedule, steps=8):
    return gaussian_mixture_chain(gmm2, schedule, steps, SDEDPMSolverPP(2, eta=1.0))


def linear():
    return linear_reward(torch.tensor([0.8, -0.6], dtype=F64))


@pytest.mark.parametrize("greedy", [False, True])
def test_nfe_equals_an_independent_count_and_respects_the_budget(gmm2, schedule, greedy):
    chain = sde_chain(gmm2, schedule, 6)
    counter = count_model_rows(chain)
    result = diffusion_tree_sampling(chain, linear(), max_nfe=57, greedy=greedy,
                                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert result.nfe == counter.rows == sum(h["nfe"] for h in result.history) <= 57
    assert result.history[0]["nfe"] == chain.trajectory_nfe()
    assert result.reward_calls == len(result.history) == result.all_scores.shape[0] > 1
    with pytest.raises(ValueError, match="smaller than one rollout"):
        diffusion_tree_sampling(chain, linear(), max_nfe=chain.trajectory_nfe() - 1)


def test_rollouts_and_budget_together_stop_at_the_first_limit(gmm2, schedule):
    chain = sde_chain(gmm2, schedule, 6)
    few = diffusion_tree_sampling(chain, linear(), rollouts=3, max_nfe=1000)
    assert len(few.history) == 3 and few.nfe <= 1000


def test_dts_approaches_the_tilted_target_as_rollouts_grow(gmm2, schedule):
    reward = linear()
    tilted, _ = gmm2.tilted(reward.precision, reward.shift, temperature=TEMPERATURE)
    exact = tilted.sample(4000, generator=torch.Generator().manual_seed(9))
    chain = sde_chain(gmm2, schedule)
    errors = {}
    for rollouts in (100, 800):
        g = torch.Generator().manual_seed(0)
        result = diffusion_tree_sampling(chain, reward, rollouts=rollouts, temperature=TEMPERATURE, k=500,
                                         max_children=None, widening=(2.0, 0.5), generator=g)  # fmt: skip
        errors[rollouts] = sliced_wasserstein(result.x, exact, generator=torch.Generator().manual_seed(0))
    prior = gmm2.sample(4000, generator=torch.Generator().manual_seed(9))
    untilted = sliced_wasserstein(prior, exact, generator=torch.Generator().manual_seed(0))
    # progressive widening (children <= 2 (N + 1)^0.5); measured over seeds 0-3: 100 rollouts 0.65-0.74,
    # 800 rollouts 0.36-0.47; untilted: 2.2
    assert errors[800] < 0.8 * errors[100] < 0.4 * untilted, (errors, untilted)


@pytest.mark.parametrize("component", [0, 1, 2])
def test_dts_star_finds_the_highest_reward_mode(gmm2, schedule, component):
    target = gmm2.means[component]
    reward = least_squares_reward(torch.eye(2, dtype=F64), target, weight=2.0)
    result = diffusion_tree_sampling(sde_chain(gmm2, schedule), reward, rollouts=150, greedy=True, k=3,
                                     generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert result.scores[0] == result.all_scores.max()
    assert torch.all(result.scores[:-1] >= result.scores[1:])
    nearest = int(torch.argmin((gmm2.means - result.x[0]).norm(dim=1)))
    assert nearest == component


def test_soft_value_backup_on_a_hand_built_tree():
    t = 0.5
    root, a, b = TreeNode(None, -1), TreeNode(None, 0), TreeNode(None, 1, value=2.0)
    leaves = [TreeNode(None, 1, value=v) for v in (1.0, 3.0)]
    a.children, root.children = leaves, [a, b]
    assert a.backup(t) == pytest.approx(t * math.log((math.exp(1 / t) + math.exp(3 / t)) / 2))
    v_a = a.value
    assert root.backup(t) == pytest.approx(t * math.log((math.exp(v_a / t) + math.exp(2 / t)) / 2))
    # golden numbers: v(a) = 3 + (log(1 + e^-4) - log 2) / 2 = 2.6625013737, v(root) = 2.4337808305
    assert v_a == pytest.approx(2.6625013737) and root.value == pytest.approx(2.4337808305)
    # an unstored child counts like a stored one of the same value
    a.children = leaves[:1]
    a.add_unstored(3.0, t)
    assert a.backup(t) == pytest.approx(v_a)
    assert soft_value([1.5, 1.5, 1.5], t) == pytest.approx(1.5)
    assert soft_value([-math.inf, 0.0], t) == pytest.approx(-t * math.log(2))
    assert soft_value([-math.inf], t) == -math.inf
    # large values do not overflow
    assert soft_value([1000.0, 1000.0], 0.01) == pytest.approx(1000.0)
    # the Boltzmann descent probabilities of the leaves sum to one
    assert sum(math.exp(lp) for _, lp in root.leaves(temperature=t)) == pytest.approx(1.0)


def test_max_nodes_bounds_the_tree(gmm2, schedule):
    chain = sde_chain(gmm2, schedule, 5)
    result = diffusion_tree_sampling(chain, linear(), rollouts=40, max_nodes=20, k=10,
                                     generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert max(h["nodes"] for h in result.history) <= 20
    assert not all(h["stored"] for h in result.history)
    assert len(result.history) == 40 and result.x.shape == (10, 2)
    with pytest.raises(ValueError, match="max_nodes"):
        diffusion_tree_sampling(chain, linear(), rollouts=4, max_nodes=5)


def test_nan_reward_is_an_error(gmm2, schedule):
    def nan_reward(samples, prompts=None):
        return torch.full((samples.shape[0],), math.nan, dtype=F64)

    with pytest.raises(ValueError, match="NaN"):
        diffusion_tree_sampling(sde_chain(gmm2, schedule, 4), nan_reward, rollouts=3)


@pytest.mark.parametrize("greedy", [False, True])
def test_all_equal_rewards(gmm2, schedule, greedy):
    flat = linear_reward(torch.zeros(2, dtype=F64), constant=1.5)
    result = diffusion_tree_sampling(sde_chain(gmm2, schedule, 4), flat, rollouts=20, greedy=greedy, k=4,
                                     generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.all(result.scores == 1.5) and torch.all(result.all_scores == 1.5)
    assert result.x.shape == (4, 2) and torch.isfinite(result.x).all()


def test_single_rollout(gmm2, schedule):
    chain = sde_chain(gmm2, schedule, 4)
    g = torch.Generator().manual_seed(4)
    result = diffusion_tree_sampling(chain, linear(), rollouts=1, k=5, generator=g)
    assert result.nfe == chain.trajectory_nfe()
    assert torch.all(result.x == result.x[0]) and result.all_scores.shape == (1,)
    star = diffusion_tree_sampling(chain, linear(), rollouts=1, greedy=True)
    assert star.x.shape == (1, 2)
    with pytest.raises(ValueError):
        diffusion_tree_sampling(chain, linear(), rollouts=1, greedy=True, k=2)


def test_the_deterministic_last_step_is_never_branched(gmm2, schedule):
    """The grid ends at sigma = 0, where an SDE step draws no noise: a node there gets one child, so no
    rollout is spent re-making the same sample, and a small tree is exhausted exactly."""
    chain = sde_chain(gmm2, schedule, 3)
    assert [stochastic_step(chain, i) for i in range(3)] == [True, True, False]
    result = diffusion_tree_sampling(chain, linear(), rollouts=1000, max_children=2, greedy=True,
                                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    # 2 prior draws x 2 children at step 1 x 2 at step 2 x 1 at the last step: 8 distinct leaves, then done
    assert len(result.history) == 8 and len(set(result.all_scores.tolist())) == 8
    assert sorted(h["expanded_at"] for h in result.history) == [0, 0, 1, 1, 2, 2, 2, 2]
    ode = gaussian_mixture_chain(gmm2, schedule, 3, DPMSolverPP(2))
    assert not any(stochastic_step(ode, i) for i in range(3))
