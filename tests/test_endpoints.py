"""Grid ends: start from pure noise at alpha = 0 (flow matching, t = 1); land exactly at sigma = 0."""

import math

import numpy as np
import pytest
import torch

from samplers import Denoiser, DiscreteVPSchedule, FlowMatchingSchedule, make_grid
from samplers.analytic import make_net, solve_probability_flow
from samplers.catalogue import ODE_PRESETS

CASES = {
    "flow": (FlowMatchingSchedule(), "uniform_t", "flow"),
    "vp": (DiscreteVPSchedule.from_betas("linear"), "uniform_lambda", "epsilon"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["dpmsolver++2m", "dpmsolver++3m", "unipc-bh2-3", "ddim"])
def test_full_range_run_lands_at_sigma_zero_and_converges(gmm, case, name):
    schedule, kind, prediction = CASES[case]
    solver = ODE_PRESETS[name].solver
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), prediction)
    start = make_grid(schedule, 1, kind, final="zero")
    a0, s0 = float(start.alpha[0]), float(start.sigma[0])
    if case == "flow":
        assert a0 == 0.0  # the flow run starts from pure noise, lambda = -inf
    x_T = torch.randn(
        16, gmm.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    ) * math.hypot(a0, s0)
    exact = solve_probability_flow(gmm, x_T, (a0, s0), [(1.0, 0.0)])[0]
    errors, steps = [], [16, 32, 64, 128]
    for n in steps:
        grid = make_grid(schedule, n, kind, final="zero")
        assert grid.ends_clean and float(grid.alpha[-1]) == 1.0
        denoiser = Denoiser(net, prediction)
        state = solver.init(x_T, grid)
        while state.step < n - 1:
            state = solver.step(denoiser, state, grid)
        last = denoiser(state.x, grid.t[-2], float(grid.alpha[-2]), float(grid.sigma[-2]))
        out = solver.step(denoiser, state, grid).x
        if solver.corrector is None:
            # the step into sigma = 0 is first order: it returns the model's clean prediction there
            torch.testing.assert_close(out, last.x0, rtol=0, atol=1e-12)
        assert torch.isfinite(out).all()
        errors.append(((out - exact) ** 2).mean().sqrt().item())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    print(case, name, errors, slope)
    assert errors[-1] < errors[0] / 4 and slope > 0.9
    assert errors[-1] < (2e-2 if name == "ddim" else 1e-3)
