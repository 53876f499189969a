"""Every ODE preset converges to the exact probability-flow solution at its theoretical order.

Ground truth: the 32-d Gaussian mixture's PF-ODE solved by DOP853 at rtol = atol = 1e-12. The order is the
least-squares slope of log(RMS error) against log(NFE) on a uniform-log-SNR grid, in the asymptotic range
of each order (third and fourth order methods need finer grids before their leading error term dominates).
"""

import math

import numpy as np
import pytest
import torch

from samplers import (
    ContinuousVPSchedule,
    Denoiser,
    DiscreteVPSchedule,
    FlowMatchingSchedule,
    make_grid,
    sample,
)
from samplers.analytic import make_net, solve_probability_flow
from samplers.catalogue import ODE_PRESETS

# (schedule, grid window, the network's prediction type)
SCHEDULES = {
    "vp_discrete": (DiscreteVPSchedule.from_betas("linear"), {}, "epsilon"),
    "vp_continuous": (ContinuousVPSchedule(), {}, "v_prediction"),
    # lambda from -4.6 to 4.6, the same range as the VP schedules (alpha = 0 at t = 1 is tested separately)
    "flow": (FlowMatchingSchedule(), {"t_start": 0.99, "t_end": 0.01}, "flow"),
}
NFE_BY_ORDER = {1: (24, 48, 96), 2: (48, 96, 192), 3: (96, 192, 384), 4: (384, 768, 1536)}
BATCH = 16


@pytest.fixture(scope="module", params=list(SCHEDULES))
def problem(request, gmm):
    schedule, window, prediction = SCHEDULES[request.param]
    ends = make_grid(schedule, 1, "uniform_lambda", final="min", **window)
    start, end = (float(ends.alpha[0]), float(ends.sigma[0])), (float(ends.alpha[-1]), float(ends.sigma[-1]))
    z = torch.randn(BATCH, gmm.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_start = z * math.hypot(*start)
    exact = solve_probability_flow(gmm, x_start, start, [end])[0]
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), prediction)
    return schedule, window, x_start, exact, Denoiser(net, prediction)


def measured_order(solver, problem, nfes):
    schedule, window, x_start, exact, denoiser = problem
    per_step = 1 if solver.multistep else solver.order
    errors, counts = [], []
    for nfe in nfes:
        grid = make_grid(schedule, nfe // per_step, "uniform_lambda", final="min", **window)
        nfe_before = denoiser.nfe
        out = sample(denoiser, x_start, grid, solver)
        errors.append(((out - exact) ** 2).mean().sqrt().item())
        counts.append(denoiser.nfe - nfe_before)
    return -np.polyfit(np.log(counts), np.log(errors), 1)[0], errors, counts


@pytest.mark.parametrize("name", list(ODE_PRESETS))
def test_preset_converges_at_theoretical_order(name, problem):
    preset = ODE_PRESETS[name]
    slope, errors, counts = measured_order(preset.solver, problem, NFE_BY_ORDER[preset.order])
    print(f"{name}: order {preset.order}, slope {slope:.2f}, NFE {counts}, RMS errors {errors}")
    assert abs(slope - preset.order) < 0.3, (slope, errors, counts)
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_third_order_is_not_second_order(problem):
    """Power check of the slope measurement: a second-order method is rejected as third order."""
    slope, _, _ = measured_order(ODE_PRESETS["dpmsolver++2m"].solver, problem, NFE_BY_ORDER[3])
    assert abs(slope - 3) >= 0.3
