"""Analytic quadratic rewards and the exactly tilted Gaussian mixture they induce."""

import math

import pytest
import torch

from rewards.analytic import QuadraticReward, least_squares_reward, linear_reward
from samplers.analytic import GaussianMixture

F64 = torch.float64


@pytest.fixture(scope="module")
def small_gmm() -> GaussianMixture:
    return GaussianMixture.random(dim=4, n_components=3, n_classes=2, seed=3)


def test_least_squares_reward_is_minus_the_weighted_residual():
    g = torch.Generator().manual_seed(0)
    A, b = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    x = torch.randn(7, 5, generator=g, dtype=F64)
    reward = least_squares_reward(A, b, weight=0.7)
    expected = -0.7 * ((x @ A.T - b) ** 2).sum(-1)
    torch.testing.assert_close(reward(x), expected, rtol=1e-12, atol=1e-12)
    w = torch.randn(5, generator=g, dtype=F64)
    torch.testing.assert_close(linear_reward(w, 2.0)(x), x @ w + 2.0, rtol=1e-12, atol=1e-12)


def test_gradient_is_exact_and_gradcheck_passes():
    g = torch.Generator().manual_seed(1)
    A, b = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)
    reward = least_squares_reward(A, b)
    x = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    (auto,) = torch.autograd.grad(reward(x).sum(), x)
    torch.testing.assert_close(reward.gradient(x.detach()), auto, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: reward(v), (x,))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="precision must be"):
        QuadraticReward(torch.eye(2), torch.zeros(3))
    with pytest.raises(ValueError, match="A must be"):
        least_squares_reward(torch.eye(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        linear_reward(torch.ones(3))(torch.zeros(2, 4))


@pytest.mark.parametrize("kind", ["linear", "least_squares"])
def test_tilted_density_is_exact_pointwise(small_gmm, kind):
    """log p_tilt(x) = log p(x) + r(x) / T - log Z at arbitrary points, and p_tilt integrates to 1."""
    g = torch.Generator().manual_seed(2)
    if kind == "linear":
        reward = linear_reward(torch.randn(4, generator=g, dtype=F64))
    else:
        A, b = torch.randn(2, 4, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)
        reward = least_squares_reward(A, b)
    temperature = 0.5
    tilted, log_z = small_gmm.tilted(reward.precision, reward.shift, temperature)
    x = torch.randn(50, 4, generator=g, dtype=F64) * 2
    unnormalised = small_gmm.log_prob(x) + (reward(x) - reward.constant) / temperature
    torch.testing.assert_close(tilted.log_prob(x), unnormalised - log_z, rtol=0, atol=1e-10)


def test_tilted_moments_match_importance_weighting(small_gmm):
    """Self-normalised importance weights exp(r) on exact GMM samples recover the tilted mean (a statistical
    check independent of the closed form)."""
    reward = linear_reward(torch.tensor([0.6, -0.4, 0.3, 0.2], dtype=F64))
    tilted, _ = small_gmm.tilted(reward.precision, reward.shift)
    x = small_gmm.sample(400_000, generator=torch.Generator().manual_seed(5))
    w = torch.softmax(reward(x), 0)
    mean = w @ x
    ess = 1 / (w**2).sum()
    # standard error of each coordinate of the weighted mean, from the tilted covariance and the ESS
    se = torch.sqrt(torch.diagonal(tilted.covariance()) / ess)
    assert torch.all((mean - tilted.mean()).abs() < 5 * se), (mean, tilted.mean(), se)


def test_tilt_by_zero_reward_is_the_identity_and_temperature_is_checked(small_gmm):
    tilted, log_z = small_gmm.tilted()
    torch.testing.assert_close(tilted.means, small_gmm.means)
    torch.testing.assert_close(tilted.weights, small_gmm.weights)
    assert math.isclose(log_z, 0.0, abs_tol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        small_gmm.tilted(temperature=0.0)


def test_tilted_mixture_keeps_class_labels(small_gmm):
    tilted, _ = small_gmm.tilted(shift=torch.ones(4, dtype=F64))
    assert torch.equal(tilted.labels, small_gmm.labels)
