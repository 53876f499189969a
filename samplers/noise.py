"""Noise for stochastic solvers: standard-normal z for the step from lambda_s to lambda_t.

* :class:`GeneratorNoise` draws fresh noise from a seeded ``torch.Generator`` each step.
* :class:`BrownianTreeNoise` returns normalised increments (W(tau_t) - W(tau_s)) / sqrt(|tau_t - tau_s|) of
  one Brownian path W, fixed by the seed, in the time tau = sigma_vp^2 = 1/(1 + e^{2 lambda}) in [0, 1].
  The path does not depend on the grid, so solvers with different step counts see the same
  realisation (a virtual Brownian tree, Li et al. 2020, Alg. 1) and strong convergence can be measured.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

__all__ = ["NoiseSource", "GeneratorNoise", "BrownianTreeNoise", "as_noise_source"]


class NoiseSource(Protocol):
    def __call__(self, like: torch.Tensor, lambda_s: float, lambda_t: float) -> torch.Tensor: ...


class GeneratorNoise:
    """i.i.d. N(0, I) per step from ``generator`` (a seed gives a fresh CPU generator).

    A list of generators, one per batch row (as diffusers pipelines accept), draws each row from its own
    generator, so a row's noise does not depend on the batch it is in. Noise is drawn in float32 and cast,
    so a seed gives the same samples whatever the sample dtype."""

    def __init__(self, generator: torch.Generator | int | list[torch.Generator] | None = None):
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        self.generator = generator

    def __call__(self, like: torch.Tensor, lambda_s: float, lambda_t: float) -> torch.Tensor:
        if isinstance(self.generator, (list, tuple)):
            if len(self.generator) != like.shape[0]:
                raise ValueError(f"{len(self.generator)} generators for a batch of {like.shape[0]}")
            rows = [_randn_from(g, like.shape[1:], like) for g in self.generator]
            return torch.stack(rows).to(device=like.device, dtype=like.dtype)
        return _randn_from(self.generator, like.shape, like).to(device=like.device, dtype=like.dtype)


def _randn_from(generator: torch.Generator | None, shape, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)


def _mix(seed: int, node: int) -> int:
    """splitmix64 of (seed, node): independent-looking generator seeds for tree nodes."""
    z = (seed * 0x9E3779B97F4A7C15 + node * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


class BrownianTreeNoise:
    """Increments of one seeded Brownian path on tau in [0, 1], queried to resolution ``tol``."""

    def __init__(self, seed: int = 0, tol: float = 1e-9):
        if tol <= 0:
            raise ValueError("tol must be positive")
        self.seed, self.tol = int(seed), tol
        self._shape: tuple | None = None
        self._cache: dict[float, torch.Tensor] = {}

    def _normal(self, node: int, like: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_mix(self.seed, node))
        return torch.randn(like.shape, generator=gen, dtype=torch.float64)

    def brownian(self, tau: float, like: torch.Tensor) -> torch.Tensor:
        """W(tau): bisect [0, 1], sampling each midpoint from the Brownian bridge of its parent interval."""
        if self._shape != tuple(like.shape):
            self._shape, self._cache = tuple(like.shape), {}
        if tau in self._cache:
            return self._cache[tau]
        a, b = 0.0, 1.0
        wa, wb = torch.zeros(like.shape, dtype=torch.float64), self._normal(1, like)
        node = 1
        while b - a > self.tol:
            m = 0.5 * (a + b)
            wm = 0.5 * (wa + wb) + math.sqrt((b - a) / 4) * self._normal(2 * node, like)
            if tau < m:
                b, wb, node = m, wm, 2 * node
            else:
                a, wa, node = m, wm, 2 * node + 1
        w = wa + (tau - a) / (b - a) * (wb - wa)
        if len(self._cache) > 8:
            self._cache.clear()
        self._cache[tau] = w
        return w

    def __call__(self, like: torch.Tensor, lambda_s: float, lambda_t: float) -> torch.Tensor:
        tau_s, tau_t = (1 / (1 + math.exp(min(2 * lam, 700.0))) for lam in (lambda_s, lambda_t))
        dw = self.brownian(tau_s, like) - self.brownian(tau_t, like)
        return (dw / math.sqrt(abs(tau_s - tau_t))).to(dtype=like.dtype, device=like.device)


def as_noise_source(noise: NoiseSource | torch.Generator | int | None) -> NoiseSource:
    """Accept a NoiseSource, a torch.Generator, a seed, or None (global RNG)."""
    if noise is None or isinstance(noise, torch.Generator | int):
        return GeneratorNoise(noise)
    if not callable(noise):
        raise TypeError("noise must be a NoiseSource, torch.Generator, int seed or None")
    return noise
