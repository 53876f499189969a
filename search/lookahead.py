"""Look-ahead rewards of intermediate states: the reward of Tweedie's x̂0, or a log-space average over
several stochastic look-ahead samples of x0.

A reward is defined on clean samples; at step t a method scores r(x̂0(x_t)) (FK steering's default, Singhal
et al. 2025, Sec. 3.2). That ignores how uncertain x0 still is: with ``samples = m > 1`` the look-ahead is
instead (1/lambda) log (1/m) sum_j exp(lambda r(x0_j)) with x0_j ~ N(x̂0, s_t^2 I) and
s_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2), the posterior variance of x0 for unit-variance data (the
Gaussian approximation of p(x0 | x_t) used by DAS, Kim et al. 2025, and TDS-style twisting). The soft maximum
in log space rewards states whose plausible futures score well, not only their mean. It costs m reward
calls per particle and no model call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .chain import Chain, ChainState
from .noise import randn
from .result import score_samples

__all__ = ["TWEEDIE", "Lookahead", "lookahead_scores"]


@dataclass(frozen=True)
class Lookahead:
    """``samples`` x0 draws per particle (1: the plain r(x̂0)); ``scale`` multiplies the posterior std."""

    samples: int = 1
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"look-ahead samples must be a positive integer, got {self.samples!r}")
        if self.scale < 0:
            raise ValueError(f"look-ahead scale must be >= 0, got {self.scale}")


#: The plain look-ahead: the reward of Tweedie's x̂0.
TWEEDIE = Lookahead()


def lookahead_scores(
    chain: Chain,
    reward,
    state: ChainState,
    x0: torch.Tensor,
    lookahead: Lookahead,
    lam: float = 1.0,
    prompts: Any = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The look-ahead reward (float64, one per particle) of particles at ``state`` with prediction ``x0``."""
    if lookahead.samples == 1:
        return score_samples(chain, reward, x0, prompts)
    i = state.step
    alpha, sigma = float(chain.grid.alpha_values[i]), float(chain.grid.sigma_values[i])
    std = lookahead.scale * sigma / math.hypot(alpha, sigma)
    m, n = lookahead.samples, x0.shape[0]
    noise = randn((m * n, *x0.shape[1:]), generator, x0.dtype, x0.device)
    draws = x0.repeat((m,) + (1,) * (x0.ndim - 1)) + std * noise  # draw j of particle p at row j * n + p
    repeated = prompts if prompts is None or isinstance(prompts, str) else list(prompts) * m
    scores = score_samples(chain, reward, draws, repeated).view(m, n)
    return (torch.logsumexp(lam * scores, 0) - math.log(m)) / lam
