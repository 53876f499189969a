"""Beam search over denoising steps: keep the B best partial trajectories, branching each into M children.

Diffusion latent beam search (DLBS; Oshima et al. 2025, "Inference-Time Text-to-Video Alignment with
Diffusion Latent Beam Search", arXiv:2501.19252): B beams follow the model's stochastic sampler; at a step
each beam samples M candidate next latents ("sampling K latents per beam and possessing B beams for the next
step"), every candidate is scored by the reward of a prediction of its clean sample, and the B best
candidates are the beams of the next step. It is the fixed-width breadth-first tree search over the
denoising process that Zhang et al. 2025 ("Inference-time Scaling of Diffusion Models through Classical
Search", arXiv:2505.23614) use for global exploration, with selection by the top rewards. DLBS's lookahead
estimator predicts x0 with a few extra deterministic steps; here a candidate is scored by the one-step
Tweedie look-ahead x̂0 of :meth:`search.chain.SolverChain.predict`, whose model call the next step reuses.

The algorithm, with ``S`` the branching steps (:func:`branching_steps`: 0, I, 2I, ... below ``steps - 1``
for ``interval`` I):

1. draw B beams from the chain's prior (grid index 0);
2. at a grid index s in S: evaluate the model at the B beams (``predict``; cached), copy every beam into M
   children (``state[idx]``, multistep history and cache included), take one stochastic step with all B*M
   children (the parent's cached model output serves all its children, only the step noise differs), score
   the children's look-aheads x̂0 at s + 1 and keep the top B (ties broken by position, so a -inf child is
   never kept over a finite one);
3. at any other grid index the B beams take one step normally, unscored;
4. at the end the B final samples are scored and the top ``k`` returned, best first.

The last step never branches: on the usual grids (``final="zero"``) it lands on sigma = 0, where a stochastic
solver adds no noise, so the M children of a beam would coincide.

Cost (exact; :func:`beam_search_nfe`). Model calls are made at grid points: B at every point, except that
the B*M children are evaluated at a point s + 1 reached by a branching step (their look-ahead, reused by
the next step). For a chain with one model call per step (every multistep solver, hence every stochastic
one), counting per particle as everywhere in :mod:`search`::

    NFE = B * (steps + (M - 1) * |S|),   |S| = ceil((steps - 1) / I)

e.g. B * (1 + M * (steps - 1)) for I = 1: slightly less than best-of-N with N = B*M (B*M*steps) since the
children of a beam share its first model call. Given ``max_nfe``, B = max_nfe // (steps + (M - 1) * |S|).
Reward calls: B*M per branching step plus B at the end.

The transitions must be stochastic: with an ODE solver the M children of a beam are identical and the
search degenerates (copies of the best beam crowd out the others). A :class:`~search.chain.SolverChain`
with a deterministic solver is therefore refused unless ``allow_deterministic=True`` (then, with
``children=1``, the search is best-of-B over ODE trajectories: a control for ablations). Other chains are
taken to be stochastic.

History: one record per branching step (``step``: the grid index the children reached, ``max_reward``:
the best child's reward, ``mean_reward``: the kept beams' mean, ``unique``: how many distinct parents the
kept children have, ``lineages``: how many of the B initial noises still have descendants) and a final
record (``step = steps``, ``max_reward``, ``mean_reward`` of the final beams).
"""

from __future__ import annotations

from typing import Any

import torch

from .budget import Budget
from .chain import Chain, ChainState, SolverChain
from .result import SearchResult, score_samples
from .selection import check_selection, particle_count, select_final

__all__ = ["beam_search", "beam_search_nfe", "branching_steps"]


def branching_steps(steps: int, interval: int = 1) -> list[int]:
    """Grid indices s whose step s -> s + 1 branches: 0, interval, 2 interval, ... below ``steps - 1``."""
    if not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval must be a positive integer, got {interval!r}")
    return list(range(0, steps - 1, interval))


def _check_chain(chain: Chain, allow_deterministic: bool) -> None:
    """Refuse chains the cost formula or the branching does not hold for."""
    if chain.trajectory_nfe() != chain.steps:
        raise ValueError(
            f"beam search needs one model call per step (a multistep solver); this chain makes "
            f"{chain.trajectory_nfe()} in {chain.steps} steps"
        )
    if isinstance(chain, SolverChain) and not chain.solver.is_stochastic and not allow_deterministic:
        raise ValueError(
            f"{chain.solver.name} is deterministic: the children of a beam would be identical. Use a "
            "stochastic solver (e.g. SDEDPMSolverPP with eta > 0) or pass allow_deterministic=True"
        )


def _cost_per_beam(steps: int, children: int, interval: int) -> int:
    if not isinstance(children, int) or children < 1:
        raise ValueError(f"children must be a positive integer, got {children!r}")
    return steps + (children - 1) * len(branching_steps(steps, interval))


def beam_search_nfe(chain: Chain, beams: int, children: int, interval: int = 1) -> int:
    """Model calls (per particle) :func:`beam_search` spends on ``chain``: B * (steps + (M - 1) * |S|)."""
    _check_chain(chain, allow_deterministic=True)
    return beams * _cost_per_beam(chain.steps, children, interval)


def _branch(
    chain: Chain,
    reward,
    state: ChainState,
    lineage: torch.Tensor,
    children: int,
    prompts: Any,
    generator: torch.Generator | None,
) -> tuple[ChainState, torch.Tensor, dict[str, Any]]:
    """One branching step: every beam's ``children`` copies take a step, the best ``len(state)`` are kept.

    Returns the kept children (cached at their look-ahead), the initial-noise index of each, and the record.
    """
    beams = len(state)
    state, _ = chain.predict(state)  # one model call per parent, shared by its children
    parent = torch.arange(beams, device=state.x.device).repeat_interleave(children)
    state, x0 = chain.predict(chain.step(state[parent], generator))
    scores = score_samples(chain, reward, x0, prompts)
    keep = select_final(scores, scores, beams, "max")
    record = {
        "step": state.step,
        "max_reward": float(scores[keep[0]]),
        "mean_reward": float(scores[keep].mean()),
        "unique": int(torch.unique(parent[keep]).numel()),
    }
    lineage = lineage[parent[keep]]
    record["lineages"] = int(torch.unique(lineage).numel())
    return state[keep], lineage, record


def beam_search(
    chain: Chain,
    reward,
    *,
    beams: int | None = None,
    children: int = 4,
    max_nfe: int | None = None,
    interval: int = 1,
    k: int = 1,
    allow_deterministic: bool = False,
    prompts: Any = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Beam search with ``beams`` beams (or as many as ``max_nfe`` pays for) of ``children`` children each,
    branching every ``interval`` steps; see the module doc for the algorithm and its exact cost.

    Returns the top ``k`` (``1 <= k <= beams``) final beams, best first; ``all_scores`` are the final
    rewards of all B beams.
    """
    _check_chain(chain, allow_deterministic)
    per_beam = _cost_per_beam(chain.steps, children, interval)
    beams = particle_count(chain, beams, max_nfe, "beams", per_beam, "beam with its children")
    check_selection("max", k, beams)
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    branch_at = set(branching_steps(chain.steps, interval))

    state = chain.prior(beams, generator)
    lineage = torch.arange(beams, device=state.x.device)
    history: list[dict[str, Any]] = []
    while state.step < chain.steps:
        if state.step in branch_at:
            state, lineage, record = _branch(chain, reward, state, lineage, children, prompts, generator)
            history.append(record)
        else:
            state = chain.step(state, generator)

    final = score_samples(chain, reward, state.x, prompts)
    history.append(
        {"step": chain.steps, "max_reward": float(final.max()), "mean_reward": float(final.mean())}
    )
    index = select_final(final, final, k, "max")
    best = state.x[index]
    return SearchResult.finish(chain, best, final[index], final, history)
