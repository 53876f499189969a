"""Bad input fails early with a ValueError that says what is wrong."""

import pytest
import torch

from samplers import (
    DEIS,
    Denoiser,
    DiscreteVPSchedule,
    DPMSolver,
    DPMSolverPP,
    FlowMatchingSchedule,
    SDEDPMSolverPP,
    Solver,
    UniPC,
    make_grid,
    sample,
)
from samplers.analytic import make_net

SCHEDULE = DiscreteVPSchedule.from_betas("linear")


@pytest.mark.parametrize("order", [0, 4, -1, 2.0])
def test_order_outside_1_to_3(order):
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        Solver(order=order)


@pytest.mark.parametrize("make", [lambda: DPMSolverPP(4), lambda: DEIS(0), lambda: UniPC(5)])
def test_presets_check_order(make):
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        make()


def test_fewer_steps_than_order_is_the_lower_order_run():
    """Two steps of a third-order multistep solver are two steps of the second-order one (warm-up)."""
    grid = make_grid(SCHEDULE, 2, final="min")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = Denoiser(lambda x, t: 0.1 * x * (1 + t[:, None] / 1000))
    third = sample(net, x, grid, DPMSolverPP(3, rule="exact", lower_order_final=False))
    second = sample(net, x, grid, DPMSolverPP(2, rule="exact", lower_order_final=False))
    torch.testing.assert_close(third, second, rtol=0, atol=0)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="unknown prediction_type"):
        Denoiser(lambda x, t: x, prediction_type="score")


@pytest.mark.parametrize(
    "solver, bad_call, where",
    [
        (DPMSolverPP(2), 4, "step 3 (t="),
        (UniPC(3), 4, "step 3 (t="),
        (SDEDPMSolverPP(2), 4, "step 3 (t="),
        (DPMSolver(3), 5, "step 1, stage 1 (t="),  # singlestep: evaluations 1-3 belong to step 0
    ],
)
def test_nan_in_model_output_names_the_step(gmm, solver, bad_call, where):
    net = make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)))
    calls = []

    def broken(x, t):
        calls.append(1)
        out = net(x, t)
        return out * float("nan") if len(calls) == bad_call else out

    grid = make_grid(SCHEDULE, 10, final="zero")
    with pytest.raises(ValueError, match=r"NaN or Inf at step \d+") as info:
        sample(Denoiser(broken), torch.zeros(2, gmm.dim, dtype=torch.float64), grid, solver, noise=0)
    assert where in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prediction": "score"}, "prediction must be"),
        ({"rule": "simpson"}, "unknown rule"),
        ({"basis": "sigma"}, "unknown basis"),
        ({"basis": "t", "rule": "midpoint"}, "needs rule='exact'"),
        ({"eta": -0.5}, "eta must be"),
        ({"eta": 1.0, "multistep": False}, "eta > 0"),
        ({"corrector": "unipc_bh3"}, "corrector must be"),
        ({"corrector": "unipc_bh2", "multistep": False}, "multistep"),
        ({"order": 2, "multistep": False, "stages": (0.7, 0.2)}, "stages"),
    ],
)
def test_invalid_solver_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Solver(**kwargs)


def test_noise_prediction_cannot_start_at_alpha_zero():
    grid = make_grid(FlowMatchingSchedule(), 10, "uniform_t")
    with pytest.raises(ValueError, match="alpha = 0"):
        DEIS(2).init(torch.zeros(1, 2), grid)
    with pytest.raises(ValueError, match="finite start log-SNR"):
        DPMSolverPP(2, multistep=False).init(torch.zeros(1, 2), grid)


def test_stepping_past_the_end(gmm):
    grid = make_grid(SCHEDULE, 2, final="zero")
    net = make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)))
    solver = DPMSolverPP(1)
    state = solver.init(torch.zeros(1, gmm.dim, dtype=torch.float64), grid)
    for _ in range(2):
        state = solver.step(Denoiser(net), state, grid)
    with pytest.raises(ValueError, match="state is at step 2"):
        solver.step(Denoiser(net), state, grid)
