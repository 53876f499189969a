"""Search over paths: beam search over noising-denoising loops (Ma et al. 2025, "Inference-Time Scaling for
Diffusion Models beyond Scaling Denoising Steps", Sec. 3.1, "Search over Paths").

The paper's scheme, with its parameters N (paths), M (noises per path), sigma (where the search starts),
Delta_f (forward-noising step) and Delta_b (backward, i.e. denoising, step; Delta_b > Delta_f):

1. sample N initial noises and run the ODE solver down to noise level sigma;
2. for each of the N samples draw M noises and simulate the forward (noising) process from sigma to
   sigma + Delta_f;
3. run the ODE solver on each of the N * M noisy samples down to sigma + Delta_f - Delta_b, score them with
   the verifier and keep the top N; repeat 2-3 until the solver reaches the end;
4. a final random search over the N remaining samples.

Here noise levels are grid indices of the chain (index 0 = noise end, ``chain.steps`` = clean end):

* sigma -> ``start`` (the first round starts at grid index ``start``);
* Delta_f -> ``back`` grid indices: a round at index i renoises every particle with the exact forward
  process to index i - back (:meth:`search.chain.SolverChain.renoise`, no model call);
* Delta_b -> ``forward`` grid indices: the renoised particles are then solved to j = min(i - back + forward,
  steps) (``forward > back`` so every round makes net progress ``forward - back``; the last round is
  clipped to the end of the grid);
* the verifier scores the look-ahead x̂0 of each candidate at j (:meth:`~search.chain.SolverChain.predict`;
  at the end of the grid x̂0 is the sample itself) and the top N of the N * M candidates are kept;
* step 4 is the last round: it ends at the clean end, so its scores are the final rewards and the top
  ``k`` of the N survivors are returned (no re-scoring).

Cost (NFE per particle, counted by the chain): with C(a, b) the model calls of solver steps a..b-1 and
rounds r at indices i_r (i_0 = start, i_{r+1} = j_r),

    NFE = N * [ C(0, start) + M * sum_r ( C(i_r - back, j_r) + [j_r < steps] ) ]

(the bracket is the look-ahead's model call, which a renoised particle cannot reuse; at the clean end the
look-ahead is free). Given ``max_nfe``, N = floor(max_nfe / per-path cost). The solver should be
deterministic (an ODE solver, as in the paper): the renoising is then the only source of diversity.
"""

from __future__ import annotations

from typing import Any

import torch

from .budget import Budget
from .chain import Chain, ChainState, advance
from .result import SearchResult, score_samples
from .selection import check_selection, particle_count, select_final

__all__ = ["path_cost", "path_schedule", "path_search"]


def path_schedule(steps: int, start: int, back: int, forward: int) -> list[tuple[int, int, int]]:
    """The rounds of search over paths as (i, i - back, j) triples: from grid index i, renoise to i - back,
    solve to j = min(i - back + forward, steps); the next round starts at j, the last ends at ``steps``."""
    if back < 1 or forward <= back:
        raise ValueError(f"need 1 <= back < forward, got back={back}, forward={forward}")
    if not back <= start < steps:
        raise ValueError(f"need back <= start < steps, i.e. {back} <= start < {steps}, got start={start}")
    rounds, i = [], start
    while i < steps:
        j = min(i - back + forward, steps)
        rounds.append((i, i - back, j))
        i = j
    return rounds


def path_cost(chain: Chain, branches: int, start: int, back: int, forward: int) -> int:
    """NFE per path (per one of the N): the module docstring's formula divided by N."""
    rounds = path_schedule(chain.steps, start, back, forward)
    per_round = sum(chain.segment_nfe(to, j) + (j < chain.steps) for _, to, j in rounds)
    return chain.segment_nfe(0, start) + branches * per_round


def _predict(chain: Chain, state: ChainState, batch_size: int) -> tuple[ChainState, torch.Tensor]:
    """:meth:`Chain.predict` ``batch_size`` particles at a time."""
    parts = [chain.predict(state[slice(s, s + batch_size)]) for s in range(0, len(state), batch_size)]
    if len(parts) == 1:
        return parts[0]
    return ChainState.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def path_search(
    chain: Chain,
    reward,
    *,
    paths: int | None = None,
    max_nfe: int | None = None,
    branches: int = 4,
    start: int | None = None,
    back: int = 1,
    forward: int = 2,
    k: int = 1,
    prompts: Any = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Search over paths with ``paths`` (N) beams, or as many as ``max_nfe`` pays for (exactly one of the
    two); see the module docstring for the scheme and its cost.

    Args:
        branches: M, renoised copies of every beam per round.
        start: sigma as a grid index (default: ``back``, the earliest index one can renoise from).
        back: Delta_f in grid indices (renoising); forward: Delta_b in grid indices (solving), > back.
        k: how many of the N final samples to return, best first.

    Returns a :class:`SearchResult` whose ``all_scores`` are the final rewards of the N survivors and whose
    ``history`` has one record per round: ``step`` (i), ``renoise_to`` (i - back), ``to`` (j), ``candidates``
    (N * M), ``kept`` (N), ``max_reward`` and ``mean_reward`` of the candidates' look-aheads.
    """
    start = back if start is None else start
    rounds = path_schedule(chain.steps, start, back, forward)
    if branches < 1:
        raise ValueError(f"need at least one branch per path, got {branches}")
    per_path = path_cost(chain, branches, start, back, forward)
    paths = particle_count(chain, paths, max_nfe, "paths", per_path, "path")
    check_selection("max", k, paths)
    chain = chain.with_budget(Budget(max_nfe=max_nfe))

    state = advance(chain, chain.prior(paths, generator), start, generator, batch_size)
    repeat = torch.arange(paths).repeat_interleave(branches)
    history: list[dict[str, Any]] = []
    for i, renoise_to, j in rounds:
        noisy = chain.renoise(state[repeat], renoise_to, generator)
        candidates, x0 = _predict(chain, advance(chain, noisy, j, generator, batch_size), batch_size)
        scores = score_samples(chain, reward, x0, prompts)
        keep = select_final(scores, scores, paths, "max")
        state, kept = candidates[keep], scores[keep]
        history.append({"step": i, "renoise_to": renoise_to, "to": j, "candidates": len(candidates),
                        "kept": len(state), "max_reward": float(scores.max()),
                        "mean_reward": float(scores.mean())})  # fmt: skip
    index = select_final(kept, kept, k, "max")
    best = state.x[index]
    return SearchResult.finish(chain, best, kept[index], kept, history)
