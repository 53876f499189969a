"""Test helper: the SD-like setting of docs/benchmarks/solvers.md on a Gaussian mixture (Stable Diffusion's
scaled_linear DDPM betas, an epsilon network that is the mixture's exact denoiser), exact ODE endpoints."""

import torch

from samplers import DiscreteVPSchedule
from samplers.analytic import GaussianMixture, make_net, solve_probability_flow

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SCHEDULE = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
START = (float(SCHEDULE.alpha(999.0)), float(SCHEDULE.sigma(999.0)))


def net_of(gmm: GaussianMixture, guidance: float | None = None):
    """The mixture's exact epsilon network on SCHEDULE (classifier-free guided with ``guidance``)."""
    return make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)), "epsilon", guidance)


def noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def guided_samples(gmm: GaussianMixture, guidance: float, n: int, seed: int):
    """(x_T at t = 999, their exact sigma = 0 endpoints under guidance, the class-label conditioning)."""
    labels = torch.arange(n) % 2
    x = noise(n, gmm.dim, seed)
    exact = solve_probability_flow(
        gmm, x, START, [(1.0, 0.0)], class_labels=labels, guidance_scale=guidance, rtol=1e-10, atol=1e-10
    )
    return x, exact[0], {"class_labels": labels}
