"""Evolutionary search over the denoising trajectory (He et al. 2025, "Scaling Image and Video Generation via
Test-Time Evolutionary Search", EvoSearch, arXiv:2505.17618).

The paper recasts inference-time scaling as evolution of a population along the denoising trajectory: a
population of initial noises is generated and scored, parents are chosen by selection (elitism plus
tournament selection), children are made by mutation (a Gaussian-preserving mutation of the initial noise,
a noise-level-scaled one of intermediate states), and the population moves forward along the trajectory
at the points of an *evolution schedule*, with a *population-size schedule* setting how many individuals
each generation has. The rules below are stated exactly so they can be checked against the paper's Sec. 3
(only its abstract and secondary summaries were at hand when this was written; the full-trajectory fitness
and the sigma_t-scaled state mutation are this module's reading). What is implemented here, exactly:

* Evolution schedule: grid indices ``s_0 = 0 <= s_1 <= ... <= s_{G-1} < steps``, one generation at each
  (a repeated index is several generations at the same point; all zeros is a genetic algorithm over the
  initial noise alone). Default (:func:`evolution_schedule`): G points spread evenly over the grid
  indices ``0 .. round(until * steps)``. Population schedule: ``population`` is one size for every
  generation or a list ``p_0, ..., p_{G-1}``.
* Fitness: the reward of the sample at the end of the individual's trajectory, run from its state at
  ``s_g`` to the end with the chain's (deterministic ODE) solver. The run passes through every later
  schedule point; the state there is kept, so moving the population forward costs no extra model call.
* Generation 0: ``p_0`` draws of ``chain.prior``, each run to the end and scored.
* Generation g >= 1, at grid index ``s_g``, from the scored population of generation g-1:
  - elitism: the ``elite`` best individuals survive unchanged (their state, sample and fitness are kept;
    they are not run again: with a deterministic solver their continuation is the sample already scored);
  - tournament selection: each of the ``p_g - elite`` children has a parent drawn as the fittest of
    ``tournament`` individuals drawn uniformly with replacement (ties: the first drawn);
  - mutation of the parent's state at ``s_g`` (:func:`mutate_noise`, :func:`mutate_state`):
    at ``s_g = 0``, ``x' = sqrt(1 - beta^2) x + beta * s * eps`` with ``s = chain.noise_scale`` and
    eps ~ N(0, I), which maps N(0, s^2 I) to itself (the initial noise stays on the prior); at
    ``s_g > 0``, ``x' = x + beta * sigma_{s_g} * eps`` with ``sigma_{s_g}`` the grid's noise level there
    (a perturbation the size of the noise still in x_t, shrinking to nothing as t -> 0);
  - the children are run to the end and scored; the new population is elites + children.
* Chain states of children: at index 0 ``chain.start(x')``; at an intermediate index a
  :class:`~search.chain.ChainState` at step ``s_g`` holding ``x'`` and the parent's conditioning rows,
  with an empty multistep history (the solver restarts there, as after :meth:`SolverChain.renoise`): the
  parent's history belongs to the unmutated x. Only x (and conditioning) is kept per schedule point.
* Cost, with ``C(i) = chain.segment_nfe(i, steps)`` the NFE of one particle from grid index i to the end
  (:func:`evo_search_nfe`):

      NFE = p_0 C(0) + sum_{g=1}^{G-1} (p_g - elite) C(s_g)

  and one reward call per scored trajectory (``p_0 + sum (p_g - elite)``). Given ``max_nfe``, the
  generations run are the longest prefix of the schedule whose cost fits; without an explicit schedule or
  ``generations``, G is the largest for which the default schedule fits. A budget that does not pay for
  generation 0 is a ValueError.

The returned samples are the top ``k`` of every trajectory scored (elites are not counted twice). The
solver should be deterministic (an ODE solver such as ``DPMSolverPP``): with a stochastic one the kept
states and fitnesses no longer describe one continuation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from samplers.state import SolverState

from .budget import Budget
from .chain import Chain, ChainState
from .noise import randn
from .result import SearchResult, score_samples
from .selection import TopK, check_selection

__all__ = [
    "elite_indices",
    "evo_search",
    "evo_search_nfe",
    "evolution_schedule",
    "mutate_noise",
    "mutate_state",
    "tournament_select",
]


def evolution_schedule(steps: int, generations: int, until: float = 0.5) -> list[int]:
    """``generations`` grid indices spread evenly (rounded) from 0 to ``round(until * steps)``; the first
    is always 0 (the initial noise). ``until`` in [0, 1): 0 evolves the initial noise only."""
    if generations < 1:
        raise ValueError(f"need at least one generation, got {generations}")
    if not 0 <= until < 1:
        raise ValueError(f"until must be in [0, 1), got {until}")
    last = min(round(until * steps), steps - 1)
    if generations == 1:
        return [0]
    return [round(g * last / (generations - 1)) for g in range(generations)]


def mutate_noise(
    x: torch.Tensor, beta: float, scale: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``sqrt(1 - beta^2) x + beta * scale * eps``, eps ~ N(0, I): maps N(0, scale^2 I) to itself
    (0 < beta <= 1; beta = 1 is a fresh draw)."""
    if not 0 < beta <= 1:
        raise ValueError(f"the initial-noise mutation needs 0 < beta <= 1, got {beta}")
    eps = randn(x.shape, generator, x.dtype, x.device)
    return math.sqrt(1 - beta**2) * x + beta * scale * eps


def mutate_state(
    x: torch.Tensor, beta: float, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x + beta * sigma * eps``, eps ~ N(0, I): the mutation of an intermediate state x_t, with sigma the
    noise level sigma_t at its grid point."""
    eps = randn(x.shape, generator, x.dtype, x.device)
    return x + beta * sigma * eps


def elite_indices(scores: torch.Tensor, elite: int) -> torch.Tensor:
    """Indices of the ``elite`` highest scores, best first (ties by position)."""
    return torch.argsort(scores, descending=True, stable=True)[:elite]


def tournament_select(
    scores: torch.Tensor, n: int, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` parent indices, each the fittest of ``size`` individuals drawn uniformly with replacement
    (ties: the first drawn). ``size = 1`` is uniform selection."""
    if size < 1:
        raise ValueError(f"the tournament size must be a positive integer, got {size}")
    draws = torch.randint(scores.shape[0], (n, size), generator=generator)
    winners = scores.cpu()[draws].argmax(dim=1)
    return draws[torch.arange(n), winners]


def _populations(population: int | Sequence[int], generations: int) -> list[int]:
    sizes = [population] * generations if isinstance(population, int) else [int(p) for p in population]
    if len(sizes) != generations:
        raise ValueError(f"the population schedule has {len(sizes)} sizes for {generations} generations")
    if any(p < 1 for p in sizes):
        raise ValueError(f"population sizes must be positive, got {sizes}")
    return sizes


def evo_search_nfe(chain: Chain, schedule: Sequence[int], population: int | Sequence[int], elite: int) -> int:
    """NFE of :func:`evo_search` over ``schedule``: p_0 C(0) + sum_{g>=1} (p_g - elite) C(s_g), with
    C(i) = ``chain.segment_nfe(i, chain.steps)``."""
    sizes = _populations(population, len(schedule))
    total = sizes[0] * chain.segment_nfe(schedule[0], chain.steps)
    for s, p in zip(schedule[1:], sizes[1:], strict=True):
        total += (p - elite) * chain.segment_nfe(s, chain.steps)
    return total


def _check_schedule(schedule: Sequence[int], steps: int) -> list[int]:
    schedule = [int(s) for s in schedule]
    if not schedule or schedule[0] != 0:
        raise ValueError(f"the evolution schedule must start at grid index 0, got {schedule}")
    if any(b < a for a, b in zip(schedule, schedule[1:], strict=False)) or schedule[-1] >= steps:
        raise ValueError(
            f"the evolution schedule must be nondecreasing grid indices < {steps}, got {schedule}"
        )
    return schedule


def _plan(
    chain: Chain,
    population: int | Sequence[int],
    generations: int | None,
    schedule: Sequence[int] | None,
    until: float,
    elite: int,
    max_nfe: int | None,
) -> list[int]:
    """The schedule actually run (see the module docstring)."""
    if generations is None and not isinstance(population, int):
        generations = len(population)
    if schedule is not None:
        schedule = _check_schedule(schedule, chain.steps)
        if generations is not None and generations != len(schedule):
            raise ValueError(f"generations={generations} but the schedule has {len(schedule)} points")
    elif generations is not None:
        schedule = evolution_schedule(chain.steps, generations, until)
    elif max_nfe is None:
        raise ValueError("give generations, schedule or max_nfe")
    else:  # as many generations as fit (each costs at least one NFE per child)
        schedule = [0]
        children = population - elite
        while children > 0:
            longer = evolution_schedule(chain.steps, len(schedule) + 1, until)
            if evo_search_nfe(chain, longer, population, elite) > max_nfe:
                break
            schedule = longer
    sizes = _populations(population, len(schedule))
    if elite < 0 or elite > sizes[0] or (len(sizes) > 1 and elite >= min(sizes[1:])):
        raise ValueError(f"need 0 <= elite <= p_0 and elite < every later population size, got elite={elite} "
                         f"with populations {sizes}")  # fmt: skip
    if max_nfe is not None:
        first = evo_search_nfe(chain, schedule[:1], sizes[:1], elite)
        if first > max_nfe:
            raise ValueError(f"a budget of {max_nfe} NFE is smaller than generation 0 ({first} NFE)")
        while evo_search_nfe(chain, schedule, sizes[: len(schedule)], elite) > max_nfe:
            schedule = schedule[:-1]
    return schedule


class _Population:
    """Scored individuals: x at each remaining schedule point, conditioning rows, final samples, fitness."""

    def __init__(self, x: dict[int, torch.Tensor], cond: dict[str, torch.Tensor], final: torch.Tensor,
                 scores: torch.Tensor):  # fmt: skip
        self.x, self.cond, self.final, self.scores = x, cond, final, scores

    def take(self, index: torch.Tensor, points: set[int]) -> _Population:
        """Rows ``index``, keeping x only at ``points``."""
        return _Population({i: self.x[i][index.to(self.x[i].device)] for i in points},
                           {k: v[index.to(v.device)] for k, v in self.cond.items()},
                           self.final[index.to(self.final.device)], self.scores[index])  # fmt: skip

    @staticmethod
    def cat(a: _Population, b: _Population) -> _Population:
        return _Population({i: torch.cat([a.x[i], b.x[i]]) for i in b.x},
                           {k: torch.cat([a.cond[k], b.cond[k]]) for k in b.cond},
                           torch.cat([a.final, b.final]), torch.cat([a.scores, b.scores]))  # fmt: skip


def _run(
    chain: Chain, state: ChainState, points: set[int], generator: torch.Generator | None, batch_size: int
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run every particle to the end, ``batch_size`` at a time; (final x, x at each grid index in points)."""
    finals, kept = [], {i: [] for i in points}
    for start in range(0, len(state), batch_size):
        part = state[slice(start, start + batch_size)]
        while True:
            if part.step in kept:
                kept[part.step].append(part.x)
            if part.step >= chain.steps:
                break
            part = chain.step(part, generator)
        finals.append(part.x)
    return torch.cat(finals), {i: torch.cat(v) for i, v in kept.items()}


def evo_search(
    chain: Chain,
    reward,
    *,
    population: int | Sequence[int] = 8,
    generations: int | None = None,
    schedule: Sequence[int] | None = None,
    until: float = 0.5,
    elite: int = 1,
    tournament: int = 2,
    beta: float = 0.5,
    max_nfe: int | None = None,
    k: int = 1,
    prompts: Any = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """EvoSearch (see the module docstring for the exact rules and the cost formula).

    Args:
        population: individuals per generation, one size or one per generation (the population schedule).
        generations: G, with the default schedule ``evolution_schedule(steps, G, until)``.
        schedule: the evolution schedule (grid indices, starting at 0, nondecreasing) instead.
        until: how far along the grid the default schedule reaches (fraction of the steps).
        elite: individuals carried over unchanged (0 <= elite < later population sizes).
        tournament: tournament size for parent selection (1: uniform parents).
        beta: mutation strength (in (0, 1] at the initial noise; times sigma_t at intermediate points).
        max_nfe: run the generations that fit (at least generation 0, else ValueError).
        k: how many of the best samples scored to return.

    Returns a :class:`SearchResult` whose ``all_scores`` are the rewards of every trajectory in the order
    scored and whose ``history`` has one record per generation: ``generation``, ``step`` (grid index),
    ``population``, ``children`` (trajectories scored), ``best_reward`` (best so far), ``max_reward`` and
    ``mean_reward`` (of the population) and ``nfe`` (spent so far).
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    if tournament < 1:
        raise ValueError(f"the tournament size must be a positive integer, got {tournament}")
    plan = _plan(chain, population, generations, schedule, until, elite, max_nfe)
    sizes = (
        [population] * len(plan) if isinstance(population, int) else [int(q) for q in population][: len(plan)]
    )
    check_selection("max", k, sizes[0] + sum(p - elite for p in sizes[1:]))
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    top, all_scores, history = TopK(k), [], []

    def evaluate(state: ChainState, g: int) -> _Population:
        final, kept = _run(chain, state, set(plan[g:]), generator, batch_size)
        scores = score_samples(chain, reward, final, prompts)
        top.add(final, scores)
        all_scores.append(scores)
        return _Population(kept, dict(state.solver.cond), final, scores)

    pop = evaluate(chain.prior(sizes[0], generator), 0)
    for g, (point, size) in enumerate(zip(plan, sizes, strict=True)):
        if g > 0:
            points = set(plan[g:])
            elites = pop.take(elite_indices(pop.scores, elite), points)
            parents = tournament_select(pop.scores, size - elite, tournament, generator)
            x = pop.x[point][parents.to(pop.x[point].device)]
            if point == 0:
                state = chain.start(mutate_noise(x, beta, chain.noise_scale, generator))
            else:
                x = mutate_state(x, beta, float(chain.grid.sigma_values[point]), generator)
                cond = {key: v[parents.to(v.device)] for key, v in pop.cond.items()}
                state = ChainState(SolverState(x=x, step=point, cond=cond))
            pop = _Population.cat(elites, evaluate(state, g))
        history.append({"generation": g, "step": point, "population": size,
                        "children": size if g == 0 else size - elite, "best_reward": top.best,
                        "max_reward": float(pop.scores.max()),
                        "mean_reward": float(pop.scores.mean()), "nfe": chain.budget.nfe})  # fmt: skip
    return SearchResult.finish(chain, top.x, top.scores, torch.cat(all_scores), history)
