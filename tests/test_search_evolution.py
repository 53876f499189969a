"""EvoSearch (He et al. 2025): exact NFE against the cost formula and the model's own row count, budget
planning, reward gain over best-of-N at the same NFE, the Gaussian-preserving noise mutation, elitism and the
degenerate cases."""

import math

import pytest
import torch
from counting import count_model_rows

from rewards import least_squares_reward
from samplers.analytic import GaussianMixture
from samplers.solvers import DPMSolver, DPMSolverPP
from search.best_of_n import best_of_n
from search.chain import gaussian_mixture_chain
from search.evolution import (
    elite_indices,
    evo_search,
    evo_search_nfe,
    evolution_schedule,
    mutate_noise,
    mutate_state,
    tournament_select,
)

F64 = torch.float64
STEPS = 10
SEEDS = range(8)


@pytest.fixture(scope="module")
def gmm16() -> GaussianMixture:
    return GaussianMixture.random(dim=16, n_components=3, n_classes=1, seed=1)


@pytest.fixture(scope="module")
def reward16(gmm16):
    """-|x - b|^2 with b halfway between the first two modes (a low-density target)."""
    b = 0.5 * (gmm16.means[0] + gmm16.means[1])
    return least_squares_reward(torch.eye(16, dtype=F64), b)


def counted_chain(gmm, schedule, solver=None):
    chain = gaussian_mixture_chain(gmm, schedule, STEPS, solver or DPMSolverPP(2))
    return chain, count_model_rows(chain)


# --------------------------------------------------------------------------- exact NFE and planning


@pytest.mark.parametrize("solver", [DPMSolverPP(2), DPMSolver(2)], ids=["multistep", "singlestep"])
def test_nfe_matches_formula_and_model_rows(gmm16, reward16, schedule, solver):
    chain, counter = counted_chain(gmm16, schedule, solver)
    plan, sizes, elite = [0, 0, 3, 3, 6], [6, 5, 4, 4, 3], 2
    g = torch.Generator().manual_seed(0)
    result = evo_search(chain, reward16, population=sizes, schedule=plan, elite=elite, k=3, batch_size=3,
                        generator=g)  # fmt: skip
    cost = [chain.segment_nfe(s, STEPS) for s in plan]
    formula = sizes[0] * cost[0] + sum((p - elite) * c for p, c in zip(sizes[1:], cost[1:], strict=True))
    assert result.nfe == counter.rows == evo_search_nfe(chain, plan, sizes, elite) == formula
    assert result.reward_calls == result.all_scores.shape[0] == 6 + 3 + 2 + 2 + 1
    assert [h["step"] for h in result.history] == plan and result.history[-1]["nfe"] == result.nfe
    torch.testing.assert_close(result.scores, torch.sort(result.all_scores, descending=True).values[:3])
    torch.testing.assert_close(reward16(result.x), result.scores)


@pytest.mark.parametrize("budget", [100, 237, 401, 999])
def test_budget_planning_never_exceeds_and_is_maximal(gmm16, reward16, schedule, budget):
    chain, counter = counted_chain(gmm16, schedule)
    g = torch.Generator().manual_seed(1)
    result = evo_search(chain, reward16, population=6, max_nfe=budget, until=0.6, generator=g)
    plan = [h["step"] for h in result.history]
    assert plan == evolution_schedule(STEPS, len(plan), 0.6)
    assert result.nfe == counter.rows == evo_search_nfe(chain, plan, 6, 1) <= budget
    assert evo_search_nfe(chain, evolution_schedule(STEPS, len(plan) + 1, 0.6), 6, 1) > budget
    # an explicit schedule runs its longest prefix that fits
    counter.rows = 0
    plan = [0, 0, 2, 4, 6, 8]
    fixed = evo_search(chain, reward16, population=6, schedule=plan, max_nfe=budget, generator=g)
    steps = [h["step"] for h in fixed.history]
    assert steps == plan[: len(steps)]
    assert fixed.nfe == counter.rows == evo_search_nfe(chain, steps, 6, 1) <= budget
    if len(steps) < 6:
        assert evo_search_nfe(chain, plan[: len(steps) + 1], 6, 1) > budget


# --------------------------------------------------------------------------- quality


def test_beats_best_of_n_at_the_same_nfe(gmm16, reward16, schedule):
    chain, _ = counted_chain(gmm16, schedule)
    budget, evo, bon = 400, [], []
    for s in SEEDS:
        e = evo_search(chain, reward16, population=8, until=0.7, beta=0.3, max_nfe=budget,
                       generator=torch.Generator().manual_seed(s))  # fmt: skip
        n = best_of_n(chain, reward16, max_nfe=budget, generator=torch.Generator().manual_seed(s))
        assert e.nfe <= budget and n.nfe <= budget
        evo.append(float(e.scores[0]))
        bon.append(float(n.scores[0]))
    mean_evo, mean_bon = sum(evo) / len(evo), sum(bon) / len(bon)
    assert mean_evo > mean_bon + 0.5, (mean_evo, mean_bon)  # measured: -2.37 vs -3.52
    assert sum(a > b for a, b in zip(evo, bon, strict=True)) >= 6


# --------------------------------------------------------------------------- operators


def test_noise_mutation_preserves_the_gaussian():
    g = torch.Generator().manual_seed(0)
    scale, beta, n = 1.7, 0.6, 200_000
    x = scale * torch.randn(n, 4, generator=g, dtype=F64)
    y = mutate_noise(x, beta, scale, g)
    assert y.mean(0).abs().max() < 0.02 * scale
    identity = torch.eye(4, dtype=F64)
    torch.testing.assert_close(torch.cov(y.T), scale**2 * identity, atol=0.03 * scale**2, rtol=0)
    corr = float((x * y).mean() / scale**2)  # the child stays correlated with its parent
    assert abs(corr - math.sqrt(1 - beta**2)) < 0.01
    step = mutate_state(torch.zeros(n, 2, dtype=F64), 0.5, 0.8, g)
    assert abs(float(step.std()) - 0.4) < 0.005
    with pytest.raises(ValueError, match="0 < beta <= 1"):
        mutate_noise(x, 1.5, scale)


def test_selection_operators():
    scores = torch.tensor([0.0, 3.0, 1.0, 3.0, -1.0], dtype=F64)
    assert elite_indices(scores, 3).tolist() == [1, 3, 2]
    g = torch.Generator().manual_seed(0)
    strong = tournament_select(scores, 500, 20, g)
    assert set(strong.tolist()) <= {1, 3}
    uniform = tournament_select(scores, 5000, 1, g)
    assert torch.bincount(uniform, minlength=5).min() > 800
    flat = tournament_select(torch.zeros(4, dtype=F64), 100, 3, g)  # all-equal: any index, no error
    assert flat.min() >= 0 and flat.max() < 4


def test_elites_survive_and_best_never_drops(gmm16, reward16, schedule):
    chain, _ = counted_chain(gmm16, schedule)
    result = evo_search(chain, reward16, population=6, schedule=[0, 0, 2, 2, 5], elite=2, beta=0.8,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    best = [h["max_reward"] for h in result.history]
    assert best == sorted(best)
    assert all(h["max_reward"] == h["best_reward"] for h in result.history)
    # the elites are not re-run: generation 0's best sample is returned unchanged when never beaten
    first = result.all_scores[:6]
    if float(first.max()) == float(result.scores[0]):
        torch.testing.assert_close(reward16(result.x[:1]), first.max().reshape(1))


# --------------------------------------------------------------------------- degenerate cases


def test_degenerate_cases(gmm16, reward16, schedule):
    chain, counter = counted_chain(gmm16, schedule)
    g = torch.Generator().manual_seed(0)

    def nan_reward(x, prompts=None):
        return torch.full((x.shape[0],), float("nan"), dtype=F64)

    with pytest.raises(ValueError, match="NaN"):
        evo_search(chain, nan_reward, population=3, generations=2, generator=g)

    def flat_reward(x, prompts=None):
        return torch.zeros(x.shape[0], dtype=F64)

    counter.rows = 0
    flat = evo_search(chain, flat_reward, population=4, schedule=[0, 0, 3], generator=g)
    assert flat.nfe == counter.rows == evo_search_nfe(chain, [0, 0, 3], 4, 1)
    assert (flat.all_scores == 0).all()

    single = evo_search(chain, reward16, population=1, elite=0, schedule=[0, 0, 4], generator=g)
    assert single.reward_calls == 3 and single.nfe == evo_search_nfe(chain, [0, 0, 4], 1, 0)
    assert evo_search(chain, reward16, population=1, max_nfe=50, generator=g).nfe == STEPS  # best of 1

    with pytest.raises(ValueError, match="smaller than generation 0"):
        evo_search(chain, reward16, population=8, max_nfe=79, generator=g)
    with pytest.raises(ValueError, match="elite"):
        evo_search(chain, reward16, population=1, generations=2, generator=g)
    with pytest.raises(ValueError, match="start at grid index 0"):
        evo_search(chain, reward16, schedule=[2, 4], generator=g)
    with pytest.raises(ValueError, match="nondecreasing"):
        evo_search(chain, reward16, schedule=[0, 4, 2], generator=g)
    with pytest.raises(ValueError, match="generations, schedule or max_nfe"):
        evo_search(chain, reward16)
    with pytest.raises(ValueError, match="3 sizes for 2 generations"):
        evo_search(chain, reward16, population=[4, 4, 4], generations=2)
