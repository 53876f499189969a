"""Rollover budget forcing (Kim et al. 2025) and the flow -> SDE chains it runs on: the interpolant
conversion is exact on the analytic mixture, the converted SDE samples the mixture, RBF's NFE is exact
against the model's row count and its quotas roll over as documented, it beats best-of-N at equal NFE, and
the degenerate inputs fail clearly."""

import pytest
import torch
from counting import Scripted, count_model_rows

from rewards import least_squares_reward
from samplers.analytic import make_net
from samplers.denoiser import Denoiser
from samplers.grids import make_grid
from samplers.interpolant import InterpolantConversion
from samplers.schedules import ContinuousVPSchedule, DiscreteVPSchedule, FlowMatchingSchedule
from samplers.solvers import DDIM, DPMSolverPP, SDEDPMSolverPP
from search import best_of_n, sliced_wasserstein
from search.chain import SolverChain, advance, gaussian_mixture_chain
from search.flow_chain import flow_sde_chain
from search.rollover import rollover_budget_forcing, rollover_quotas

F64 = torch.float64
STEPS = 12
FLOW = FlowMatchingSchedule()


def exact_denoiser(gmm, schedule, prediction_type):
    return Denoiser(make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), prediction_type),
                    prediction_type)  # fmt: skip


@pytest.fixture(scope="module")
def flow_model(gmm2):
    return exact_denoiser(gmm2, FLOW, "flow")


@pytest.fixture(scope="module")
def reward2(gmm2):
    """-|x - b|^2 with b halfway between two modes, where the mixture has little mass."""
    return least_squares_reward(torch.eye(2, dtype=F64), 0.5 * (gmm2.means[0] + gmm2.means[1]))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- interpolant conversion


@pytest.mark.parametrize(
    "target", [ContinuousVPSchedule(), DiscreteVPSchedule.from_betas("scaled_linear")], ids=["vp", "ddpm"]
)
def test_conversion_reproduces_the_exact_denoiser_of_the_target_schedule(gmm2, flow_model, target):
    """The flow model served on a VP schedule gives exactly the VP model's x0 and eps (both are E[. | x])."""
    native = exact_denoiser(gmm2, target, "epsilon")
    converted = InterpolantConversion(flow_model, FLOW)
    before = converted.nfe
    x = torch.randn(64, 2, generator=seeded(0), dtype=F64) * 1.5
    for t in torch.linspace(target.t_min, target.t_max, 9).tolist():
        alpha, sigma = float(target.alpha(t)), float(target.sigma(t))
        ours, reference = converted(x, t, alpha, sigma), native(x, t, alpha, sigma)
        torch.testing.assert_close(ours.x0, reference.x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ours.eps, reference.eps, rtol=1e-9, atol=1e-9)
    assert converted.nfe - before == 9


def test_conversion_maps_to_the_source_time_with_the_same_log_snr():
    converted = InterpolantConversion(Denoiser(lambda x, t: x, "flow"), FLOW)
    t, a_t, s_t, scale = converted.source_point(0.6, 0.8)
    assert (a_t, s_t) == pytest.approx((1 - t, t), abs=1e-15)
    assert a_t / s_t == pytest.approx(0.6 / 0.8, rel=1e-12)
    assert (scale * 0.6, scale * 0.8) == pytest.approx((a_t, s_t), rel=1e-12)
    assert converted.source_point(0.0, 1.0)[0] == 1.0  # pure noise -> t = 1
    assert converted.source_point(1.0, 0.0)[0] == 0.0  # clean sample -> t = 0
    with pytest.raises(ValueError, match="not both 0"):
        converted.source_point(0.0, 0.0)


def test_the_ode_is_invariant_under_the_conversion(gmm2, flow_model):
    """A deterministic solver on the converted chain gives the native VP model's samples (same grid)."""
    vp = ContinuousVPSchedule()
    grid = make_grid(vp, STEPS, "uniform_t")
    native = SolverChain(exact_denoiser(gmm2, vp, "epsilon"), grid, DPMSolverPP(2), (2,), dtype=F64)
    converted = SolverChain(InterpolantConversion(flow_model, FLOW), grid, DPMSolverPP(2), (2,), dtype=F64)
    a = advance(native, native.prior(32, seeded(1))).x
    b = advance(converted, converted.prior(32, seeded(1))).x
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("interpolant", ["linear", "vp"])
def test_the_flow_sde_samples_the_mixture(gmm2, flow_model, interpolant):
    """Both SDE conversions sample the model's distribution: their sliced Wasserstein distance to exact
    mixture samples is as small as that between two exact samples of the same size (x 1.6 for the
    discretisation at 40 steps and the VP prior's alpha_T = 0.007 approximation)."""
    n = 3000
    chain = flow_sde_chain(flow_model, (2,), 40, interpolant=interpolant, dtype=F64)
    samples = advance(chain, chain.prior(n, seeded(2)), None, seeded(3)).x
    reference = gmm2.sample(n, generator=seeded(4))
    baseline = sliced_wasserstein(gmm2.sample(n, generator=seeded(5)), reference, generator=seeded(6))
    distance = sliced_wasserstein(samples, reference, generator=seeded(6))
    assert distance < 1.6 * baseline + 0.01, (distance, baseline)


def test_flow_sde_chain_refuses_a_deterministic_solver_and_unknown_interpolants(flow_model):
    with pytest.raises(ValueError, match="deterministic"):
        flow_sde_chain(flow_model, (2,), 8, solver=DDIM(0.0))
    with pytest.raises(ValueError, match="interpolant"):
        flow_sde_chain(flow_model, (2,), 8, interpolant="cosine")
    chain = flow_sde_chain(flow_model, (2,), 8, interpolant="linear", solver=DDIM(1.0))
    assert float(chain.grid.alpha_values[0]) == 0.0 and float(chain.grid.sigma_values[-1]) == 0.0


# --------------------------------------------------------------------------- RBF: accounting


def test_quotas_split_evenly_with_the_remainder_first():
    assert rollover_quotas(10, 4) == [3, 3, 2, 2]
    assert sum(rollover_quotas(1001, 7)) == 1001


@pytest.mark.parametrize("budget", [STEPS, 30, 97])
def test_nfe_is_exact_and_the_rollover_adds_up(gmm2, schedule, reward2, budget):
    chain = gaussian_mixture_chain(gmm2, schedule, STEPS, SDEDPMSolverPP(2))
    counter = count_model_rows(chain)
    result = rollover_budget_forcing(chain, reward2, max_nfe=budget, generator=seeded(0))
    assert result.nfe == counter.rows == budget  # one NFE per child: the whole budget is spent
    steps = result.history[:-1]
    assert [h["step"] for h in steps] == list(range(STEPS - 1))
    assert [h["quota"] for h in steps] == rollover_quotas(budget - 1, STEPS - 1)
    rollover = 0
    for h in steps:
        assert h["nfe_spent"] == h["children"] >= 1
        assert h["rollover"] == h["quota"] + rollover - h["nfe_spent"]
        rollover = h["rollover"]
    assert 1 + sum(h["nfe_spent"] for h in steps) == budget  # + the last step, paid by the cached call
    assert result.reward_calls == 1 + sum(h["children"] for h in steps) + 1
    assert result.x.shape == (1, 2) and result.scores.shape == (1,)
    torch.testing.assert_close(result.scores, reward2(result.x).to(F64))


def test_early_acceptance_takes_the_first_child_that_beats_its_parent(gmm2, schedule):
    """Scripted look-ahead rewards: the parent scores 0; at step 0 the children score -1, -1, 5 (the third is
    taken and the rest of the quota rolls over); at step 1 every child scores 1 < 5, so the whole allowance
    (quota + rollover) is spent and the best (first) child taken anyway."""
    values = [0.0, -1.0, -1.0, 5.0] + [1.0] * 200
    calls = iter(values)

    class Sequence(Scripted):
        def score(self, samples, prompts):
            return torch.tensor([next(calls) for _ in range(len(samples))], dtype=F64)

    chain = gaussian_mixture_chain(gmm2, schedule, 3, SDEDPMSolverPP(2))  # two searched steps
    result = rollover_budget_forcing(chain, Sequence(0.0), max_nfe=21, generator=seeded(0))
    first, second = result.history[0], result.history[1]
    assert first["quota"] == 10 and first["children"] == 3 and first["improved"] and first["reward"] == 5.0
    assert first["rollover"] == 7
    assert second["allowance"] == 17 and second["children"] == 17 and not second["improved"]
    assert second["parent_reward"] == 5.0 and second["reward"] == 1.0
    assert result.nfe == 21


def test_batches_of_children_respect_the_budget(gmm2, schedule, reward2):
    chain = gaussian_mixture_chain(gmm2, schedule, STEPS, SDEDPMSolverPP(2))
    result = rollover_budget_forcing(chain, reward2, max_nfe=101, batch=8, generator=seeded(1))
    assert result.nfe == 101
    assert all(h["children"] <= h["allowance"] for h in result.history[:-1])


# --------------------------------------------------------------------------- RBF: quality


@pytest.mark.parametrize("interpolant", ["linear", "vp"])
def test_rbf_beats_best_of_n_at_equal_nfe_on_a_flow_model(flow_model, reward2, interpolant):
    chain = flow_sde_chain(flow_model, (2,), 20, interpolant=interpolant, dtype=F64)
    rbf, bon = [], []
    for seed in range(4):
        rbf.append(float(rollover_budget_forcing(chain, reward2, max_nfe=200, generator=seeded(seed)).scores))
        bon.append(float(best_of_n(chain, reward2, max_nfe=200, generator=seeded(seed)).scores))
    assert sum(rbf) / 4 > sum(bon) / 4 + 0.2, (rbf, bon)


# --------------------------------------------------------------------------- RBF: degenerate inputs


def test_errors_name_the_problem(gmm2, schedule, reward2):
    sde = gaussian_mixture_chain(gmm2, schedule, STEPS, SDEDPMSolverPP(2))
    with pytest.raises(ValueError, match=f"budget of 11 NFE is smaller than one trajectory \\({STEPS} NFE"):
        rollover_budget_forcing(sde, reward2, max_nfe=11)
    with pytest.raises(ValueError, match="deterministic"):
        rollover_budget_forcing(gaussian_mixture_chain(gmm2, schedule, STEPS, DPMSolverPP(2)), reward2,
                                max_nfe=100)  # fmt: skip
    with pytest.raises(ValueError, match="batch"):
        rollover_budget_forcing(sde, reward2, max_nfe=100, batch=0)
    with pytest.raises(ValueError, match="at least 2 steps"):
        rollover_budget_forcing(gaussian_mixture_chain(gmm2, schedule, 1, SDEDPMSolverPP(1)), reward2,
                                max_nfe=10)  # fmt: skip
    with pytest.raises(ValueError, match="2 prompts"):
        rollover_budget_forcing(sde, reward2, max_nfe=100, prompts=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        rollover_budget_forcing(sde, Scripted(float("nan")), max_nfe=100)


@pytest.mark.parametrize("value", [0.0, float("-inf")], ids=["all-equal", "all--inf"])
def test_flat_rewards_never_improve_and_spend_every_quota(gmm2, schedule, value):
    chain = gaussian_mixture_chain(gmm2, schedule, STEPS, SDEDPMSolverPP(2))
    result = rollover_budget_forcing(chain, Scripted(value), max_nfe=45, generator=seeded(0))
    assert not any(h["improved"] for h in result.history[:-1])
    assert [h["children"] for h in result.history[:-1]] == rollover_quotas(44, STEPS - 1)
    assert result.nfe == 45 and float(result.scores) == value


def test_the_minimum_budget_is_one_plain_trajectory(gmm2, schedule, reward2):
    chain = gaussian_mixture_chain(gmm2, schedule, STEPS, SDEDPMSolverPP(2))
    result = rollover_budget_forcing(chain, reward2, max_nfe=STEPS, generator=seeded(3))
    assert result.nfe == STEPS and all(h["children"] == 1 for h in result.history[:-1])
