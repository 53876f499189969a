"""Reward-based noise optimisation: gradients through the sampler, monotone improvement, norm kept, NFE."""

import math

import pytest
import torch
from counting import count_model_rows
from torch.utils.checkpoint import set_checkpoint_early_stop

from rewards import JPEGCompressibility, least_squares_reward
from samplers.analytic import GaussianMixture
from samplers.denoiser import Denoiser
from samplers.grids import make_grid
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP
from search import SolverChain, gaussian_mixture_chain
from search.budget import Budget
from search.noise_optimisation import chi_log_density, noise_optimisation

F64 = torch.float64


@pytest.fixture
def problem(schedule):
    """A 16-D mixture, a 4-step second-order sampler, and a reward peaked between two modes."""
    gmm = GaussianMixture.random(dim=16, n_components=3, n_classes=1, seed=1)
    chain = gaussian_mixture_chain(gmm, schedule, 4, DPMSolverPP(2))
    reward = least_squares_reward(torch.eye(16, dtype=F64), 0.5 * (gmm.means[0] + gmm.means[1]))
    return chain, reward


def test_gradients_flow_through_the_sampler(problem):
    """gradcheck of eps -> reward(sample(noise_scale * eps)) through the 4-step solver."""
    chain, reward = problem

    def objective(eps):
        state = chain.start(chain.noise_scale * eps)
        while state.step < chain.steps:
            state = chain.step(state)
        return reward(state.x, grad=True)

    eps = torch.randn(2, 16, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(objective, (eps,))


def test_reward_rises_monotonically_on_average_and_the_norm_is_kept(problem):
    chain, reward = problem
    curves, norms = [], []
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        result = noise_optimisation(chain, reward, iterations=30, generator=g)
        curves.append([h["mean_reward"] for h in result.history])
        norms.append(result.history[-1]["norm_ratio"])
    mean = torch.tensor(curves).mean(0)
    assert torch.all(mean[1:] >= mean[:-1]), mean
    assert mean[-1] > mean[0] + 2.0, mean  # measured: about -7.2 -> -4.0
    assert all(abs(n - 1) < 0.05 for n in norms), norms


def test_nfe_restarts_budget_and_best_sample(problem):
    chain, reward = problem
    counter = count_model_rows(chain)
    result = noise_optimisation(chain, reward, max_nfe=3 * 4 * 7 + 5, restarts=3,
                                generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert len(result.history) == 7 and result.nfe == counter.rows == 3 * 4 * 7
    assert result.all_scores.shape == (21,) and result.scores[0] == result.all_scores.max()
    torch.testing.assert_close(reward(result.x), result.scores)
    with pytest.raises(ValueError, match="smaller than one iteration"):
        noise_optimisation(chain, reward, max_nfe=11, restarts=3)
    with pytest.raises(ValueError, match="differentiable reward"):
        noise_optimisation(chain, JPEGCompressibility())
    with pytest.raises(ValueError, match="regulariser"):
        noise_optimisation(chain, reward, regulariser="l2")


def test_chi_regulariser_is_maximal_at_the_typical_norm(problem):
    d = 16
    norms = torch.linspace(1.0, 8.0, 701, dtype=F64)
    eps = torch.zeros(701, d, dtype=F64)
    eps[:, 0] = norms
    assert float(norms[torch.argmax(chi_log_density(eps))]) == pytest.approx(math.sqrt(d - 1), abs=0.01)
    chain, reward = problem
    result = noise_optimisation(chain, reward, iterations=3, regulariser="chi", weight=5.0,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(result.history) == 3 and result.history[-1]["mean_reward"] > result.history[0]["mean_reward"]


def test_checkpointing_changes_nothing_but_the_model_calls(problem):
    """Same seed with and without per-step checkpointing: the same trajectory to 1e-10, the same NFE
    charged (the recomputation in backward is not), twice the network calls, and the same budget cap."""
    chain, reward = problem
    counter = count_model_rows(chain)
    runs, rows = {}, {}
    for checkpoint in (False, True):
        counter.rows = 0
        runs[checkpoint] = noise_optimisation(chain, reward, iterations=6, restarts=2, checkpoint=checkpoint,
                                              generator=torch.Generator().manual_seed(3))  # fmt: skip
        rows[checkpoint] = counter.rows
    plain, ckpt = runs[False], runs[True]
    torch.testing.assert_close(ckpt.all_scores, plain.all_scores, rtol=0, atol=1e-10)
    torch.testing.assert_close(ckpt.x, plain.x, rtol=0, atol=1e-10)
    for a, b in zip(plain.history, ckpt.history, strict=True):
        for key in ("mean_reward", "max_reward", "norm_ratio"):
            assert a[key] == pytest.approx(b[key], rel=0, abs=1e-10)
        assert a["backward_nfe"] == b["backward_nfe"] == 2 * 4
        assert a["recompute_nfe"] == 0 and b["recompute_nfe"] == 2 * 4
    assert ckpt.nfe == plain.nfe == rows[False] == 6 * 2 * 4
    assert rows[True] == 2 * rows[False]
    capped = noise_optimisation(chain, reward, max_nfe=2 * 4 * 3 + 7, restarts=2, checkpoint=True,
                                generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert len(capped.history) == 3 and capped.nfe == 2 * 4 * 3
    with pytest.raises(ValueError, match="smaller than one iteration"):
        noise_optimisation(chain, reward, max_nfe=7, restarts=2, checkpoint=True)


class _MLP(torch.nn.Module):
    """A small eps-prediction network with real activations to keep for backward."""

    def __init__(self, dim: int, width: int = 256):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1) / 1000
        return self.layers(torch.cat([x, t], dim=1))


def _saved_bytes(chain: SolverChain, eps: torch.Tensor, checkpoint: bool) -> int:
    """Bytes of the tensors autograd saves for backward during one forward pass through the chain."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        state = chain.start(chain.noise_scale * eps)
        while state.step < chain.steps:
            state = chain.checkpointed_step(state) if checkpoint else chain.step(state)
        state.x.square().sum().backward()
    return total


def test_checkpointing_keeps_one_steps_activations_and_recomputes_uncharged(schedule):
    """Memory for backward, measured deterministically as the bytes autograd saves: with checkpointing
    only what lies outside the steps; without, every step's MLP activations. The recomputation calls the
    network once more per step without charging the budget, and gives the same gradient."""
    torch.manual_seed(0)
    net = _MLP(8)
    steps = 8
    chain = SolverChain(Denoiser(net), make_grid(schedule, steps, final="zero"), DPMSolverPP(2), (8,))
    eps = torch.randn(16, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    saved, grads, calls, nfe = {}, {}, {}, {}
    for checkpoint in (False, True):
        eps.grad, net.calls, chain.budget = None, 0, Budget()
        saved[checkpoint] = _saved_bytes(chain, eps, checkpoint)
        grads[checkpoint], calls[checkpoint], nfe[checkpoint] = eps.grad.clone(), net.calls, chain.budget.nfe
    # measured: 2,774,080 bytes without checkpointing, 512 with it (the final x, saved by the loss)
    assert saved[False] > 16 * 256 * 4 * steps
    assert saved[True] < saved[False] / 3
    torch.testing.assert_close(grads[True], grads[False])
    assert calls[False] == steps and calls[True] == 2 * steps
    assert nfe[True] == nfe[False] == 16 * steps


@pytest.mark.parametrize("seeded", [True, False])
def test_checkpointed_stochastic_steps_replay_their_noise(gmm2, schedule, seeded):
    """SDE steps under checkpointing: the same samples and gradient as without, and the recomputation in
    backward draws from a copy of the generator (or the global RNG, forked and restored), so the caller's
    RNG ends where a plain run leaves it."""
    chain = gaussian_mixture_chain(gmm2, schedule, 5, SDEDPMSolverPP(2))
    eps = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    grads, samples, rng = [], [], []
    for checkpoint in (False, True):
        torch.manual_seed(7)
        g = torch.Generator().manual_seed(7) if seeded else None
        with set_checkpoint_early_stop(False):  # recompute whole steps, noise draws included
            state = chain.start(chain.noise_scale * eps)
            while state.step < chain.steps:
                state = chain.checkpointed_step(state, g) if checkpoint else chain.step(state, g)
            (grad,) = torch.autograd.grad(state.x.sin().sum(), eps)
        grads.append(grad)
        samples.append(state.x.detach())
        rng.append(g.get_state() if seeded else torch.get_rng_state())
    torch.testing.assert_close(samples[1], samples[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
    assert torch.equal(rng[1], rng[0])
