"""Best-of-N: draw N full trajectories, score them, keep the best (or resample by the reward).

The baseline of every inference-time scaling study (e.g. Ma et al. 2025, "Inference-Time Scaling for
Diffusion Models beyond Scaling Denoising Steps", Sec. 3.1, "random search"). With ``select="max"`` the
top ``k`` samples are returned; with ``select="resample"`` k samples are drawn with probability
proportional to exp(r / temperature): importance resampling from the model p to the tilted target
p(x) exp(r(x) / temperature) / Z, the sampling baseline SMC is compared with.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .budget import Budget
from .chain import Chain
from .result import SearchResult, score_samples

__all__ = ["best_of_n", "particles_for_budget", "run_to_end"]


def particles_for_budget(chain: Chain, max_nfe: int, per_particle: int | None = None) -> int:
    """How many full trajectories ``max_nfe`` pays for; a clear error if not even one."""
    cost = chain.trajectory_nfe() if per_particle is None else per_particle
    if max_nfe < cost:
        raise ValueError(
            f"a budget of {max_nfe} NFE is smaller than one trajectory ({cost} NFE per particle)"
        )
    return max_nfe // cost


def run_to_end(chain: Chain, n: int, generator: torch.Generator | None, batch_size: int) -> torch.Tensor:
    """Final clean samples of n independent trajectories, run ``batch_size`` particles at a time."""
    finals = []
    for start in range(0, n, batch_size):
        state = chain.prior(min(batch_size, n - start), generator)
        while state.step < chain.steps:
            state = chain.step(state, generator)
        finals.append(state.x)
    return torch.cat(finals)


def best_of_n(
    chain: Chain,
    reward,
    *,
    n: int | None = None,
    max_nfe: int | None = None,
    k: int = 1,
    select: Literal["max", "resample"] = "max",
    temperature: float = 1.0,
    prompts: Any = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Best-of-N over ``n`` trajectories, or as many as ``max_nfe`` pays for (one of the two is required).

    Returns the top ``k`` (``select="max"``, best first) or ``k`` importance-resampled samples
    (``select="resample"``, multinomial on softmax(r / temperature)).
    """
    if (n is None) == (max_nfe is None):
        raise ValueError("give exactly one of n (trajectories) and max_nfe (a budget)")
    if select not in ("max", "resample"):
        raise ValueError(f"select must be 'max' or 'resample', got {select!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = particles_for_budget(chain, max_nfe) if n is None else n
    if n < 1 or k < 1 or (select == "max" and k > n):
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    x = run_to_end(chain, n, generator, batch_size)
    scores = score_samples(chain, reward, x, prompts)
    if select == "max":
        index = torch.argsort(scores, descending=True, stable=True)[:k]
    else:
        log_w = scores / temperature
        if not bool(torch.isfinite(log_w).any()):
            raise ValueError("every sample has reward -inf: nothing to resample")
        probs = torch.softmax(log_w, 0)
        index = torch.multinomial(probs, k, replacement=True, generator=generator)
    best = x[index]
    history = [{"step": chain.steps, "max_reward": float(scores.max()), "mean_reward": float(scores.mean())}]
    return SearchResult.finish(
        chain.budget,
        x=best,
        samples=chain.decode(best),
        scores=scores[index],
        all_scores=scores,
        history=history,
    )
