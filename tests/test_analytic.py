"""Checks that the analytic Gaussian-mixture model (the solvers' ground truth) is itself exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from samplers.analytic import GaussianMixture, make_net, solve_probability_flow

F64 = torch.float64


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _sqrtm(c: torch.Tensor) -> torch.Tensor:
    s, u = torch.linalg.eigh(c)
    return u @ torch.diag(s.sqrt()) @ u.T


def _vp(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def _flow(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 1 - t, t


# ---------------------------------------------------------------------------- densities and denoisers


def test_log_prob_matches_torch_distributions() -> None:
    gmm = GaussianMixture.random(dim=5, n_components=3, seed=3)
    x = 2 * _randn(7, 5)
    for a, s in [(1.0, 0.0), (0.6, 0.8), (0.0, 1.5), (2.0, 0.3)]:
        comps = torch.distributions.MultivariateNormal(
            a * gmm.means, a**2 * gmm.covs + s**2 * torch.eye(5, dtype=F64)
        )
        ref = torch.logsumexp(gmm.weights.log() + comps.log_prob(x[:, None, :]), dim=1)
        torch.testing.assert_close(gmm.marginal_log_prob(x, a, s), ref, rtol=0, atol=1e-11)
    torch.testing.assert_close(gmm.log_prob(x), gmm.marginal_log_prob(x, 1.0, 0.0))


@pytest.mark.parametrize("alpha, sigma, label", [(0.8, 0.6, None), (0.3, 1.0, None), (0.9, 0.4, 1)])
def test_posterior_mean_matches_grid_integration(alpha: float, sigma: float, label: int | None) -> None:
    """d = 2: E[x0 | x] = int x0 p(x0) N(x; alpha x0, sigma^2 I) dx0 / int ..., on a fine uniform grid
    (spectrally accurate for these smooth, fast-decaying integrands)."""
    gmm = GaussianMixture.random(dim=2, n_components=4, n_classes=2, seed=5)
    h = 0.025
    ax = torch.arange(-12.0, 12.0 + h / 2, h, dtype=F64)
    grid = torch.cartesian_prod(ax, ax)
    log_prior = gmm.log_prob(grid, class_labels=None if label is None else torch.full((len(grid),), label))
    x = alpha * gmm.sample(5, torch.Generator().manual_seed(0)) + sigma * _randn(5, 2)
    log_w = log_prior - 0.5 * ((x[:, None, :] - alpha * grid) ** 2).sum(-1) / sigma**2
    w = torch.softmax(log_w, dim=1)
    ref = w @ grid
    labels = None if label is None else torch.full((5,), label)
    torch.testing.assert_close(gmm.posterior_mean(x, alpha, sigma, labels), ref, rtol=0, atol=1e-9)
    # the posterior is genuinely nonlinear here: it differs from the best linear (Gaussian) estimate
    m, c = gmm.mean(label), gmm.covariance(label)
    lin = m + (x - alpha * m) @ torch.linalg.solve(alpha**2 * c + sigma**2 * torch.eye(2), alpha * c)
    assert (lin - ref).abs().max() > 1e-2


def test_tweedie_eps_is_scaled_score() -> None:
    """eps(x) = -sigma grad_x log p(x_t), with per-row alpha / sigma given as (B,) and (B, 1) tensors."""
    gmm = GaussianMixture.random(dim=8, n_components=4, seed=2)
    x = (3 * _randn(6, 8)).requires_grad_(True)
    alpha = torch.tensor([0.05, 0.3, 0.7, 1.0, 2.0, 0.99], dtype=F64)
    sigma = torch.tensor([1.0, 0.9, 0.7, 0.2, 1.0, 0.01], dtype=F64)[:, None]
    (score,) = torch.autograd.grad(gmm.marginal_log_prob(x, alpha, sigma).sum(), x)
    eps = gmm.eps(x.detach(), alpha, sigma)
    torch.testing.assert_close(eps, -sigma * score, rtol=1e-9, atol=1e-11)
    x0 = gmm.posterior_mean(x.detach(), alpha, sigma)
    torch.testing.assert_close(alpha[:, None] * x0 + sigma * eps, x.detach(), rtol=0, atol=1e-12)


def test_limits_alpha_zero_and_sigma_zero() -> None:
    gmm = GaussianMixture.random(dim=6, n_components=4, n_classes=2, seed=4)
    x = 5 * _randn(4, 6)
    labels = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(gmm.posterior_mean(x, 0.0, 1.0), gmm.mean().expand(4, -1), rtol=0, atol=1e-12)
    cond = torch.stack([gmm.mean(int(c)) for c in labels])
    torch.testing.assert_close(gmm.posterior_mean(x, 0.0, 2.0, labels), cond, rtol=0, atol=1e-12)
    for sigma in (0.0, 1e-9):
        torch.testing.assert_close(gmm.posterior_mean(x, 0.7, sigma), x / 0.7, rtol=1e-12, atol=1e-12)
    far = 1e3 * _randn(4, 6)  # far from every component: responsibilities must stay finite
    assert torch.isfinite(gmm.posterior_mean(far, 0.5, 0.5)).all()
    with pytest.raises(ValueError):
        gmm.posterior_mean(x, 0.0, 0.0)


def test_sample_moments() -> None:
    gmm = GaussianMixture.random(dim=3, n_components=4, n_classes=2, seed=6)
    for label in (None, 1):
        n = 200_000
        x = gmm.sample(n, torch.Generator().manual_seed(1), class_labels=label)
        mean, cov = gmm.mean(label), gmm.covariance(label)
        centred = x - mean
        assert ((x.mean(0) - mean).abs() <= 5 * centred.std(0) / math.sqrt(n)).all()
        prods = centred[:, :, None] * centred[:, None, :]
        assert ((prods.mean(0) - cov).abs() <= 5 * prods.std(0) / math.sqrt(n) + 1e-12).all()


def test_class_restriction_and_guidance() -> None:
    gmm = GaussianMixture.random(dim=5, n_components=6, n_classes=3, seed=7)
    x = 2 * _randn(6, 5)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    alpha, sigma = 0.6, 0.8
    got = gmm.posterior_mean(x, alpha, sigma, labels)
    for c in range(3):
        keep = gmm.labels == c
        sub = GaussianMixture(gmm.means[keep], gmm.covs[keep], gmm.weights[keep] / gmm.weights[keep].sum())
        rows = labels == c
        torch.testing.assert_close(got[rows], sub.posterior_mean(x[rows], alpha, sigma), rtol=0, atol=1e-13)
    cond_eps, uncond_eps = gmm.eps(x, alpha, sigma, labels), gmm.eps(x, alpha, sigma)
    torch.testing.assert_close(gmm.guided_eps(x, alpha, sigma, labels, 1.0), cond_eps)
    torch.testing.assert_close(gmm.guided_eps(x, alpha, sigma, labels, 0.0), uncond_eps)
    torch.testing.assert_close(gmm.guided_posterior_mean(x, alpha, sigma, labels, 1.0), got)
    w = 3.5
    guided = gmm.guided_eps(x, alpha, sigma, labels, w)
    torch.testing.assert_close(guided, uncond_eps + w * (cond_eps - uncond_eps))
    torch.testing.assert_close(
        gmm.guided_posterior_mean(x, alpha, sigma, labels, w),
        (x - sigma * guided) / alpha,
        rtol=0,
        atol=1e-12,
    )
    with pytest.raises(ValueError):
        gmm.guided_eps(x, alpha, sigma, None, w)


# ---------------------------------------------------------------------------- make_net


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction", "flow"])
def test_make_net_predictions_convert_back_to_eps(prediction_type: str) -> None:
    gmm = GaussianMixture.random(dim=4, n_components=4, seed=8)
    x = 2 * _randn(5, 4)
    labels = torch.tensor([0, 1, 0, 1, 1])
    to_eps = {
        "epsilon": lambda out, a, s: out,
        "sample": lambda out, a, s: (x - a * out) / s,
        "v_prediction": lambda out, a, s: (s * x + a * out) / (a**2 + s**2),
        "flow": lambda out, a, s: (x + a * out) / (a + s),
    }[prediction_type]
    for schedule in (_vp, _flow):
        for guidance in (None, 2.5):
            net = make_net(gmm, schedule, prediction_type, guidance=guidance)
            for t in (0.3, torch.tensor(0.6), torch.tensor([0.1, 0.4, 0.5, 0.8, 0.95])):
                a, s = (v.reshape(-1, 1) for v in schedule(torch.as_tensor(t, dtype=F64)))
                ref = (
                    gmm.eps(x, a, s, labels)
                    if guidance is None
                    else gmm.guided_eps(x, a, s, labels, guidance)
                )
                out = net(x, t, class_labels=labels)
                torch.testing.assert_close(to_eps(out, a, s), ref, rtol=1e-10, atol=1e-10)
    out32 = make_net(gmm, _vp, prediction_type)(x.float(), 0.5)
    assert out32.dtype == torch.float32


def test_make_net_rejects_unknown_prediction_type() -> None:
    with pytest.raises(ValueError):
        make_net(GaussianMixture.random(dim=2), _vp, "score")


# ---------------------------------------------------------------------------- probability-flow ODE


@pytest.mark.parametrize("start", [(0.0, 1.0), (0.3, 2.0)])
def test_ode_single_gaussian_closed_form(start: tuple[float, float]) -> None:
    """For N(m, C) the PF-ODE solution is x_vp(lambda) = alpha_vp m + (alpha_vp^2 C + sigma_vp^2 I)^{1/2} z:
    it solves dx_vp/dlambda = alpha_vp (D - alpha_vp x_vp), using d alpha_vp/dlambda = alpha_vp sigma_vp^2."""
    gmm = GaussianMixture.random(dim=6, n_components=1, n_classes=1, seed=9)
    m, c, eye = gmm.means[0], gmm.covs[0], torch.eye(6, dtype=F64)

    def exact(alpha: float, sigma: float, z: torch.Tensor) -> torch.Tensor:
        r = math.hypot(alpha, sigma)
        a, s = alpha / r, sigma / r
        return r * (a * m + z @ _sqrtm(a**2 * c + s**2 * eye))

    z = _randn(16, 6)
    targets = [(0.2, 0.8), (math.cos(0.7), math.sin(0.7)), (0.9, 0.1), (1.0, 0.0), (3.0, 0.0)]
    got = solve_probability_flow(gmm, exact(*start, z), start, targets)
    for (alpha, sigma), x in zip(targets, got, strict=True):
        torch.testing.assert_close(x, exact(alpha, sigma, z), rtol=0, atol=1e-8)
    torch.testing.assert_close(got[3], m + z @ _sqrtm(c), rtol=0, atol=1e-8)


def test_ode_matches_flow_matching_time_integration() -> None:
    """Independent check of the lambda-time derivation: integrate dx/dt = eps - x0hat (alpha = 1 - t,
    sigma = t) in t with the 'flow' net from t = 1 to 0, and compare with the lambda-time solver."""
    gmm = GaussianMixture.random(dim=4, n_components=4, seed=10)
    z = _randn(8, 4)
    net = make_net(gmm, _flow, "flow")

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(y).reshape(8, 4), t).reshape(-1).numpy()

    y, ref = z.reshape(-1).numpy(), []
    for t0, t1 in [(1.0, 0.5), (0.5, 0.0)]:
        y = solve_ivp(rhs, (t0, t1), y, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
        ref.append(torch.from_numpy(y).reshape(8, 4))
    got = solve_probability_flow(gmm, z, (0.0, 1.0), [(0.5, 0.5), (1.0, 0.0)])
    for x, r in zip(got, ref, strict=True):
        torch.testing.assert_close(x, r, rtol=0, atol=1e-8)


def test_ode_frame_invariance_and_reversibility() -> None:
    gmm = GaussianMixture.random(dim=5, n_components=4, seed=11)
    theta = 1.2  # VP frame (cos, sin) and flow frame (cos, sin) / (cos + sin) share lambda = log cot(theta)
    vp_start, k = (math.cos(theta), math.sin(theta)), math.cos(theta) + math.sin(theta)
    x_vp = vp_start[0] * gmm.sample(6, torch.Generator().manual_seed(2)) + vp_start[1] * _randn(6, 5)
    vp_targets = [(math.cos(u), math.sin(u)) for u in (0.9, 0.4, 0.0)]
    flow_targets = [(a / (a + s), s / (a + s)) for a, s in vp_targets]
    vp = solve_probability_flow(gmm, x_vp, vp_start, vp_targets)
    flow = solve_probability_flow(gmm, x_vp / k, (vp_start[0] / k, vp_start[1] / k), flow_targets)
    for (a, s), xv, xf in zip(vp_targets, vp, flow, strict=True):
        torch.testing.assert_close(xf * (a + s), xv, rtol=0, atol=1e-10)
    back = solve_probability_flow(gmm, vp[-1], (1.0, 0.0), [vp_start])[0]
    torch.testing.assert_close(back, x_vp, rtol=0, atol=1e-8)


def test_ode_guidance_one_equals_conditional() -> None:
    gmm = GaussianMixture.random(dim=4, n_components=4, n_classes=2, seed=12)
    z, labels = _randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    targets = [(0.5, 0.5), (1.0, 0.0)]
    cond = solve_probability_flow(gmm, z, (0.0, 1.0), targets, class_labels=labels)
    cfg = solve_probability_flow(gmm, z, (0.0, 1.0), targets, class_labels=labels, guidance_scale=1.0)
    for a, b in zip(cond, cfg, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    # class-conditional endpoints are far more likely under their own class than under the other one
    assert (gmm.log_prob(cond[-1], labels) > gmm.log_prob(cond[-1], 1 - labels) + 2).all()
