"""Stochastic solvers (eta > 0) sample the data distribution, reproducibly, on one Brownian path."""

import pytest
import torch

from samplers import BrownianTreeNoise, Denoiser, DiscreteVPSchedule, GeneratorNoise, make_grid, sample
from samplers.analytic import make_net
from samplers.catalogue import SDE_PRESETS

N_SAMPLES = 4096
SCHEDULE = DiscreteVPSchedule.from_betas("linear")


def max_z_scores(x, mean, cov):
    """Largest |z| of the sample mean and sample covariance entries against the exact moments
    (standard errors sqrt(C_ii / n) and sqrt((C_ii C_jj + C_ij^2) / n))."""
    n = x.shape[0]
    var = cov.diag()
    z_mean = (x.mean(0) - mean) / (var / n).sqrt()
    z_cov = (torch.cov(x.T) - cov) / ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    return z_mean.abs().max().item(), z_cov.abs().max().item()


def moments_match(x, gmm) -> bool:
    # 32 means and 528 covariance entries: these bounds are exceeded by chance with probability < 1e-3
    z_mean, z_cov = max_z_scores(x, gmm.mean(), gmm.covariance())
    return z_mean < 4.5 and z_cov < 5.0


def run(gmm, solver, steps, noise, n=N_SAMPLES, seed=5):
    grid = make_grid(SCHEDULE, steps, "uniform_lambda", final="zero")
    denoiser = Denoiser(make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t))), "epsilon")
    x_T = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sample(denoiser, x_T, grid, solver, noise=noise)


def test_the_moment_check_accepts_exact_samples_and_rejects_wrong_ones(gmm):
    exact = gmm.sample(N_SAMPLES, generator=torch.Generator().manual_seed(3))
    assert moments_match(exact, gmm)
    assert not moments_match(exact * 1.05, gmm)
    assert not moments_match(exact + 0.05, gmm)


@pytest.mark.parametrize(
    "name, steps",
    [
        ("ddim-eta1", 200),
        ("sde-dpmsolver++2m", 50),
        ("sde-dpmsolver++3m", 50),
        ("sde-dpmsolver++2m-eta0.5", 50),
    ],
)
def test_sde_terminal_distribution_matches_gmm(gmm, name, steps):
    x = run(gmm, SDE_PRESETS[name], steps, torch.Generator().manual_seed(7))
    print(name, max_z_scores(x, gmm.mean(), gmm.covariance()))
    assert moments_match(x, gmm)


def test_too_few_first_order_sde_steps_are_detected(gmm):
    """Power check: Euler-type DDIM(eta=1) with 25 steps is visibly biased and the check says so."""
    assert not moments_match(run(gmm, SDE_PRESETS["ddim-eta1"], 25, torch.Generator().manual_seed(7)), gmm)


@pytest.mark.parametrize(
    "make_noise", [lambda s: torch.Generator().manual_seed(s), GeneratorNoise, BrownianTreeNoise]
)
def test_same_seed_same_samples(gmm, make_noise):
    solver = SDE_PRESETS["sde-dpmsolver++2m"]
    a = run(gmm, solver, 20, make_noise(11), n=64)
    b = run(gmm, solver, 20, make_noise(11), n=64)
    c = run(gmm, solver, 20, make_noise(12), n=64)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_brownian_tree_gives_one_path_across_step_counts(gmm):
    """With a Brownian tree every grid samples the same Brownian path, so SDE solutions converge
    pathwise (strongly) as the grid is refined; i.i.d. per-step noise does not."""
    solver = SDE_PRESETS["sde-dpmsolver++2m"]
    fine = run(gmm, solver, 1024, BrownianTreeNoise(seed=3), n=16)
    errors = [
        (run(gmm, solver, n, BrownianTreeNoise(seed=3), n=16) - fine).norm().item() for n in (16, 64, 256)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 4
    unrelated = (run(gmm, solver, 256, GeneratorNoise(3), n=16) - fine).norm().item()
    assert unrelated > 10 * errors[2]


def test_brownian_increments_are_standard_normal_and_consistent():
    tree = BrownianTreeNoise(seed=0)
    like = torch.zeros(20000, dtype=torch.float64)
    z = tree(like, -1.0, 0.5)
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    # W is a Brownian motion: Var W(tau) = tau, and increments over disjoint intervals are uncorrelated
    w = {tau: tree.brownian(tau, like) for tau in (0.2, 0.45, 0.7)}
    for tau, value in w.items():
        assert abs(value.var().item() - tau) < 0.05 * tau
    first, second = w[0.45] - w[0.2], w[0.7] - w[0.45]
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 0.03
    fresh = BrownianTreeNoise(seed=0)
    assert torch.equal(fresh.brownian(0.45, like), w[0.45])


def test_generator_noise_with_one_generator_per_row():
    """A list of generators draws row i from generator i alone, so a row's noise ignores its batch."""
    like = torch.zeros(3, 2, 4, dtype=torch.float64)
    batch = GeneratorNoise([torch.Generator().manual_seed(s) for s in (5, 6, 7)])(like, 0.0, 1.0)
    assert batch.dtype == torch.float64 and batch.shape == like.shape
    for row, seed in enumerate((5, 6, 7)):
        alone = GeneratorNoise([torch.Generator().manual_seed(seed)])(like[:1], 0.0, 1.0)
        assert torch.equal(batch[row : row + 1], alone)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        GeneratorNoise([torch.Generator(), torch.Generator()])(like, 0.0, 1.0)
