"""Feynman-Kac steering: sequential Monte Carlo toward p(x0) exp(r(x0) / temperature).

Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of Diffusion Models"
(FK steering), Algorithm 1. N particles follow the model's (stochastic) sampler; at selected steps each is
weighted by a potential G_t computed from the rewards r_s = r(x̂0_s) of its look-ahead predictions along its
ancestry, and the population is resampled. With lambda = 1 / temperature the potentials are (Sec. 3.2):

* ``immediate``: log G_t = lambda r_t;
* ``difference``: log G_t = lambda (r_t - r_prev) (telescopes to lambda r of the latest look-ahead);
* ``max``: log G_t = lambda max_{s <= t} r_s (running maximum along the lineage);
* ``sum``: log G_t = lambda sum_{s <= t} r_s.

The product of all potentials along a lineage must equal exp(lambda r(x0)) for the particles to target the
tilted distribution; the final potential is therefore log G_0 = lambda r(x0) - sum_t log G_t (FK steering,
Sec. 3.1), with the sum carried per lineage through resampling.

Weights: the log weight of every particle accumulates its potentials; a resampling event draws ancestors
from the normalised weights and resets them to uniform; between events the weights are carried on (not
reset, and not recomputed from the latest potential alone: the reference implementation's issue #12).
Resampling happens at the steps ``interval`` apart inside ``window`` (as fractions of the trajectory), and
with ``ess_threshold`` only when the effective sample size has fallen below ``ess_threshold * N``. At the end
``k`` particles are drawn from the final weights (or the top ``k`` by reward with ``select="max"``).

Entropic annealing (Giannone et al. 2025, "Mitigating Premature Exploitation in Particle-based Monte Carlo
for Inference-Time Scaling", entropic particle filtering): when the normalised entropy of the weights,
H(w) / log N, falls below ``entropy_floor``, ancestors are drawn from w^beta instead, with beta in (0, 1]
found by bisection so that H(w^beta) / log N = ``entropy_floor``; more lineages survive. Here the
remainder w^(1 - beta) is carried on as the particles' weight, so the target stays exactly the tilted one
(resampling from any proposal with the importance correction is still a valid SMC step); the original
method drops it.

The transitions must be stochastic (an SDE solver, eta > 0) for resampled copies to diverge again; with an
ODE solver they stay identical. Model calls: one per particle per step (look-aheads reuse the step's model
call, see :meth:`search.chain.SolverChain.predict`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from .budget import Budget
from .chain import Chain
from .lookahead import TWEEDIE, Lookahead, lookahead_scores
from .resample import effective_sample_size, get_resampler
from .result import SearchResult, score_samples
from .selection import check_selection, particle_count, select_final

__all__ = ["POTENTIALS", "annealing_exponent", "fk_steering", "normalised_entropy"]

Potential = Literal["immediate", "difference", "max", "sum"]
POTENTIALS = ("immediate", "difference", "max", "sum")


class _Lineage:
    """Per-particle reward history summaries needed by the potentials (indexed along with the particles)."""

    def __init__(self, n: int, device: torch.device):
        zeros = torch.zeros(n, dtype=torch.float64, device=device)
        self.previous = zeros.clone()  # r at the previous look-ahead (0 before the first)
        self.running_max = torch.full_like(zeros, -math.inf)
        self.running_sum = zeros.clone()
        self.log_potentials = zeros.clone()  # sum of log G applied so far

    def take(self, index: torch.Tensor) -> None:
        for name in ("previous", "running_max", "running_sum", "log_potentials"):
            setattr(self, name, getattr(self, name)[index])

    def potential(self, kind: str, rewards: torch.Tensor, lam: float) -> torch.Tensor:
        """log G_t for look-ahead rewards ``rewards``, updating the summaries."""
        self.running_max = torch.maximum(self.running_max, rewards)
        self.running_sum = self.running_sum + rewards
        if kind == "immediate":
            log_g = lam * rewards
        elif kind == "difference":
            log_g = lam * (rewards - self.previous)
        elif kind == "max":
            log_g = lam * self.running_max
        else:
            log_g = lam * self.running_sum
        self.previous = rewards
        log_g = torch.nan_to_num(log_g, nan=-math.inf)  # -inf - (-inf): a dead lineage stays dead
        self.log_potentials = self.log_potentials + log_g
        return log_g


def _resampling_steps(steps: int, interval: int, window: tuple[float, float]) -> set[int]:
    """Chain step indices (1..steps-1, after that many steps) at which to weight and maybe resample."""
    lo, hi = window
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"window must satisfy 0 <= start < end <= 1, got {window}")
    if interval < 1:
        raise ValueError(f"interval must be a positive integer, got {interval}")
    first, last = math.floor(lo * steps), math.ceil(hi * steps)
    return {s for s in range(max(first, 1), min(last, steps)) if (s - max(first, 1)) % interval == 0}


def normalised_entropy(log_weights: torch.Tensor) -> float:
    """H(w) / log N of the normalised weights (1 = uniform, 0 = one particle holds all the weight)."""
    n = log_weights.shape[0]
    if n == 1:
        return 1.0
    log_p = log_weights - torch.logsumexp(log_weights, 0)
    p = log_p.exp()
    entropy = -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum()
    return float(entropy / math.log(n))


def annealing_exponent(log_weights: torch.Tensor, entropy_floor: float, iterations: int = 40) -> float:
    """The largest beta in (0, 1] with H(w^beta) / log N >= entropy_floor (1 if w already satisfies it)."""
    if normalised_entropy(log_weights) >= entropy_floor:
        return 1.0
    finite = torch.isfinite(log_weights)
    lo, hi = 0.0, 1.0  # entropy(lo) >= floor > entropy(hi); beta = 0 is uniform over the live particles
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if normalised_entropy(torch.where(finite, mid * log_weights, log_weights)) >= entropy_floor:
            lo = mid
        else:
            hi = mid
    return lo


def fk_steering(
    chain: Chain,
    reward,
    *,
    particles: int | None = None,
    max_nfe: int | None = None,
    temperature: float = 1.0,
    potential: Potential = "difference",
    interval: int = 1,
    window: tuple[float, float] = (0.0, 1.0),
    ess_threshold: float | None = None,
    resampler: str | Callable[..., torch.Tensor] = "systematic",
    entropy_floor: float | None = None,
    lookahead: Lookahead = TWEEDIE,
    k: int | None = None,
    select: Literal["resample", "max"] = "resample",
    exact: bool = True,
    prompts: Any = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """FK steering with ``particles`` particles (or as many as ``max_nfe`` pays for); see the module doc.

    Returns ``k`` samples (default: ``particles``) drawn from the final weights (``select="resample"``: an
    approximate sample of the tilted target) or the top ``k`` by reward (``select="max"``).

    ``lookahead`` sets how intermediate states are scored (:mod:`search.lookahead`): r(x̂0) by default,
    or a log-space average over several x0 draws around x̂0.

    ``exact=True`` applies the final correction that makes every potential target p exp(r / temperature).
    Only ``difference`` keeps that correction's variance low: for ``immediate``, ``max`` and ``sum`` it
    divides by the product of many potentials. ``exact=False`` weights the last step with the potential
    itself instead, as the reference implementation does: a reward-seeking heuristic, not a sampler of the
    tilted target.
    """
    if potential not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; expected one of {POTENTIALS}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if ess_threshold is not None and not 0 < ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold}")
    if entropy_floor is not None and not 0 < entropy_floor < 1:
        raise ValueError(f"entropy_floor must be in (0, 1), got {entropy_floor}")
    particles = particle_count(chain, particles, max_nfe)
    k = particles if k is None else k
    check_selection(select, k, particles)
    resample = get_resampler(resampler)
    lam = 1.0 / temperature
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    at = _resampling_steps(chain.steps, interval, window)

    state = chain.prior(particles, generator)
    lineage = _Lineage(particles, state.x.device)
    log_w = torch.zeros(particles, dtype=torch.float64, device=state.x.device)
    history: list[dict[str, Any]] = []
    while state.step < chain.steps:
        state = chain.step(state, generator)
        if state.step not in at:
            continue
        state, x0 = chain.predict(state)
        rewards = lookahead_scores(chain, reward, state, x0, lookahead, lam, prompts, generator)
        log_w = log_w + lineage.potential(potential, rewards, lam)
        if not bool(torch.isfinite(log_w).any()):
            raise ValueError(f"every particle has zero weight at step {state.step} (all rewards -inf)")
        ess = effective_sample_size(log_w)
        do_resample = ess_threshold is None or ess < ess_threshold * particles
        record = {"step": state.step, "ess": ess, "resampled": do_resample}
        record["max_reward"] = float(rewards.max())
        if do_resample:
            beta = 1.0 if entropy_floor is None else annealing_exponent(log_w, entropy_floor)
            tempered = torch.where(torch.isfinite(log_w), beta * log_w, log_w)  # -inf stays -inf at beta 0
            index = resample(tempered, particles, generator)
            state = state[index]
            lineage.take(index)
            # the part of the weight the (annealed) resampling did not use stays with the particle
            log_w = torch.zeros_like(log_w) if beta == 1.0 else ((1.0 - beta) * log_w)[index]
            record["unique"] = int(torch.unique(index).numel())
            record["beta"] = beta
        history.append(record)

    final = score_samples(chain, reward, state.x, prompts)
    if exact:  # the final potential makes the product along each lineage exp(lam r(x0))
        log_final = lam * final - lineage.log_potentials
    else:  # the final step weighted like any other (the reference implementation's choice)
        log_final = lineage.potential(potential, final, lam)
    log_w = torch.nan_to_num(log_w + log_final, nan=-math.inf)  # dead lineages stay dead
    ess = effective_sample_size(log_w)
    history.append({"step": chain.steps, "ess": ess, "max_reward": float(final.max())})
    index = select_final(final, log_w, k, select, generator, resample)
    best = state.x[index]
    return SearchResult.finish(chain, best, final[index], final, history)
