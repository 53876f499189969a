"""search.trace: the anytime curve (NFE spent, best reward scored so far) that every method records through
score_samples, per thread, and only inside ``recording()``."""

import pytest
import torch

from rewards import linear_reward
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP
from search import SEARCH_METHODS, get_search, run_search
from search.chain import gaussian_mixture_chain
from search.lockstep import run_lockstep
from search.trace import SearchTrace, recording


class Recorded:
    """A linear reward that keeps every score it returns."""

    def __init__(self):
        self.reward = linear_reward(torch.tensor([0.8, -0.6], dtype=torch.float64))
        self.scores = []

    def __call__(self, samples, prompts=None):
        scores = self.reward(samples, prompts)
        self.scores.append(scores.detach().clone())
        return scores


def test_points_keep_improvements_and_move_the_end_of_flat_stretches():
    trace = SearchTrace()
    for nfe, scores in [(4, [0.1, 0.3]), (4, [0.5]), (8, [0.2]), (12, [0.4]), (16, [float("-inf"), 0.9]),
                        (20, [float("-inf")]), (24, [0.0])]:  # fmt: skip
        trace.add(nfe, torch.tensor(scores, dtype=torch.float64))
    assert trace.points == [(4, 0.5), (12, 0.5), (16, 0.9), (24, 0.9)]
    assert trace.as_lists() == [[4, 0.5], [12, 0.5], [16, 0.9], [24, 0.9]]


@pytest.mark.parametrize("name", sorted(SEARCH_METHODS))
def test_every_method_records_its_best_score_against_nfe(gmm2, schedule, name):
    stochastic = get_search(name).stochastic
    chain = gaussian_mixture_chain(gmm2, schedule, 5, SDEDPMSolverPP(2) if stochastic else DPMSolverPP(2))
    reward = Recorded()
    with recording() as trace:
        result = run_search(name, chain, reward, particles=4, generator=torch.Generator().manual_seed(0))
    points = trace.points
    assert points and points[-1][0] <= result.nfe
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))
    assert points[-1][1] == pytest.approx(float(torch.cat(reward.scores).max()))  # the best of all it scored
    assert points[-1][1] >= float(result.scores[0]) - 1e-12


def test_nothing_is_recorded_outside_recording_and_threads_record_apart(gmm2, schedule):
    chain = gaussian_mixture_chain(gmm2, schedule, 4, SDEDPMSolverPP(2))
    reward = linear_reward(torch.tensor([1.0, 0.0], dtype=torch.float64))
    run_search("smc", chain, reward, particles=2)  # no recording active: no error, nothing kept

    def search(seed, particles):
        def run():
            with recording() as trace:
                result = run_search("smc", chain, reward, particles=particles,
                                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
            return trace.points, result.nfe

        return run

    (small, nfe_small), (large, nfe_large) = run_lockstep([search(0, 2), search(1, 8)])
    assert small[-1][0] == nfe_small == 2 * 4 and large[-1][0] == nfe_large == 8 * 4
