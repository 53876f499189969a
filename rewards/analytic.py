"""Analytic rewards on vectors, with exact gradients: the experiments on the Gaussian mixture.

Every reward here is a quadratic form r(x) = -x^T P x / 2 + h^T x + c (``P`` symmetric). Linear rewards
(P = 0) and least-squares rewards -w |A x - b|^2 (an inverse problem's data fit: P = 2w A^T A,
h = 2w A^T b, c = -w |b|^2) are the two used in practice. A Gaussian mixture tilted by exp(r / temperature)
is again a Gaussian mixture (``samplers.analytic.GaussianMixture.tilted(reward.precision, reward.shift)``),
so samplers of the tilted target can be checked against its exact moments and density.
"""

from __future__ import annotations

import torch

from .base import Reward

__all__ = ["QuadraticReward", "least_squares_reward", "linear_reward"]

_F64 = torch.float64


class QuadraticReward(Reward):
    """r(x) = -x^T P x / 2 + h^T x + c on (B, d) vectors; :meth:`gradient` is the exact -P x + h."""

    modality = "vector"
    differentiable = True
    scale = "unbounded real (a quadratic form in x); for least squares, minus the weighted squared residual"

    def __init__(
        self,
        precision: torch.Tensor | None,
        shift: torch.Tensor,
        constant: float = 0.0,
        batch_size: int = 1 << 16,
    ):
        super().__init__(batch_size=batch_size)
        shift = torch.as_tensor(shift, dtype=_F64).reshape(-1)
        d = shift.shape[0]
        if precision is None:
            precision = torch.zeros(d, d, dtype=_F64)
        precision = torch.as_tensor(precision, dtype=_F64)
        if precision.shape != (d, d):
            raise ValueError(f"precision must be ({d}, {d}) for shift ({d},), got {tuple(precision.shape)}")
        self.register_buffer("precision", 0.5 * (precision + precision.T))
        self.register_buffer("shift", shift)
        self.constant = float(constant)

    @property
    def dim(self) -> int:
        return self.shift.shape[0]

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors (B, {self.dim}), got shape {tuple(x.shape)}")
        return x.to(_F64)

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        x = self._check(samples)
        return -0.5 * ((x @ self.precision) * x).sum(-1) + x @ self.shift + self.constant

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x r(x) = -P x + h, float64, shape (B, d)."""
        return -self._check(x) @ self.precision + self.shift


def linear_reward(weights: torch.Tensor, constant: float = 0.0) -> QuadraticReward:
    """r(x) = w^T x + c."""
    return QuadraticReward(None, weights, constant)


def least_squares_reward(A: torch.Tensor, b: torch.Tensor, weight: float = 1.0) -> QuadraticReward:
    """r(x) = -weight |A x - b|^2: the fit to a linear measurement b of x (inpainting: A selects pixels)."""
    A = torch.as_tensor(A, dtype=_F64)
    b = torch.as_tensor(b, dtype=_F64).reshape(-1)
    if A.ndim != 2 or A.shape[0] != b.shape[0]:
        raise ValueError(f"A must be (m, d) and b (m,), got {tuple(A.shape)} and {tuple(b.shape)}")
    if weight <= 0:
        raise ValueError(f"weight must be positive, got {weight}")
    return QuadraticReward(2 * weight * A.T @ A, 2 * weight * A.T @ b, -weight * float(b @ b))
