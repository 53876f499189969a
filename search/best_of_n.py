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
from .chain import Chain, advance
from .result import SearchResult, score_samples
from .selection import check_selection, particle_count, select_final

__all__ = ["best_of_n"]


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
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = particle_count(chain, n, max_nfe, "n")
    check_selection(select, k, n)
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    x = advance(chain, chain.prior(n, generator), None, generator, batch_size).x
    scores = score_samples(chain, reward, x, prompts)
    index = select_final(scores, scores / temperature, k, select, generator)
    best = x[index]
    history = [{"step": chain.steps, "max_reward": float(scores.max()), "mean_reward": float(scores.mean())}]
    return SearchResult.finish(chain, best, scores[index], scores, history)
