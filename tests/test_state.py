"""SolverState can be indexed and concatenated mid-trajectory without changing any trajectory."""

import pytest
import torch

from samplers import Denoiser, DiscreteVPSchedule, SolverState, make_grid
from samplers.analytic import make_net
from samplers.catalogue import ODE_PRESETS

SCHEDULE = DiscreteVPSchedule.from_betas("linear")
GRID = make_grid(SCHEDULE, 12, "uniform_lambda", final="zero")


def run(solver, denoiser, state, until):
    while state.step < until:
        state = solver.step(denoiser, state, GRID)
    return state


@pytest.fixture
def setup(gmm):
    net = make_net(gmm, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)))
    x_T = torch.randn(8, gmm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(8) % 2
    return Denoiser(net, "epsilon"), x_T, labels


@pytest.mark.parametrize("name", ["dpmsolver++3m", "unipc-bh2-3", "deis-tab3", "dpmsolver++3s"])
@pytest.mark.parametrize("cut", [1, 2, 5])
def test_indexing_mid_trajectory_equals_running_those_rows_alone(setup, name, cut):
    denoiser, x_T, labels = setup
    solver = ODE_PRESETS[name].solver
    idx = torch.tensor([5, 0, 0, 3])  # with a duplicate, as after resampling
    full = run(solver, denoiser, solver.init(x_T, GRID, {"class_labels": labels}), cut)
    assert len(full.history) == (min(cut, solver.order) if solver.multistep else 0)
    resumed = run(solver, denoiser, full[idx], GRID.steps).x
    alone = run(solver, denoiser, solver.init(x_T[idx], GRID, {"class_labels": labels[idx]}), GRID.steps).x
    assert torch.equal(resumed, alone)
    # and the conditioning matters, so the per-row cond really was carried along
    other = run(
        solver, denoiser, solver.init(x_T[idx], GRID, {"class_labels": 1 - labels[idx]}), GRID.steps
    ).x
    assert (other - alone).abs().max() > 1e-3


def test_cat_of_pieces_continues_like_the_whole(setup):
    denoiser, x_T, labels = setup
    solver = ODE_PRESETS["unipc-bh2-3"].solver
    state = run(solver, denoiser, solver.init(x_T, GRID, {"class_labels": labels}), 4)
    merged = SolverState.cat([state[:3], state[3:]])
    assert torch.equal(
        run(solver, denoiser, merged, GRID.steps).x, run(solver, denoiser, state, GRID.steps).x
    )


def test_cat_rejects_states_at_different_steps(setup):
    denoiser, x_T, _ = setup
    solver = ODE_PRESETS["dpmsolver++2m"].solver
    a = run(solver, denoiser, solver.init(x_T, GRID), 2)
    b = run(solver, denoiser, solver.init(x_T, GRID), 3)
    with pytest.raises(ValueError, match="same step"):
        SolverState.cat([a, b])


def test_state_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="batch size"):
        SolverState(x=torch.zeros(4, 2), history=(torch.zeros(3, 2),), history_steps=(0,))
