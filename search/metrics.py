"""Distances between sample sets, for checking samplers against exact targets."""

from __future__ import annotations

import torch

__all__ = ["sliced_wasserstein"]


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 1-Wasserstein distance between the empirical distributions of x (n, d) and y (m, d).

    The mean over random unit directions theta of W1 between the projections x theta and y theta
    (Bonneel et al. 2015). For n != m the sorted projections are compared at common quantiles.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, py = torch.sort(x @ theta, dim=0).values, torch.sort(y @ theta.to(y.device), dim=0).values
    levels = max(x.shape[0], y.shape[0])
    q = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    ix = (q * x.shape[0]).long().clamp(max=x.shape[0] - 1).to(x.device)
    iy = (q * y.shape[0]).long().clamp(max=y.shape[0] - 1).to(y.device)
    return float((px[ix] - py[iy].to(px.device)).abs().mean())
