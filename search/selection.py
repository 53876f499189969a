"""Shared by every method: how many particles a budget pays for, and how returned samples are chosen."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .chain import Chain
from .resample import multinomial

__all__ = ["TopK", "check_selection", "particle_count", "select_final"]


def particle_count(
    chain: Chain,
    particles: int | None,
    max_nfe: int | None,
    name: str = "particles",
    cost: int | None = None,
    unit: str = "trajectory",
) -> int:
    """``particles`` as given, or as many units (each costing ``cost`` NFE, by default one full trajectory)
    as ``max_nfe`` pays for; exactly one of the two is given.

    Raises ValueError when neither or both are given, when the budget is smaller than one unit, and for
    fewer than one particle."""
    if (particles is None) == (max_nfe is None):
        raise ValueError(f"give exactly one of {name} and max_nfe")
    if particles is None:
        cost = chain.trajectory_nfe() if cost is None else cost
        if max_nfe < cost:
            raise ValueError(f"a budget of {max_nfe} NFE is smaller than one {unit} ({cost} NFE)")
        particles = max_nfe // cost
    if particles < 1:
        raise ValueError(f"need at least one of {name}, got {particles}")
    return particles


def check_selection(select: str, k: int, n: int) -> None:
    """Refuse a bad ``select`` / ``k`` before any work is done (``n``: how many samples there will be)."""
    if select not in ("max", "resample"):
        raise ValueError(f"select must be 'max' or 'resample', got {select!r}")
    if k < 1 or (select == "max" and k > n):
        bound = f"1 <= k <= {n} samples" if select == "max" else "k >= 1"
        raise ValueError(f"need {bound}, got k={k}")


def select_final(
    scores: torch.Tensor,
    log_weights: torch.Tensor,
    k: int,
    select: str,
    generator: torch.Generator | None = None,
    resampler: Callable[..., torch.Tensor] = multinomial,
) -> torch.Tensor:
    """Indices of the returned samples: the top ``k`` scores (``select="max"``, best first, ties by
    position) or ``k`` draws from the normalised ``log_weights`` (``select="resample"``)."""
    check_selection(select, k, scores.shape[0])
    if select == "max":
        return torch.argsort(scores, descending=True, stable=True)[:k]
    if not bool(torch.isfinite(log_weights).any()):
        raise ValueError("every sample has zero weight (reward -inf): nothing to resample")
    return resampler(log_weights, k, generator)


class TopK:
    """The ``k`` best samples scored so far, best first."""

    def __init__(self, k: int):
        self.k = k
        self.x: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    def add(self, x: torch.Tensor, scores: torch.Tensor) -> None:
        if self.x is not None:
            x, scores = torch.cat([self.x, x]), torch.cat([self.scores, scores])
        index = select_final(scores, scores, min(self.k, scores.shape[0]), "max")
        self.x, self.scores = x[index], scores[index]

    @property
    def best(self) -> float:
        return float(self.scores[0])
