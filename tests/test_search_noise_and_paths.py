"""Zero-order search over noises and search over paths (Ma et al. 2025, Sec. 3.1): exact NFE, reward gains
against random sampling and best-of-N at the same budget, the pivot's monotone climb, the path schedule."""

import math

import pytest
import torch
from counting import Scripted, count_model_rows

from rewards import linear_reward
from samplers.solvers import DPMSolver, DPMSolverPP
from search.best_of_n import best_of_n
from search.chain import advance, gaussian_mixture_chain
from search.noise_search import pcn_neighbours, sphere_neighbours, zero_order_search
from search.path_search import path_cost, path_schedule, path_search

F64 = torch.float64
STEPS = 10
BUDGET = 400  # 40 trajectories of 10 NFE
SEEDS = range(8)
PATHS = {"start": 2, "back": 1, "forward": 2, "branches": 4}


@pytest.fixture(scope="module")
def reward():
    return linear_reward(torch.tensor([0.8, -0.6], dtype=F64))


def counted_chain(gmm, schedule, steps=STEPS, solver=None):
    chain = gaussian_mixture_chain(gmm, schedule, steps, solver or DPMSolverPP(2))
    return chain, count_model_rows(chain)


def seeded(method, chain, reward, **kw):
    """One result per seed of SEEDS."""
    return [method(chain, reward, generator=torch.Generator().manual_seed(s), **kw) for s in SEEDS]


def mean_best(results) -> float:
    return sum(float(r.scores[0]) for r in results) / len(results)


# --------------------------------------------------------------------------- (a) exact NFE


@pytest.mark.parametrize("neighbourhood", ["sphere", "pcn"])
def test_zero_order_nfe_is_exact_and_within_budget(gmm2, schedule, reward, neighbourhood):
    chain, counter = counted_chain(gmm2, schedule)
    g = torch.Generator().manual_seed(0)
    result = zero_order_search(chain, reward, candidates=3, max_nfe=BUDGET + 9, neighbourhood=neighbourhood,
                               k=5, batch_size=2, generator=g)  # fmt: skip
    iterations = (40 - 1) // 3  # 40 trajectories paid for: the pivot's, then 3 per iteration
    assert len(result.history) == 1 + iterations
    assert result.nfe == counter.rows == (1 + 3 * iterations) * STEPS <= BUDGET + 9
    assert result.reward_calls == result.all_scores.shape[0] == 1 + 3 * iterations
    torch.testing.assert_close(result.scores, torch.sort(result.all_scores, descending=True).values[:5])
    torch.testing.assert_close(reward(result.x), result.scores)
    fixed = zero_order_search(chain, reward, candidates=2, iterations=4, generator=g)
    assert fixed.nfe == (1 + 2 * 4) * STEPS and len(fixed.history) == 5


@pytest.mark.parametrize("solver", [DPMSolverPP(2), DPMSolver(2)], ids=["multistep", "singlestep"])
def test_path_search_cost_formula_is_exact(gmm2, schedule, reward, solver):
    chain, counter = counted_chain(gmm2, schedule, solver=solver)
    per_path = path_cost(chain, **PATHS)
    if solver.multistep:  # C(0, 2) + M * (7 rounds of 2 steps + look-ahead, then 2 steps to the end)
        assert per_path == 2 + 4 * (7 * 3 + 2) == 94
    g = torch.Generator().manual_seed(0)
    result = path_search(chain, reward, max_nfe=BUDGET, batch_size=5, generator=g, **PATHS)
    assert len(result.all_scores) == BUDGET // per_path
    assert result.nfe == counter.rows == (BUDGET // per_path) * per_path <= BUDGET
    assert result.reward_calls == 8 * (BUDGET // per_path) * 4  # 8 rounds of N * M look-aheads
    with pytest.raises(ValueError, match="exactly one of paths and max_nfe"):
        path_search(chain, reward, paths=2, max_nfe=BUDGET)


def test_advance_in_batches_matches_one_batch(gmm2, schedule):
    chain, _ = counted_chain(gmm2, schedule)
    state = chain.prior(7, torch.Generator().manual_seed(0))
    whole, parts = advance(chain, state, 6), advance(chain, state, 6, batch_size=3)
    assert whole.step == parts.step == 6
    torch.testing.assert_close(whole.x, parts.x, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- (b) reward gains
# Measured with 8 seeds at 400 NFE (10-step DPM-Solver++(2)): random samples have mean reward -0.38 (sd 1.54);
# best-of-40 2.66; zero-order "sphere" 1.31 (its pivot rises 1.23 on average, but it never searches the
# norm of 2-D noise); zero-order "pcn" 4.07; search over paths (N = 4, M = 4) 3.97.


@pytest.fixture(scope="module")
def baselines(gmm2, schedule, reward):
    chain, _ = counted_chain(gmm2, schedule)
    random = best_of_n(chain, reward, n=4000, k=4000, generator=torch.Generator().manual_seed(99)).all_scores
    bon = mean_best(seeded(best_of_n, chain, reward, max_nfe=BUDGET))
    return chain, float(random.mean()), float(random.std()), bon


def test_zero_order_sphere_climbs_well_above_random_samples(baselines, reward):
    chain, random_mean, random_sd, _ = baselines
    results = seeded(zero_order_search, chain, reward, max_nfe=BUDGET)
    assert mean_best(results) > random_mean + random_sd
    gains = [r.history[-1]["pivot_reward"] - r.history[0]["pivot_reward"] for r in results]
    assert sum(gains) / len(gains) > 0.5 * random_sd  # the pivot moves, and uphill
    assert all(any(h["moved"] for h in r.history) for r in results)


def test_zero_order_pcn_and_path_search_beat_best_of_n(baselines, reward):
    chain, _, _, bon = baselines
    pcn = mean_best(seeded(zero_order_search, chain, reward, max_nfe=BUDGET, neighbourhood="pcn"))
    paths = mean_best(seeded(path_search, chain, reward, max_nfe=BUDGET, **PATHS))
    assert pcn > bon + 0.5 and paths > bon + 0.5, (pcn, paths, bon)


# --------------------------------------------------------------------------- (c) the pivot's climb


@pytest.mark.parametrize("neighbourhood", ["sphere", "pcn"])
def test_pivot_reward_is_the_running_maximum(gmm2, schedule, reward, neighbourhood):
    chain, _ = counted_chain(gmm2, schedule)
    result = zero_order_search(chain, reward, candidates=2, iterations=12, neighbourhood=neighbourhood,
                               generator=torch.Generator().manual_seed(4))  # fmt: skip
    pivot = torch.tensor([h["pivot_reward"] for h in result.history], dtype=F64)
    assert torch.all(pivot[1:] >= pivot[:-1])
    running_max = torch.cummax(result.all_scores, 0).values[torch.arange(13) * 2]  # after each iteration
    torch.testing.assert_close(pivot, running_max)
    moved = torch.tensor([h["moved"] for h in result.history[1:]])
    assert torch.equal(moved, pivot[1:] > pivot[:-1])


@pytest.mark.parametrize("neighbourhood", ["sphere", "pcn"])
def test_candidates_are_drawn_around_the_pivot(gmm2, schedule, reward, neighbourhood):
    """A tiny neighbourhood gives candidates (hence samples and rewards) next to the pivot's."""
    chain, _ = counted_chain(gmm2, schedule, steps=4)
    g = torch.Generator().manual_seed(0)
    result = zero_order_search(chain, reward, candidates=3, iterations=3, radius=1e-6,
                               neighbourhood=neighbourhood, generator=g)  # fmt: skip
    spread = result.all_scores - result.all_scores[0]
    assert float(spread.abs().max()) < 1e-4 and float(spread.abs().max()) > 0


def test_fixed_point_restarts_keep_the_best_sample(gmm2, schedule):
    chain, _ = counted_chain(gmm2, schedule, steps=4)
    result = zero_order_search(chain, Scripted(1.0), candidates=2, iterations=7, patience=2)
    # equal rewards never move the pivot: restarts at iterations 3 and 6 (after 2 stale iterations each)
    assert [h["restarted"] for h in result.history[1:]] == [False, False, True, False, False, True, False]
    assert [h["moved"] for h in result.history[1:]] == [False, False, True, False, False, True, False]
    best = [h["best_reward"] for h in result.history]
    assert best == sorted(best)


# --------------------------------------------------------------------------- neighbourhoods


def test_sphere_neighbours_stay_on_the_pivot_sphere_at_the_set_angle():
    g = torch.Generator().manual_seed(0)
    pivot = torch.randn(1, 10, 100, generator=g, dtype=F64)
    for radius in (0.1, 0.5, 2.0):
        c = sphere_neighbours(pivot, 64, radius, g)
        assert c.shape == (64, 10, 100)
        torch.testing.assert_close(c.flatten(1).norm(dim=1), pivot.norm().expand(64))
        cos = (c.flatten(1) @ pivot.flatten()) / pivot.norm() ** 2
        angle = torch.arccos(cos.clamp(-1, 1))
        assert abs(float(angle.mean()) - math.atan(radius)) < 0.03 * math.atan(radius) + 0.01


def test_pcn_neighbours_preserve_a_gaussian_prior():
    g = torch.Generator().manual_seed(0)
    pivots, fresh = 2.0 * torch.randn(2, 50000, 2, generator=g, dtype=F64)  # both from the prior N(0, 4 I)
    c = pcn_neighbours(pivots, fresh, 0.6)
    torch.testing.assert_close(torch.cov(c.T), 4.0 * torch.eye(2, dtype=F64), atol=0.1, rtol=0)
    torch.testing.assert_close(c[:1], 0.8 * pivots[:1] + 0.6 * fresh[:1])


# --------------------------------------------------------------------------- (d) degenerate cases


def test_degenerate_cases(gmm2, schedule, reward):
    chain, _ = counted_chain(gmm2, schedule, steps=4)
    equal = zero_order_search(chain, Scripted(2.0), candidates=3, iterations=3, k=2)
    assert torch.equal(equal.scores, torch.full((2,), 2.0, dtype=F64))
    assert not any(h["moved"] for h in equal.history)  # a tie is not an improvement
    same = path_search(chain, Scripted(2.0), paths=3, branches=2, start=1, back=1, forward=2, k=3)
    assert torch.equal(same.scores, torch.full((3,), 2.0, dtype=F64))
    for method, kw in [(zero_order_search, {"iterations": 2}), (path_search, {"paths": 2})]:
        with pytest.raises(ValueError, match="NaN for"):
            method(chain, Scripted(float("nan")), **kw)
    with pytest.raises(ValueError, match="smaller than one trajectory"):
        zero_order_search(chain, reward, max_nfe=3)
    cost = path_cost(chain, 2, 1, 1, 2)
    with pytest.raises(ValueError, match="smaller than one path"):
        path_search(chain, reward, max_nfe=cost - 1, branches=2, start=1, back=1, forward=2)
    one = zero_order_search(chain, reward, candidates=1, iterations=3)
    assert one.x.shape == (1, 2) and one.all_scores.shape == (4,)
    only_pivot = zero_order_search(chain, reward, max_nfe=4 * 2)  # pays for the pivot and no iteration
    assert len(only_pivot.history) == 1 and only_pivot.nfe == 4
    single = path_search(chain, reward, paths=1, branches=1, start=1, back=1, forward=2)
    assert single.x.shape == (1, 2) and single.all_scores.shape == (1,)
    with pytest.raises(ValueError, match="1 <= back < forward"):
        path_search(chain, reward, paths=2, back=2, forward=2)
    with pytest.raises(ValueError, match="back <= start < steps"):
        path_search(chain, reward, paths=2, start=4)
    with pytest.raises(ValueError, match="radius must be in"):
        zero_order_search(chain, reward, iterations=1, neighbourhood="pcn", radius=1.5)
    with pytest.raises(ValueError, match="exactly one of iterations and max_nfe"):
        zero_order_search(chain, reward)


# --------------------------------------------------------------------------- (e) the path schedule


def test_path_search_keeps_n_and_follows_its_schedule(gmm2, schedule, reward):
    chain, _ = counted_chain(gmm2, schedule)
    calls = []
    renoise = chain.renoise

    def spy(state, to_step, generator=None):  # what the search really does, not what it records
        calls.append((state.step, to_step, len(state)))
        return renoise(state, to_step, generator)

    chain.renoise = spy
    result = path_search(chain, reward, paths=3, branches=5, start=3, back=2, forward=5, k=2,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    rounds = path_schedule(STEPS, start=3, back=2, forward=5)
    assert rounds == [(3, 1, 6), (6, 4, 9), (9, 7, 10)]  # the last round is clipped to the clean end
    assert [(h["step"], h["renoise_to"], h["to"]) for h in result.history] == rounds
    assert calls == [(i, to, 15) for i, to, _ in rounds]
    assert all(h["candidates"] == 15 and h["kept"] == 3 for h in result.history)
    assert result.all_scores.shape == (3,) and result.scores.shape == (2,)
    torch.testing.assert_close(reward(result.x), result.scores)
    assert float(result.scores[0]) == result.history[-1]["max_reward"]  # the last round scores clean samples
