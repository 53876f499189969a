"""Interpolant conversion: run a model trained on one interpolant x_t = a_t x0 + s_t eps on another.

Two interpolants with the same signal-to-noise ratio describe the same noisy sample up to a scale: if the
target point (alpha, sigma) and the source time t have lambda = log(alpha / sigma) = log(a_t / s_t), then
x_t = c x with c = s_t / sigma (= a_t / alpha), and E[x0 | x] and the noise eps = (x - alpha x0) / sigma are
the same in both parametrisations. So a model trained on the source interpolant serves the target one by
evaluating it at (c x, t) and keeping its x0 and eps (Kim et al. 2025, "Inference-Time Scaling for Flow
Models via Stochastic Generation and Rollover Budget Forcing", Sec. 4.2, the linear -> VP interpolant
conversion; the same change of variables as Karras et al. 2022, Sec. 4 / eq. 4).

The probability-flow ODE is invariant under this change; the *stochastic* sampler is not (the reverse SDE's
noise, and the time grid's spacing in lambda, follow the target schedule), which is why a flow model run
as a VP-SDE explores more than the same model run as a linear-interpolant SDE (Kim et al. 2025, Sec. 4.2).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .denoiser import Denoiser, DenoiserOutput
from .schedules import NoiseSchedule

__all__ = ["InterpolantConversion"]


class InterpolantConversion:
    """``denoiser`` (trained on the ``source`` schedule) evaluated at points of any other schedule.

    Called like a :class:`~samplers.denoiser.Denoiser`, ``(x, t, alpha, sigma, cond)`` with the *target*
    schedule's time and coefficients; ``t`` is not used, the source time comes from the log-SNR. Source
    times outside the source schedule's range are clamped to it (the source model was never trained there).
    ``nfe`` counts the wrapped denoiser's evaluations.
    """

    def __init__(self, denoiser: Denoiser, source: NoiseSchedule):
        self.denoiser, self.source = denoiser, source

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def source_point(self, alpha: float, sigma: float) -> tuple[float, float, float, float]:
        """(t, a_t, s_t, c): the source time with the log-SNR of (alpha, sigma), its coefficients, and the
        scale c with x_source = c x_target."""
        alpha, sigma = float(alpha), float(sigma)
        if alpha < 0 or sigma < 0 or alpha == sigma == 0:
            raise ValueError(f"need alpha, sigma >= 0, not both 0; got alpha={alpha}, sigma={sigma}")
        lam = torch.tensor(alpha, dtype=torch.float64).log() - torch.tensor(sigma, dtype=torch.float64).log()
        t = float(self.source.t_of_lambda(lam).clamp(self.source.t_min, self.source.t_max))
        a_t, s_t = float(self.source.alpha(t)), float(self.source.sigma(t))
        scale = s_t / sigma if sigma >= alpha else a_t / alpha  # the better-conditioned ratio
        return t, a_t, s_t, scale

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
        cond: Mapping[str, torch.Tensor] | None = None,
    ) -> DenoiserOutput:
        t_src, a_t, s_t, scale = self.source_point(float(alpha), float(sigma))
        return self.denoiser(scale * x, t_src, a_t, s_t, cond)  # x0 and eps are the same in both
