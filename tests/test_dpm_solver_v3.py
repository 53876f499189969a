"""DPM-Solver-v3 (samplers.dpm_solver_v3) and its empirical model statistics (samplers.ems): the special cases
DPM-Solver++ / DPM-Solver, EMS against analytic values, accuracy against the exact ODE, the safetensors
cache and the diffusers-API scheduler."""

from __future__ import annotations

import pytest
import torch
from threads import one_thread

from samplers import (
    ContinuousVPSchedule,
    Denoiser,
    DiscreteVPSchedule,
    DPMSolver,
    DPMSolverPP,
    DPMSolverV3,
    DPMSolverV3Scheduler,
    EmpiricalModelStatistics,
    FlowMatchingSchedule,
    TimeGrid,
    UniPC,
    compute_ems,
    fit_grid,
    make_grid,
    sample,
)
from samplers.analytic import GaussianMixture, make_net, solve_probability_flow

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
VP = ContinuousVPSchedule()


def denoiser_for(gmm: GaussianMixture, schedule=VP) -> Denoiser:
    return Denoiser(make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), "epsilon"))


def noise(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def exact(gmm: GaussianMixture, x: torch.Tensor, grid) -> torch.Tensor:
    start = (grid.alpha_values[0], grid.sigma_values[0])
    return solve_probability_flow(gmm, x, start, [(grid.alpha_values[-1], grid.sigma_values[-1])])[0]


MIX = GaussianMixture.random(dim=8, n_components=3, n_classes=1, seed=0)
_D = torch.linspace(0.05, 2.0, 6, dtype=F64)
_MU = torch.linspace(-1.0, 1.5, 6, dtype=F64)
SINGLE = GaussianMixture(_MU[None], torch.diag(_D)[None], torch.tensor([1.0], dtype=F64))


@pytest.fixture(scope="module")
def mix_ems() -> EmpiricalModelStatistics:
    with one_thread():  # module fixtures run before the per-test one_torch_thread fixture
        return compute_ems(denoiser_for(MIX), VP, noise(128, 8, 0), steps=120, probes=4)


@pytest.fixture(scope="module")
def single_ems() -> EmpiricalModelStatistics:
    with one_thread():
        return compute_ems(denoiser_for(SINGLE), VP, noise(8, 6, 0), steps=120, probes=2)


# ------------------------------------------------------------------------------- special cases
@pytest.mark.parametrize("final", ["min", "zero"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_trivial_statistics_are_dpm_solver_pp_and_dpm_solver(order, final):
    """l = 1, s = a, b = 0 is DPM-Solver++ and l = 0, s = a - 1, b = 0 is DPM-Solver (both with exact
    Lagrange integration): equal to rounding at any EMS resolution (here 7 nodes)."""
    den, x = denoiser_for(MIX), noise(4, 8, 1)
    grid = make_grid(VP, 7, "uniform_lambda", final=final)
    for kind, ref in (
        ("data", DPMSolverPP(order, rule="exact")),
        ("noise", DPMSolver(order, multistep=True, rule="exact")),
    ):
        ems = EmpiricalModelStatistics.trivial(kind, VP, (8,), num=7)
        got = sample(den, x, grid, DPMSolverV3(ems, order, corrector=False))
        assert rel_err(got, sample(den, x, grid, ref)) < 1e-12, kind


def test_trivial_statistics_on_a_discrete_schedule_and_a_time_grid():
    schedule = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    den, x = denoiser_for(MIX, schedule), noise(3, 8, 2)
    grid = make_grid(schedule, 9, "uniform_t", final="min")
    ems = EmpiricalModelStatistics.trivial("data", schedule, (8,), num=50)
    got = sample(den, x, grid, DPMSolverV3(ems, 3, corrector=False))
    assert rel_err(got, sample(den, x, grid, DPMSolverPP(3, rule="exact"))) < 1e-12


# ------------------------------------------------------------------------------- EMS on a Gaussian
def test_ems_of_a_diagonal_gaussian_match_the_analytic_statistics(single_ems):
    """Data N(mu, diag v): d(sigma eps)/dx = diag(sigma^2 / (alpha^2 v + sigma^2)) (exact Hutchinson for a
    diagonal Jacobian, exact central differences for a linear map), N = -l alpha mu does not depend on x
    (so s = 0) and b = dN/dlambda."""
    lam = single_ems.lambdas
    a2, s2 = torch.sigmoid(2 * lam)[:, None], torch.sigmoid(-2 * lam)[:, None]
    l_true = s2 / (a2 * _D + s2)
    assert float((single_ems.l - l_true).abs().max()) < 1e-9
    assert float(single_ems.s.abs().max()) < 1e-6
    # dN/dlambda of N = -l alpha mu, by autograd
    lam_ = lam.clone().requires_grad_(True)
    a, s = torch.sigmoid(2 * lam_).sqrt()[:, None], torch.sigmoid(-2 * lam_).sqrt()[:, None]
    n = -(s**2 / (a**2 * _D + s**2)) * a * _MU
    dn = torch.stack([torch.autograd.grad(n[:, k].sum(), lam_, retain_graph=True)[0] for k in range(6)], 1)
    # second-order finite differences along lambda (spacing 0.1): a few 1e-3 relative
    assert float((single_ems.b - dn).abs().max()) < 1e-2 * float(dn.abs().max())
    assert single_ems.metadata["samples"] == "8" and int(single_ems.metadata["model_calls"]) == 2 * 121


@pytest.mark.parametrize("steps", [3, 4])
def test_v3_is_near_exact_on_a_gaussian(single_ems, steps):
    den, x = denoiser_for(SINGLE), noise(16, 6, 7)
    grid = make_grid(VP, steps, "uniform_lambda", final="min")
    ref = exact(SINGLE, x, grid)
    err_v3 = rel_err(sample(den, x, grid, DPMSolverV3(single_ems, 2)), ref)
    err_pp = rel_err(sample(den, x, grid, DPMSolverPP(2)), ref)
    assert err_v3 < 5e-3 and err_v3 < err_pp / 20, (err_v3, err_pp)


# ------------------------------------------------------------------------------- a mixture
@pytest.mark.parametrize(
    "kind, nfe, factor",
    [
        ("uniform_lambda", 5, 1.1),  # a tie: observed v3 0.135, DPM-Solver++ 0.143, UniPC 0.131
        ("uniform_lambda", 6, 0.85),  # observed 0.083 vs 0.113 / 0.107
        ("uniform_t", 5, 0.6),  # observed 0.101 vs 0.233 / 0.223
        ("uniform_t", 6, 0.6),  # observed 0.073 vs 0.182 / 0.174
    ],
)
def test_v3_beats_dpm_solver_pp_and_unipc_on_a_mixture(mix_ems, kind, nfe, factor):
    """EMS from 128 samples; held-out starting noise (another seed). v3 (2nd-order predictor + corrector)
    against DPM-Solver++(2M) and UniPC-bh2-2 at the same NFE; the factors leave ~10% margin on what is
    observed (at NFE 5 on a uniform log-SNR grid the three are within a few percent)."""
    den, x = denoiser_for(MIX), noise(32, 8, 123)
    grid = make_grid(VP, nfe, kind, final="min")
    ref = exact(MIX, x, grid)
    errors = {
        name: rel_err(sample(den, x, grid, solver), ref)
        for name, solver in (
            ("v3", DPMSolverV3(mix_ems, 2)),
            ("dpm++2m", DPMSolverPP(2)),
            ("unipc2", UniPC(2)),
        )
    }
    assert errors["v3"] < factor * min(errors["dpm++2m"], errors["unipc2"]), errors


# ------------------------------------------------------------------------------- persistence and errors
def test_safetensors_round_trip(tmp_path, single_ems):
    path = tmp_path / "ems.safetensors"
    single_ems.save(path)
    loaded = EmpiricalModelStatistics.load(path)
    for key in ("lambdas", "l", "s", "b"):
        assert torch.equal(getattr(loaded, key), getattr(single_ems, key))
    assert loaded.metadata == single_ems.metadata and loaded.fingerprint == single_ems.fingerprint
    den, x = denoiser_for(SINGLE), noise(2, 6, 3)
    grid = make_grid(VP, 4, final="min")
    assert torch.equal(
        sample(den, x, grid, DPMSolverV3(str(path), 2)), sample(den, x, grid, DPMSolverV3(single_ems, 2))
    )


def test_bad_files_and_ranges_raise_clearly(tmp_path, single_ems):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    k = single_ems.lambdas.numel()
    save_file(
        {
            "lambdas": single_ems.lambdas,
            "l": torch.zeros(k, 6),
            "s": torch.zeros(k, 5),
            "b": torch.zeros(k, 6),
        },
        bad,
    )
    with pytest.raises(ValueError, match="same shape"):
        EmpiricalModelStatistics.load(bad)
    save_file({"lambdas": single_ems.lambdas, "l": torch.zeros(k - 1, 6)}, bad)
    with pytest.raises(ValueError, match="lacks tensors"):
        EmpiricalModelStatistics.load(bad)
    with pytest.raises(FileNotFoundError):
        EmpiricalModelStatistics.load(tmp_path / "missing.safetensors")
    save_file(
        {"lambdas": single_ems.lambdas, "l": single_ems.l[1:], "s": single_ems.s[1:], "b": single_ems.b[1:]},
        bad,
    )
    with pytest.raises(ValueError, match="len\\(lambdas\\)"):
        EmpiricalModelStatistics.load(bad)
    # the EMS cover t in [t_min, t_max] of VP; a grid on a schedule reaching further is refused
    wide = ContinuousVPSchedule(t_min=1e-4)
    grid = make_grid(wide, 4, final="min")
    with pytest.raises(ValueError, match="EMS cover only"):
        sample(denoiser_for(SINGLE, wide), noise(2, 6, 0), grid, DPMSolverV3(single_ems))
    with pytest.raises(ValueError, match="sample shape"):
        sample(denoiser_for(MIX), noise(2, 8, 0), make_grid(VP, 4, final="min"), DPMSolverV3(single_ems))
    with pytest.raises(ValueError, match="finite start"):
        DPMSolverV3(single_ems).init(noise(2, 6, 0), TimeGrid.from_times(FlowMatchingSchedule(), [1.0, 0.5]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_ems(denoiser_for(SINGLE), VP, noise(1, 6, 0))
    with pytest.raises(ValueError, match="order"):
        DPMSolverV3(single_ems, order=4)


# ------------------------------------------------------------------------------- the scheduler
def test_scheduler_loop_equals_sample(tmp_path):
    schedule = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    net = make_net(MIX, lambda t: (schedule.alpha(t), schedule.sigma(t)), "epsilon")
    ems = compute_ems(Denoiser(net), schedule, noise(16, 8, 0), steps=40, probes=1)
    path = tmp_path / "stats.safetensors"
    ems.save(path)
    config = DPMSolverV3Scheduler.from_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, ems=str(path)
    ).config
    for order, corrector in ((2, True), (3, False)):
        sched = DPMSolverV3Scheduler.from_config(config, solver_order=order, use_corrector=corrector)
        sched.set_timesteps(8)
        x = noise(4, 8, 5)
        start = x.clone()
        for t in sched.timesteps:
            x = sched.step(net(x, t.to(F64).expand(x.shape[0])), t, x).prev_sample
        solver = DPMSolverV3(str(path), order, corrector=corrector)
        ref = sample(Denoiser(net), start, sched.grid, solver)
        assert rel_err(x, ref) < 1e-6, (order, corrector)
    # a grid fitted for DPM-Solver-v3 runs in its scheduler from the exported config
    x, labels = noise(16, 8, 6), None
    reference = solve_probability_flow(MIX, x, (float(schedule.alpha(999.0)), float(schedule.sigma(999.0))),
                                       [(1.0, 0.0)], class_labels=labels)[0]  # fmt: skip
    solver = DPMSolverV3(str(path), 2)
    init = make_grid(schedule, 5, "uniform_t", final="min")
    fit = fit_grid(Denoiser(net), solver, x, reference, init, max_evaluations=30)
    sched = DPMSolverV3Scheduler.from_config(config, **fit.scheduler_config())
    sched.set_timesteps(5)
    out = x.clone()
    for t in sched.timesteps:
        out = sched.step(net(out, t.to(F64).expand(out.shape[0])), t, out).prev_sample
    direct = sample(Denoiser(net, time_fn=lambda t: t.float().double()), x, fit.grid(schedule), solver)
    assert rel_err(out, direct) < 1e-12 and fit.error <= fit.initial_error
    with pytest.raises(ValueError, match="needs `ems`"):
        DPMSolverV3Scheduler()
    with pytest.raises(FileNotFoundError):
        DPMSolverV3Scheduler(ems=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("order", [1, 2])
def test_the_corrector_raises_the_convergence_order_by_one(order):
    """Empirical order of DPM-Solver-v3 with trivial DPM-Solver++ statistics (the predictor alone is
    DPM-Solver++ of order p), with and without the corrector, on uniform-log-SNR grids ending at t_min: error
    ratios when the step count doubles from 32 to 64 to 128."""
    grid32 = make_grid(VP, 32, "uniform_lambda", final="min")
    ems = EmpiricalModelStatistics.trivial("data", VP, (8,), num=50)
    x = noise(32, 8, 5)
    target = exact(MIX, x, grid32)
    rates = {}
    for corrector in (False, True):
        solver = DPMSolverV3(ems, order=order, corrector=corrector, lower_order_final=False)
        errors = []
        for steps in (32, 64, 128):
            grid = make_grid(VP, steps, "uniform_lambda", final="min")
            errors.append(rel_err(sample(denoiser_for(MIX), x, grid, solver), target))
        rates[corrector] = [torch.log2(torch.tensor(a / b)).item() for a, b in zip(errors, errors[1:])]
    assert all(abs(r - order) < 0.35 for r in rates[False]), rates
    assert all(abs(r - (order + 1)) < 0.45 for r in rates[True]), rates
