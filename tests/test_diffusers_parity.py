"""Step-for-step parity with the diffusers 0.42 schedulers on the exact Gaussian-mixture model.

Both sides run the same exact epsilon (or flow) network from the same x_T on the same time points, so any
difference is a difference of algorithm (order selection, coefficients, final step, time placement).

Precision. diffusers computes in float32 even when given float64 samples: betas/alphas_cumprod are built
with ``dtype=torch.float32``, ``sigmas`` are cast with ``.astype(np.float32)`` and
``DPMSolverMultistepScheduler.step`` upcasts the sample with ``sample.to(torch.float32)`` (the result is cast
back to the model output's dtype, so a float64 tensor comes back, carrying float32 errors). Out of the box
the samples therefore agree to ~5e-6 only, which would hide small coefficient differences. The main tests
run diffusers' own code with the scheduler module's ``torch.float32``/``np.float32`` globals redirected to
float64 (:func:`diffusers_float64`; nothing else in diffusers is touched) and then require 1e-8 (observed:
<= 4e-14). :func:`test_parity_native_float32` runs the unmodified float32 diffusers with an honest float32
tolerance.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import diffusers
import pytest
import torch
from diffusers64 import diffusers_float64

from samplers import (
    DDIM,
    DEIS,
    Denoiser,
    DiscreteVPSchedule,
    DPMSolver,
    DPMSolverPP,
    FlowMatchingSchedule,
    Solver,
    TimeGrid,
    UniPC,
    make_grid,
    sample,
)
from samplers.analytic import GaussianMixture, make_net
from samplers.state import SolverState

F64 = torch.float64
TRAIN_STEPS = 1000
#: diffusers' default DDPM configuration (DDPMScheduler()'s betas and prediction type).
DDPM = dict(
    num_train_timesteps=TRAIN_STEPS,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
)
SCHEDULE = DiscreteVPSchedule.from_betas("linear", TRAIN_STEPS, 1e-4, 0.02)
GMM = GaussianMixture.random(dim=8, n_components=3, seed=0)
EPS_NET = make_net(GMM, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)), "epsilon")
X_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)

PARITY_ATOL = 1e-8  # float64 diffusers vs ours; observed <= 4e-14
SIGMA_ATOL = 1e-10  # VE sigmas (values up to 157) of diffusers' float64 set_timesteps vs our grid
#: Unmodified (float32) diffusers: its float32 betas/cumprod/sigmas and sample upcast give errors of a few
#: 1e-6 on samples of size ~3 (observed max 5e-6, DEIS-3 at 20 steps); 2e-5 is 4x that.
NATIVE_ATOL = 2e-5
#: float32 VE sigmas: relative error ~5e-8 at high noise; near t = 0, 1 - abar ~ 1e-4 cancels in float32 and
#: leaves absolute errors up to 8.3e-7 (8e-5 relative at sigma_min = 0.01).
NATIVE_SIGMA_RTOL, NATIVE_SIGMA_ATOL = 1e-6, 2e-6


# ---------------------------------------------------------------------------------------------- helpers


def run_diffusers(scheduler_cls: type, kwargs: dict, steps: int, *, float64: bool = True):
    """diffusers' sampling loop: ``x = sched.step(net(x, t), t, x).prev_sample`` over ``sched.timesteps``."""
    with diffusers_float64(scheduler_cls) if float64 else contextlib.nullcontext():
        sched = scheduler_cls(**kwargs)
        sched.set_timesteps(steps)
        if float64:  # the redirection really took effect (guards against a silent float32 run)
            assert sched.alphas_cumprod.dtype == F64
            assert getattr(sched, "sigmas", sched.alphas_cumprod).dtype == F64
        x = X_T.clone()
        for t in sched.timesteps:
            x = sched.step(EPS_NET(x, t), t, x).prev_sample
    assert x.dtype == F64
    return sched, x


def run_ours(solver: Solver, grid: TimeGrid) -> torch.Tensor:
    return sample(Denoiser(EPS_NET, "epsilon"), X_T.clone(), grid, solver)


def timestep_grid(sched: Any, final: str) -> TimeGrid:
    """Our grid on diffusers' timesteps followed by t = 0: sigma = 0 exactly (``final="zero"``) or the
    schedule's smallest sigma, sqrt((1 - abar_0)/abar_0) (``final="min"``, diffusers' ``sigma_min``)."""
    return TimeGrid.from_times(SCHEDULE, [float(t) for t in sched.timesteps] + [0.0], final=final)


@dataclass(frozen=True)
class Case:
    scheduler: type
    kwargs: dict
    solver: Solver
    #: how our grid ends to reproduce the scheduler's last point: "zero" / "min" (timestep_grid) or "none"
    #: (diffusers' timesteps only, see grid_for)
    final: str


DPMPP = diffusers.DPMSolverMultistepScheduler
UNIPC = diffusers.UniPCMultistepScheduler
CASES: dict[str, Case] = {}
for _order in (1, 2):
    for _stype, _rule in (("midpoint", "midpoint"), ("heun", "exact")):
        CASES[f"dpmsolver++{_order}-{_stype}"] = Case(
            DPMPP,
            dict(DDPM, algorithm_type="dpmsolver++", solver_order=_order, solver_type=_stype),
            DPMSolverPP(_order, rule=_rule),
            "zero",
        )
# diffusers refuses final_sigmas_type="zero" for algorithm_type="dpmsolver" (noise prediction), so it ends at
# sigma_min; lower_order_final then lowers the last steps only below 15 steps, like our default (None).
CASES["dpmsolver2-midpoint"] = Case(
    DPMPP,
    dict(
        DDPM,
        algorithm_type="dpmsolver",
        solver_order=2,
        solver_type="midpoint",
        final_sigmas_type="sigma_min",
    ),
    DPMSolver(2, multistep=True, rule="midpoint"),
    "min",
)
for _order in (1, 2, 3):
    # diffusers' UniPC lowers the order of the last steps at any number of steps: lower_order_final=True.
    for _variant in ("bh1", "bh2"):
        CASES[f"unipc{_order}-{_variant}-sigma_min"] = Case(
            UNIPC,
            dict(DDPM, solver_order=_order, solver_type=_variant, final_sigmas_type="sigma_min"),
            UniPC(_order, variant=_variant, lower_order_final=True),
            "min",
        )
    # bh1 with final_sigmas_type="zero" (diffusers' default) returns NaN in diffusers 0.42: the last step has
    # h = inf, B(h) = h = -inf and multiplies an empty correction 0 (x_t_ - alpha_t * B_h * 0). Only bh2
    # (B(h) = expm1(-h) = -1 there) is compared with a sigma = 0 final step.
    CASES[f"unipc{_order}-bh2-zero"] = Case(
        UNIPC,
        dict(DDPM, solver_order=_order, solver_type="bh2"),
        UniPC(_order, variant="bh2", lower_order_final=True),
        "zero",
    )
for _order in (1, 2, 3):
    # DEIS "logrho" == our lambda basis; DEISMultistepScheduler always ends at sigma_min (no zero option).
    CASES[f"deis{_order}-logrho"] = Case(
        diffusers.DEISMultistepScheduler, dict(DDPM, solver_order=_order), DEIS(_order, basis="lambda"), "min"
    )
# DDIM ("leading" timesteps ..., 0): with set_alpha_to_one=True the step from t = 0 goes to
# final_alpha_cumprod = 1, i.e. sigma = 0: timesteps + [0] with final="zero" (clip_sample must be off: the
# mixture's data leave [-1, 1]).
CASES["ddim-alpha_to_one"] = Case(
    diffusers.DDIMScheduler, dict(DDPM, clip_sample=False, set_alpha_to_one=True), DDIM(), "zero"
)
# With set_alpha_to_one=False the step from t = 0 goes to alphas_cumprod[0], the point it starts from (an
# exact no-op for eta = 0), so the matching grid is diffusers' timesteps alone (final="none": see grid_for).
CASES["ddim-alpha_cumprod_0"] = Case(
    diffusers.DDIMScheduler, dict(DDPM, clip_sample=False, set_alpha_to_one=False), DDIM(), "none"
)


def grid_for(case: Case, sched: Any) -> TimeGrid:
    if case.final == "none":
        return TimeGrid.from_times(SCHEDULE, [float(t) for t in sched.timesteps], final="min")
    return timestep_grid(sched, case.final)


def scheduler_noise_levels(sched: Any) -> torch.Tensor:
    """The VE sigma sqrt((1 - abar)/abar) at each point diffusers steps through (last: where it ends)."""
    if isinstance(sched, diffusers.DDIMScheduler):
        abar = sched.alphas_cumprod[sched.timesteps].to(F64)
        # the last step goes to final_alpha_cumprod: 1, or alphas_cumprod[0] without set_alpha_to_one
        abar = torch.cat([abar, sched.final_alpha_cumprod.to(F64).reshape(1)])
        return torch.sqrt((1 - abar) / abar)
    return sched.sigmas.to(F64)


def ours_noise_levels(grid: TimeGrid, case: Case) -> torch.Tensor:
    ve = grid.sigma / grid.alpha
    if case.final == "none":  # diffusers' extra no-op step from t = 0 to t = 0
        ve = torch.cat([ve, ve[-1:]])
    return ve


DEPRECATED_DPMSOLVER = "ignore:.*algorithm_type dpmsolver.*:FutureWarning"
# diffusers 0.42 applies numpy ufuncs to torch tensors (DEIS) and np.array(copy=False) to them: NumPy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.filterwarnings(DEPRECATED_DPMSOLVER)
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("name", list(CASES))
def test_parity_float64(name: str, steps: int) -> None:
    case = CASES[name]
    sched, x_diffusers = run_diffusers(case.scheduler, case.kwargs, steps)
    grid = grid_for(case, sched)
    torch.testing.assert_close(
        ours_noise_levels(grid, case), scheduler_noise_levels(sched), rtol=0, atol=SIGMA_ATOL
    )
    x_ours = run_ours(case.solver, grid)
    diff = (x_ours - x_diffusers).abs().max().item()
    print(f"{name} steps={steps}: max |ours - diffusers| = {diff:.3e}")
    assert diff < PARITY_ATOL, diff


@pytest.mark.filterwarnings(DEPRECATED_DPMSOLVER)
@pytest.mark.parametrize("name", list(CASES))
def test_parity_native_float32(name: str) -> None:
    """The unmodified diffusers (float32 internals) agrees with our float64 run to float32 accuracy."""
    case = CASES[name]
    sched, x_diffusers = run_diffusers(case.scheduler, case.kwargs, 20, float64=False)
    grid = grid_for(case, sched)
    torch.testing.assert_close(
        ours_noise_levels(grid, case),
        scheduler_noise_levels(sched),
        rtol=NATIVE_SIGMA_RTOL,
        atol=NATIVE_SIGMA_ATOL,
    )
    diff = (run_ours(case.solver, grid) - x_diffusers).abs().max().item()
    print(f"{name} (float32 diffusers): max |ours - diffusers| = {diff:.3e}")
    assert diff < NATIVE_ATOL, diff


def _singlestep_blocks(sched: Any) -> list[tuple[int, int]]:
    """(start, length) of each DPMSolverSinglestepScheduler update, read off its ``order_list``: an order-1
    entry starts a block and each following order-2 entry extends it by one timestep."""
    blocks: list[tuple[int, int]] = []
    for i, order in enumerate(sched.order_list):
        if order == 1:
            blocks.append((i, 1))
        else:
            start, length = blocks[-1]
            assert order == length + 1 and i == start + length
            blocks[-1] = (start, length + 1)
    return blocks


def run_ours_singlestep(sched: Any, *, diffusers_stages: bool = True) -> torch.Tensor:
    """DPM-Solver++(2S) on diffusers' blocks. diffusers' singlestep order-2 update spans two timesteps
    [t_i, t_{i+2}] and uses t_{i+1} (reached by a first-order step from t_i, in the previous ``step`` call)
    as its intermediate point, so r = (lambda_{i+1} - lambda_i)/(lambda_{i+2} - lambda_i) changes from block
    to block, while our singlestep solver takes a fixed ``stages`` r per solver. Each block is therefore one
    step of our DPM-Solver++(2S) with stages=(r,) on the two-point grid [t_i, t_{i+2}] (our stage lands on
    t_{i+1} up to the rounding of t_of_lambda). ``diffusers_stages=False``: our default r = 1/2 instead."""
    ts = [float(t) for t in sched.timesteps] + [0.0]
    lam = SCHEDULE.lambda_(torch.tensor(ts, dtype=F64))
    denoiser, x = Denoiser(EPS_NET, "epsilon"), X_T.clone()
    blocks = _singlestep_blocks(sched)
    for start, length in blocks:
        end = start + length
        grid = TimeGrid.from_times(
            SCHEDULE, [ts[start], ts[end]], final="zero" if end == len(ts) - 1 else "min"
        )
        if length == 1:
            solver = DPMSolverPP(1, multistep=False)
        else:
            r = float((lam[start + 1] - lam[start]) / (lam[end] - lam[start]))
            stages = (r,) if diffusers_stages else None
            # lower_order_final=False: on a one-step grid the automatic rule would lower the order to 1.
            solver = DPMSolverPP(2, multistep=False, rule="midpoint", stages=stages, lower_order_final=False)
        # step() directly: init() asks for >= order grid steps, which only multistep warm-up needs.
        x = solver.step(denoiser, SolverState(x=x), grid).x
    assert denoiser.nfe == len(sched.timesteps)
    return x


SINGLESTEP = diffusers.DPMSolverSinglestepScheduler
SINGLESTEP_KW = dict(
    DDPM, solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True
)


@pytest.mark.parametrize("float64", [True, False], ids=["float64", "native_float32"])
@pytest.mark.parametrize("steps", [10, 11, 20])  # 11: the odd order list [1, 2] * 5 + [1]
def test_parity_dpmsolver_singlestep_2(steps: int, float64: bool) -> None:
    sched, x_diffusers = run_diffusers(SINGLESTEP, SINGLESTEP_KW, steps, float64=float64)
    assert sched.order_list.count(2) >= 4  # really second-order blocks, not a first-order run
    grid = timestep_grid(sched, "zero")
    atol, sig_rtol, sig_atol = (
        (PARITY_ATOL, 0.0, SIGMA_ATOL) if float64 else (NATIVE_ATOL, NATIVE_SIGMA_RTOL, NATIVE_SIGMA_ATOL)
    )
    torch.testing.assert_close(grid.sigma / grid.alpha, sched.sigmas.to(F64), rtol=sig_rtol, atol=sig_atol)
    diff = (run_ours_singlestep(sched) - x_diffusers).abs().max().item()
    print(f"dpmsolver++2S steps={steps} float64={float64}: max |ours - diffusers| = {diff:.3e}")
    assert diff < atol, diff


# ---------------------------------------------------------------------------------------------- flow matching

FLOW = FlowMatchingSchedule(shift=3.0)
FLOW_NET = make_net(GMM, lambda t: (FLOW.alpha(t), FLOW.sigma(t)), "flow")


def flow_net_1000(x: torch.Tensor, timestep: Any) -> torch.Tensor:
    """A diffusers-style flow transformer: conditioned on timestep = 1000 * sigma."""
    return FLOW_NET(x, torch.as_tensor(timestep, dtype=F64) / TRAIN_STEPS)


FLOW_KW = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, solver_order=2)


@pytest.mark.parametrize("float64", [True, False], ids=["float64", "native_float32"])
@pytest.mark.parametrize("steps", [10, 20])
def test_parity_flow_matching_dpmsolverpp2(steps: int, float64: bool) -> None:
    """diffusers' flow sigmas are shift(linspace(1 - 1/1000, 0, N + 1)) with the last replaced by 0, so the
    matching grid is uniform_t from t_start = 0.999 (not 1: the default make_grid starts at alpha = 0).
    Its int64 ``timesteps`` are floor(1000 sigma), a quantised time that a network fed with them would see;
    to compare the solvers, the model is evaluated at the scheduler's exact 1000 * sigma instead."""
    cls = diffusers.DPMSolverMultistepScheduler
    with diffusers_float64(cls) if float64 else contextlib.nullcontext():
        sched = cls(**FLOW_KW)
        sched.set_timesteps(steps)
        assert torch.equal(sched.timesteps, (sched.sigmas[:-1].to(F64) * TRAIN_STEPS).floor().long())
        x_diffusers = X_T.clone()
        for i, t in enumerate(sched.timesteps):
            model_out = flow_net_1000(x_diffusers, sched.sigmas[i].to(F64) * TRAIN_STEPS)
            x_diffusers = sched.step(model_out, t, x_diffusers).prev_sample

    grid = make_grid(FLOW, steps, "uniform_t", t_start=1 - 1 / TRAIN_STEPS, t_end=0.0, final="zero")
    default = make_grid(FLOW, steps, "uniform_t", final="zero")
    sigmas = sched.sigmas.to(F64)
    torch.testing.assert_close(grid.t, sigmas, rtol=0, atol=SIGMA_ATOL if float64 else 1e-7)
    assert (default.t - sigmas).abs().max() > 1e-4  # why t_start is needed
    denoiser = Denoiser(flow_net_1000, "flow", time_fn=lambda t: TRAIN_STEPS * t)
    x_ours = sample(denoiser, X_T.clone(), grid, DPMSolverPP(2))
    diff = (x_ours - x_diffusers).abs().max().item()
    print(f"flow dpmsolver++2M steps={steps} float64={float64}: max |ours - diffusers| = {diff:.3e}")
    assert diff < (PARITY_ATOL if float64 else NATIVE_ATOL), diff


# ------------------------------------------------------------------------------------ documented differences


def test_dpmsolverpp_3m_differs_from_diffusers_by_design() -> None:
    """KNOWN, INTENDED difference. Our DPM-Solver++(3M) integrates the quadratic interpolant through the last
    three x0 predictions exactly. diffusers' 3M update uses D2 coefficient phi_2(-h) - 1/2 where the exact
    integral has twice that, 2 (phi_2(-h) - 1/2), so diffusers' 3M is only second order. The runs agree while
    both are at orders 1 and 2 (the first two steps) and separate at the first third-order step."""
    steps = 20
    cls = diffusers.DPMSolverMultistepScheduler
    with diffusers_float64(cls):
        sched = cls(**DDPM, solver_order=3, algorithm_type="dpmsolver++")
        sched.set_timesteps(steps)
        x, trajectory_diffusers = X_T.clone(), []
        for t in sched.timesteps:
            x = sched.step(EPS_NET(x, t), t, x).prev_sample
            trajectory_diffusers.append(x)
    grid = timestep_grid(sched, "zero")
    solver, denoiser = DPMSolverPP(3), Denoiser(EPS_NET, "epsilon")
    state, trajectory_ours = solver.init(X_T.clone(), grid), []
    while state.step < grid.steps:
        state = solver.step(denoiser, state, grid)
        trajectory_ours.append(state.x)
    diffs = [(a - b).abs().max().item() for a, b in zip(trajectory_ours, trajectory_diffusers, strict=True)]
    print(f"3M: per-step max |ours - diffusers| = {[f'{d:.1e}' for d in diffs]}")
    assert max(diffs[:2]) < PARITY_ATOL, diffs  # orders 1 and 2: identical
    assert diffs[2] > 1e-6, diffs  # the first third-order step already differs
    assert diffs[-1] > 1e-6, diffs


NEAR_MISSES = {
    # diffusers case -> one of our solvers that differs from it in a single detail
    "dpmsolver++2-midpoint": DPMSolverPP(2, rule="exact"),
    "dpmsolver++2-heun": DPMSolverPP(2, rule="midpoint"),
    "dpmsolver2-midpoint": DPMSolverPP(2, rule="midpoint"),  # data instead of noise prediction
    "unipc2-bh2-zero": UniPC(2, variant="bh1", lower_order_final=True),
    "unipc2-bh1-sigma_min": UniPC(2, variant="bh1", corrector=False, lower_order_final=True),
    "unipc3-bh2-zero": UniPC(3, variant="bh2"),  # lower_order_final=None: no lowering at 20 steps
    "deis3-logrho": DEIS(3, basis="t"),  # DEIS tAB
    "deis2-logrho": DEIS(2, basis="rho"),  # DEIS rhoAB
}


@pytest.mark.filterwarnings(DEPRECATED_DPMSOLVER)
@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_parity_tolerance_rejects_near_misses(name: str) -> None:
    """Power check: a solver one detail away from the diffusers algorithm misses it by far more than
    PARITY_ATOL, so the parity tests above can fail."""
    case = CASES[name]
    sched, x_diffusers = run_diffusers(case.scheduler, case.kwargs, 20)
    diff = (run_ours(NEAR_MISSES[name], grid_for(case, sched)) - x_diffusers).abs().max().item()
    print(f"near miss for {name}: {diff:.3e}")
    assert diff > 1e-6, diff


def test_singlestep_lambda_midpoint_stage_is_not_diffusers() -> None:
    """Power check for the singlestep comparison: the lambda-midpoint stage (our default r = 1/2) is a
    different algorithm from diffusers' next-timestep stage."""
    sched, x_diffusers = run_diffusers(SINGLESTEP, SINGLESTEP_KW, 10)
    diff = (run_ours_singlestep(sched, diffusers_stages=False) - x_diffusers).abs().max().item()
    assert diff > 1e-6, diff
