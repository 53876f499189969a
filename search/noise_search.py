"""Zero-order search over the initial noise: hill climbing on the noise that a deterministic solver maps to
a sample (Ma et al. 2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps",
Sec. 3.1, "Zero-Order Search").

The paper's loop: (1) take a random Gaussian noise as the pivot; (2) draw N candidates in the pivot's
neighbourhood S^lambda = {y : d(y, pivot) = lambda}; (3) run every candidate through the ODE solver and
score the samples with the verifier; (4) make the best candidate the new pivot and repeat (2)-(3).

What is implemented here, exactly:

* The search variable is the chain's starting point x (grid index 0) as drawn by ``chain.prior``: nothing
  about the prior's form is assumed, so the exact-marginal prior of
  :func:`search.chain.gaussian_mixture_chain` works as well as N(0, s^2 I).
* Neighbourhood, ``neighbourhood="sphere"`` (default; the paper's S^lambda realised on the Gaussian's
  typical sphere, :func:`sphere_neighbours`): with ``p`` the pivot, ``r = |p|`` its norm over all of its
  ``D`` coordinates and ``z ~ N(0, I_D)``, a candidate is

      c = r * normalise(p / r + radius * z / sqrt(D))

  i.e. the pivot is perturbed by ``radius`` times a Gaussian of the pivot's own per-coordinate scale
  ``r / sqrt(D)`` and projected back onto the sphere through the pivot. For Gaussian noise N(0, s^2 I) the
  pivot's norm is ``s sqrt(D)`` up to O(s), so this is the sphere of radius sqrt(D) in standardised units
  (the typical set the model was trained on); using the pivot's own norm instead of ``s sqrt(D)`` needs no
  knowledge of the prior's scale. In high dimension the angle between a candidate and the pivot is close
  to ``arctan(radius)`` (so every candidate is at nearly the same distance from the pivot, as in
  S^lambda): ``radius`` -> 0 gives the pivot back, ``radius`` -> inf a uniformly random
  direction on the pivot's sphere. The norm of the noise is never searched (until a restart): harmless in
  high dimension where every typical noise has the same norm, a real restriction in a few dimensions.
* Neighbourhood, ``neighbourhood="pcn"`` (:func:`pcn_neighbours`, the preconditioned Crank-Nicolson
  proposal): ``c = sqrt(1 - radius^2) p + radius xi`` with ``xi`` a fresh draw of ``chain.prior`` and
  ``0 < radius <= 1``. For a prior N(0, s^2 I) a candidate of a prior-distributed pivot is again exactly
  prior-distributed, whatever s (for the Gaussian mixture chain's exact marginal, whose mean is
  alpha_T E[x0], nearly so); ``radius = 1`` is random search. Unlike ``"sphere"`` it also moves the norm,
  so the pivot can climb into the prior's tails (atypical noise) when that raises the reward.
* Moves: the pivot moves to the best candidate only when that candidate's reward is strictly larger than
  the pivot's (otherwise it stays), so the pivot's reward never decreases.
* Fixed-point restart (optional, ``patience``): after ``patience`` consecutive iterations without a move,
  the next iteration draws its N candidates afresh from the prior (a random-search round) and the best of
  them becomes the pivot whatever its reward; the best sample seen so far is kept, so the returned reward
  never decreases, but the pivot's reward may drop at a restart.
* Cost: the pivot's own trajectory (1) plus N per iteration, each a full trajectory of
  ``chain.trajectory_nfe()`` NFE per particle: NFE = (1 + iterations * N) * trajectory_nfe. Given
  ``max_nfe``, iterations = (floor(max_nfe / trajectory_nfe) - 1) // N (zero iterations returns the
  random pivot); a budget smaller than one trajectory is an error.

The returned samples are the top ``k`` of every trajectory scored during the search (pivot, candidates and
restarts). The transitions should be deterministic (an ODE solver such as ``DPMSolverPP``): with a
stochastic solver the same noise gives different samples and the pivot's reward is a noisy estimate.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from .budget import Budget
from .chain import Chain, ChainState, advance
from .noise import randn
from .result import SearchResult, score_samples
from .selection import TopK, check_selection, particle_count

__all__ = ["NEIGHBOURHOODS", "advance", "pcn_neighbours", "sphere_neighbours", "zero_order_search"]

NEIGHBOURHOODS = ("sphere", "pcn")


def sphere_neighbours(
    pivot: torch.Tensor, n: int, radius: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` candidates on the sphere through ``pivot`` (shape (1, ...)), ``radius`` apart in units of the
    pivot's per-coordinate scale: ``|p| normalise(p / |p| + radius z / sqrt(D))``, z ~ N(0, I) (see the
    module docstring). Returns (n, ...)."""
    if pivot.shape[0] != 1:
        raise ValueError(f"expected one pivot (1, ...), got shape {tuple(pivot.shape)}")
    norm = pivot.norm()
    if not float(norm) > 0:
        raise ValueError("the pivot is zero: it has no direction to perturb")
    dim = pivot.numel()
    z = randn((n, *pivot.shape[1:]), generator, pivot.dtype, pivot.device)
    c = pivot / norm + radius * z / math.sqrt(dim)
    return norm * c / c.flatten(1).norm(dim=1).reshape(n, *[1] * (pivot.ndim - 1))


def pcn_neighbours(pivot: torch.Tensor, fresh: torch.Tensor, radius: float) -> torch.Tensor:
    """Candidates ``sqrt(1 - radius^2) pivot + radius fresh`` (pivot (1, ...), fresh prior draws (n, ...))."""
    if not 0 < radius <= 1:
        raise ValueError(f"the pcn neighbourhood needs 0 < radius <= 1, got {radius}")
    return math.sqrt(1 - radius**2) * pivot + radius * fresh


def _candidates(
    chain: Chain,
    pivot: ChainState,
    n: int,
    neighbourhood: str,
    radius: float,
    generator: torch.Generator | None,
) -> ChainState:
    """n neighbours of the pivot as chain states at grid index 0: a prior draw with x replaced."""
    fresh = chain.prior(n, generator)
    if neighbourhood == "sphere":
        x = sphere_neighbours(pivot.x, n, radius, generator)
    else:
        x = pcn_neighbours(pivot.x, fresh.x, radius)
    return ChainState(replace(fresh.solver, x=x))


def zero_order_search(
    chain: Chain,
    reward,
    *,
    candidates: int = 4,
    iterations: int | None = None,
    max_nfe: int | None = None,
    radius: float = 0.5,
    neighbourhood: str = "sphere",
    patience: int | None = None,
    k: int = 1,
    prompts: Any = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Zero-order search with ``candidates`` neighbours per iteration for ``iterations`` iterations, or as
    many as ``max_nfe`` pays for (exactly one of the two); see the module docstring for the exact rules.

    Args:
        candidates: N, neighbours evaluated per iteration.
        radius: lambda, the neighbourhood size relative to the pivot's scale (> 0; at most 1 for "pcn").
        neighbourhood: ``"sphere"`` (the paper's, norm-preserving) or ``"pcn"`` (prior-preserving).
        patience: restart from fresh prior noise after this many iterations without a move (None: never).
        k: how many of the best samples seen to return (at most the number of trajectories scored).

    Returns a :class:`SearchResult` whose ``all_scores`` are the rewards of every trajectory in the order
    scored (pivot first) and whose ``history`` has one record per iteration (iteration 0: the random
    pivot alone): ``pivot_reward``, ``best_reward`` (best so far), ``moved`` and ``restarted``.
    """
    if candidates < 1:
        raise ValueError(f"need at least one candidate per iteration, got {candidates}")
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"unknown neighbourhood {neighbourhood!r}; expected one of {NEIGHBOURHOODS}")
    if not (radius > 0 and math.isfinite(radius)) or (neighbourhood == "pcn" and radius > 1):
        bound = "in (0, 1]" if neighbourhood == "pcn" else "a positive finite number"
        raise ValueError(f"radius must be {bound} for the {neighbourhood!r} neighbourhood, got {radius}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be a positive integer or None, got {patience}")
    if (iterations is None) == (max_nfe is None):
        raise ValueError("give exactly one of iterations and max_nfe")
    if iterations is None:
        iterations = (particle_count(chain, None, max_nfe) - 1) // candidates
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    check_selection("max", k, 1 + iterations * candidates)
    chain = chain.with_budget(Budget(max_nfe=max_nfe))

    def evaluate(starts: ChainState) -> torch.Tensor:
        final = advance(chain, starts, None, generator, batch_size).x
        scores = score_samples(chain, reward, final, prompts)
        top.add(final, scores)
        all_scores.append(scores)
        return scores

    top, all_scores = TopK(k), []
    pivot = chain.prior(1, generator)
    pivot_reward = float(evaluate(pivot)[0])
    history = [{"iteration": 0, "pivot_reward": pivot_reward, "best_reward": pivot_reward, "moved": False,
                "restarted": False}]  # fmt: skip
    stale = 0
    for iteration in range(1, iterations + 1):
        restart = patience is not None and stale >= patience
        if restart:
            starts = chain.prior(candidates, generator)
        else:
            starts = _candidates(chain, pivot, candidates, neighbourhood, radius, generator)
        scores = evaluate(starts)
        best = int(torch.argmax(scores))
        moved = restart or float(scores[best]) > pivot_reward
        if moved:
            pivot, pivot_reward = starts[best], float(scores[best])
        stale = 0 if moved else stale + 1
        history.append({"iteration": iteration, "pivot_reward": pivot_reward, "best_reward": top.best,
                        "moved": moved, "restarted": restart})  # fmt: skip
    return SearchResult.finish(chain, top.x, top.scores, torch.cat(all_scores), history)
