"""The diffusers-API schedulers: parity with diffusers over a 10-step loop, equality with the engine they
wrap, every way of placing timesteps, the step protocol (begin index, add_noise, no host sync), flow
configs, save/load, and clear errors."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers64 import diffusers_float64

from samplers import (
    DDIMSolverScheduler,
    DEISScheduler,
    Denoiser,
    DiscreteVPSchedule,
    DPMSolverPPScheduler,
    ExponentialIntegratorScheduler,
    FlowMatchingSchedule,
    Solver,
    TimeGrid,
    UniPCScheduler,
    make_grid,
    sample,
)
from samplers.analytic import GaussianMixture, make_net
from samplers.catalogue import get_preset
from samplers.schedulers import AYS_SD15_SIGMAS

F64 = torch.float64
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SCHEDULE = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
GMM = GaussianMixture.random(dim=8, n_components=3, seed=0)
EPS_NET = make_net(GMM, lambda t: (SCHEDULE.alpha(t), SCHEDULE.sigma(t)), "epsilon")
FLOW_NET = make_net(GMM, lambda t: (1 - t / 1000, t / 1000), "flow")
X_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)


def run(scheduler, steps=10, net=EPS_NET, x=X_T, **set_kwargs):
    """diffusers' sampling loop over ``scheduler.timesteps``."""
    scheduler.set_timesteps(steps, **set_kwargs)
    x = x.clone() * getattr(scheduler, "init_noise_sigma", 1.0)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(net(inp, t.to(F64).expand(x.shape[0])), t, x).prev_sample
    return x


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------- parity with diffusers
PARITY = {
    "dpmsolver++2m": (diffusers.DPMSolverMultistepScheduler, {}, DPMSolverPPScheduler, {}),
    "dpmsolver++3m": (
        diffusers.DPMSolverMultistepScheduler,
        dict(solver_order=3),
        DPMSolverPPScheduler,
        dict(solver_order=3),
    ),
    "dpmsolver++2m-heun": (
        diffusers.DPMSolverMultistepScheduler,
        dict(solver_type="heun"),
        DPMSolverPPScheduler,
        dict(solver_type="heun"),
    ),
    "dpmsolver2m-noise": (
        diffusers.DPMSolverMultistepScheduler,
        dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        DPMSolverPPScheduler,
        dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
    ),
    "deis2": (diffusers.DEISMultistepScheduler, {}, DEISScheduler, {}),
    "deis3": (diffusers.DEISMultistepScheduler, dict(solver_order=3), DEISScheduler, dict(solver_order=3)),
    "unipc-bh2-2": (diffusers.UniPCMultistepScheduler, {}, UniPCScheduler, {}),
    "unipc-bh2-3": (
        diffusers.UniPCMultistepScheduler,
        dict(solver_order=3),
        UniPCScheduler,
        dict(solver_order=3),
    ),
    # diffusers' bh1 step into sigma = 0 is NaN (B(h) = h at h = inf): compare ending at sigma_min
    "unipc-bh1-2": (
        diffusers.UniPCMultistepScheduler,
        dict(solver_type="bh1", final_sigmas_type="sigma_min"),
        UniPCScheduler,
        dict(solver_type="bh1", final_sigmas_type="sigma_min"),
    ),
    "ddim-sd": (
        diffusers.DDIMScheduler,
        dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        DDIMSolverScheduler,
        dict(set_alpha_to_one=False, steps_offset=1),
    ),
    "ddim": (diffusers.DDIMScheduler, dict(clip_sample=False), DDIMSolverScheduler, {}),
    "dpmsolver++2m-sigma-min-leading": (
        diffusers.DPMSolverMultistepScheduler,
        dict(final_sigmas_type="sigma_min", timestep_spacing="leading", steps_offset=1),
        DPMSolverPPScheduler,
        dict(final_sigmas_type="sigma_min", timestep_spacing="leading", steps_offset=1),
    ),
    "dpmsolver++2m-trailing": (
        diffusers.DPMSolverMultistepScheduler,
        dict(timestep_spacing="trailing"),
        DPMSolverPPScheduler,
        dict(timestep_spacing="trailing"),
    ),
}


@pytest.mark.parametrize("name", PARITY)
def test_parity_with_diffusers_float32(name):
    """Out-of-the-box (float32) diffusers vs ours over a 10-step loop: within 1e-5 relative."""
    theirs_cls, theirs_kw, ours_cls, ours_kw = PARITY[name]
    theirs = run(theirs_cls(**SD, **theirs_kw))
    ours_sched = ours_cls(**SD, **ours_kw)
    ours = run(ours_sched)
    assert rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("name", PARITY)
def test_parity_with_diffusers_float64(name):
    """diffusers' own code run in float64 (see diffusers64): agreement to rounding, 1e-10 relative."""
    theirs_cls, theirs_kw, ours_cls, ours_kw = PARITY[name]
    with diffusers_float64(theirs_cls):
        theirs_sched = theirs_cls(**SD, **theirs_kw)
        theirs = run(theirs_sched)
    ours_sched = ours_cls(**SD, **ours_kw)
    ours = run(ours_sched)
    assert rel_err(ours, theirs) < 1e-10
    np.testing.assert_array_equal(
        ours_sched.timesteps.numpy(), theirs_sched.timesteps.numpy().astype(np.float32)
    )
    if hasattr(theirs_sched, "sigmas"):  # DDIMScheduler keeps alphas_cumprod only
        np.testing.assert_allclose(
            ours_sched.sigmas.numpy(), theirs_sched.sigmas.numpy(), rtol=1e-6, atol=1e-7
        )


def test_sde_parity_with_diffusers_given_the_same_noise():
    """SDE-DPM-Solver++(2M) with the same per-step noise (``variance_noise``) as diffusers."""
    noises = torch.randn(10, *X_T.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    out = []
    for cls in (diffusers.DPMSolverMultistepScheduler, DPMSolverPPScheduler):
        with diffusers_float64(diffusers.DPMSolverMultistepScheduler):
            sched = cls(algorithm_type="sde-dpmsolver++", **SD)
            sched.set_timesteps(10)
            x = X_T.clone()
            for k, t in enumerate(sched.timesteps):
                eps = EPS_NET(x, t.to(F64).expand(4))
                x = sched.step(eps, t, x, variance_noise=noises[k]).prev_sample
        out.append(x)
    assert rel_err(out[1], out[0]) < 1e-10


def test_flow_euler_parity():
    """DDIM on a flow schedule is FlowMatch's Euler method: same sigmas (shift and dynamic mu) -> same run."""
    n = 8
    sigmas = np.linspace(1.0, 1.0 / n, n)
    for config, mu in (
        (dict(shift=3.0), None),
        (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), 0.8),
    ):
        theirs = diffusers.FlowMatchEulerDiscreteScheduler(**config)
        ours = DDIMSolverScheduler.from_config(theirs.config)
        assert ours.is_flow and ours.config.prediction_type == "flow_prediction"
        a = run(theirs, None, FLOW_NET, sigmas=sigmas, mu=mu)
        b = run(ours, None, FLOW_NET, sigmas=sigmas, mu=mu)
        np.testing.assert_allclose(ours.sigmas.numpy(), theirs.sigmas.numpy(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.timesteps, theirs.timesteps.float(), rtol=1e-6, atol=1e-4)
        assert rel_err(b, a) < 1e-5


def test_flow_unipc_parity_on_diffusers_sigmas():
    """Wan's UniPC flow config: on diffusers' own flow sigmas (passed unshifted) the runs agree. The
    network here ignores t, since diffusers truncates its flow timesteps to integers."""

    def net(x, t):
        return 0.3 * x + torch.linspace(-1, 1, x.shape[1], dtype=x.dtype)

    config = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    with diffusers_float64(diffusers.UniPCMultistepScheduler):
        theirs = diffusers.UniPCMultistepScheduler(**config)
        a = run(theirs, 10, net)
    s = torch.as_tensor(theirs.sigmas[:-1], dtype=F64)
    unshifted = s / (3.0 - 2.0 * s)
    ours = UniPCScheduler.from_config(theirs.config)
    b = run(ours, None, net, sigmas=unshifted.numpy())
    assert rel_err(b, a) < 1e-10


# ------------------------------------------------------------------------------- the façade is the engine
@pytest.mark.parametrize(
    "preset", ["dpmsolver++3m", "unipc-bh1-3", "deis-tab2", "dpmsolver++2s", "dpmsolver-3", "ddim"]
)
def test_scheduler_run_equals_engine_run(preset):
    """ExponentialIntegratorScheduler runs exactly the engine on its own grid (singlestep presets with
    the per-step orders that spend the budget; multistep ones are ``sample`` itself)."""
    sched = ExponentialIntegratorScheduler(solver=preset, time_grid="uniform_lambda", **SD)
    sched.set_timesteps(12)
    grid = sched.grid
    # the network gets the float64 evaluation times (``timesteps`` are float32, like diffusers')
    times = [t for i in range(grid.steps) for t, _, _ in sched.solver_at(i).step_evaluations(i, grid)]
    np.testing.assert_allclose(sched.timesteps.numpy(), times, rtol=1e-6)
    assert len(times) == 12
    ours = X_T.clone()
    for t in times:
        ours = sched.step(EPS_NET(ours, torch.tensor(t, dtype=F64).expand(4)), t, ours).prev_sample
    state, denoiser = sched.solvers[0].init(X_T, grid), Denoiser(EPS_NET)
    for i in range(grid.steps):
        state = sched.solver_at(i).step(denoiser, state, grid)
    torch.testing.assert_close(ours, state.x, rtol=0, atol=1e-14)
    if sched.solvers[0].multistep:
        torch.testing.assert_close(ours, sample(denoiser, X_T, grid, sched.solvers[0]), rtol=0, atol=1e-14)
    torch.testing.assert_close(sched.grid.t, make_grid(SCHEDULE, sched.grid.steps, "uniform_lambda").t)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_singlestep_spends_exactly_the_budget(final):
    """As diffusers' DPMSolverSinglestep: num_inference_steps model evaluations, orders spread evenly."""
    sched = DPMSolverPPScheduler(solver_order=3, singlestep=True, final_sigmas_type=final, **SD)
    errors = {}
    for n in (1, 2, 4, 5, 6, 9, 10, 20):
        sched.set_timesteps(n)
        assert len(sched.timesteps) == n
        orders = [s.order for s in sched.solvers]
        assert sum(orders) == n and max(orders) <= 3 and max(orders) - min(orders[:-1] or [1]) <= 1
        assert len(orders) == sched.grid.steps
        if n >= 4:
            x = run(sched, n)
            # the same run, step by step in the engine with the per-step solvers
            state, denoiser = sched.solvers[0].init(X_T, sched.grid), Denoiser(EPS_NET)
            for i in range(sched.grid.steps):
                state = sched.solvers[i].step(denoiser, state, sched.grid)
            torch.testing.assert_close(x, state.x, rtol=0, atol=1e-5)  # network sees float32 timesteps
            errors[n] = rel_err(x, run(DPMSolverPPScheduler(**SD), 200))
    assert errors[20] < errors[10] < errors[5]


def test_per_step_rules():
    """Explicit per-step rules: a run that switches from UniPC-bh2 to DPM-Solver++ exact coefficients."""
    rules = [{"order": 1, "rule": "exact"}, {"order": 2, "rule": "unipc_bh2", "corrector": "unipc_bh2"}]
    rules += [{"order": 3, "rule": "exact"}]
    sched = ExponentialIntegratorScheduler(rules=rules, **SD)
    ours = run(sched, 10)
    state_x = X_T.clone()
    solvers = [Solver(**r, lower_order_final=None) for r in rules]
    state = solvers[0].init(state_x, sched.grid)
    denoiser = Denoiser(EPS_NET)
    for i in range(sched.grid.steps):
        state = solvers[min(i, 2)].step(denoiser, state, sched.grid)
    torch.testing.assert_close(ours, state.x, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="same prediction"):
        ExponentialIntegratorScheduler(
            rules=[{"prediction": "data"}, {"prediction": "noise", "rule": "exact"}]
        )


# ------------------------------------------------------------------------------- placing timesteps
def test_custom_timesteps_and_sigmas():
    sched = DPMSolverPPScheduler(**SD)
    sched.set_timesteps(timesteps=[999, 700, 400.5, 100])
    assert sched.timesteps.tolist() == [999, 700, 400.5, 100]
    assert sched.sigmas[-1] == 0 and len(sched.sigmas) == 5
    ve = (SCHEDULE.sigma(torch.tensor(400.5)) / SCHEDULE.alpha(torch.tensor(400.5))).item()
    assert sched.sigmas[2].item() == pytest.approx(ve, rel=1e-6)
    # VE sigmas -> the same times (a trailing 0 is the final level)
    levels = sched.sigmas.tolist()
    again = DPMSolverPPScheduler(**SD)
    again.set_timesteps(sigmas=levels)
    torch.testing.assert_close(again.timesteps, sched.timesteps, rtol=1e-5, atol=1e-3)
    again.set_timesteps(sigmas=levels[:-1])  # no trailing 0: final_sigmas_type adds it
    assert again.sigmas[-1] == 0 and len(again.timesteps) == 4


@pytest.mark.parametrize(
    "config, kind",
    [
        (dict(use_karras_sigmas=True), "karras"),
        (dict(use_exponential_sigmas=True), "exponential"),
        (dict(use_lu_lambdas=True), "uniform_lambda"),
    ],
)
def test_diffusers_grid_flags_give_diffusers_levels_unrounded(config, kind):
    """diffusers' flags: n levels from sigma_max to sigma_min, then 0; our timesteps are not rounded, so
    the network is evaluated exactly at the level the solver uses."""
    theirs = diffusers.DPMSolverMultistepScheduler(**SD, **config)
    theirs.set_timesteps(8)
    ours = DPMSolverPPScheduler(**SD, **config)
    ours.set_timesteps(8)
    np.testing.assert_allclose(ours.sigmas.numpy(), theirs.sigmas.numpy(), rtol=2e-5)
    assert not np.all(ours.timesteps.numpy() == np.round(ours.timesteps.numpy()))


@pytest.mark.parametrize("kind", ["uniform_t", "uniform_lambda", "quadratic", "karras", "ays"])
def test_time_grid_config(kind):
    sched = UniPCScheduler(time_grid=kind, **SD)
    sched.set_timesteps(7)
    expected = make_grid(SCHEDULE, 7, kind, final="zero", sigmas=AYS_SD15_SIGMAS if kind == "ays" else None)
    torch.testing.assert_close(sched.grid.t, expected.t, rtol=0, atol=1e-9)
    torch.testing.assert_close(sched.grid.sigma, expected.sigma, rtol=0, atol=1e-12)
    assert len(sched.timesteps) == 7 and torch.all(sched.timesteps[1:] < sched.timesteps[:-1])


def test_flow_default_grid_is_flux_sigmas_and_mu_is_required_when_dynamic():
    sched = UniPCScheduler(prediction_type="flow_prediction", flow_shift=3.0)
    sched.set_timesteps(4)
    u = torch.linspace(1, 0.25, 4, dtype=F64)
    np.testing.assert_allclose(sched.sigmas[:-1].numpy(), (3 * u / (1 + 2 * u)).numpy(), rtol=1e-6)
    torch.testing.assert_close(sched.timesteps, sched.sigmas[:-1] * 1000)
    dynamic = UniPCScheduler(prediction_type="flow_prediction", use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="pass mu"):
        dynamic.set_timesteps(4)
    dynamic.set_timesteps(4, mu=0.7)
    assert dynamic.grid.schedule.shift == pytest.approx(np.exp(0.7))


# ------------------------------------------------------------------------------- the step protocol
def test_begin_index_resumes_part_way():
    """img2img: set_begin_index(k) + add_noise at timesteps[k] runs the engine on the grid from k."""
    sched = UniPCScheduler(**SD)
    sched.set_timesteps(10)
    k = 4
    x0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    x = sched.add_noise(x0, noise, sched.timesteps[k : k + 1])
    a, s = SCHEDULE.alpha(sched.timesteps[k].to(F64)), SCHEDULE.sigma(sched.timesteps[k].to(F64))
    torch.testing.assert_close(x, a * x0 + s * noise)
    start = x.clone()
    sched.set_begin_index(k)
    for t in sched.timesteps[k:]:
        x = sched.step(EPS_NET(x, t.to(F64).expand(4)), t, x).prev_sample
    sub = TimeGrid(sched.grid.t[k:], sched.grid.alpha[k:], sched.grid.sigma[k:], SCHEDULE)
    expected = sample(Denoiser(EPS_NET), start, sub, sched.solvers[0])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "sched",
    [
        DPMSolverPPScheduler(solver_order=3, **SD),
        UniPCScheduler(solver_order=3, **SD),
        DEISScheduler(solver_type="t", **SD),
        DPMSolverPPScheduler(solver_order=3, singlestep=True, **SD),
        DPMSolverPPScheduler(algorithm_type="sde-dpmsolver++", **SD),
        DDIMSolverScheduler(clip_sample=True, **SD),
        UniPCScheduler(thresholding=True, **SD),
    ],
    ids=["dpm3m", "unipc3", "deis-t", "dpm3s", "sde", "ddim-clip", "unipc-threshold"],
)
def test_step_never_reads_tensors_back(sched):
    """A whole run on the ``meta`` device, whose tensors hold no data: any read of a value (``.item()``,
    ``bool``, ``float``, a NaN check) would raise, so step() cannot synchronise with a GPU."""
    sched.set_timesteps(8)
    x = torch.empty(4, 8, device="meta")
    for _ in sched.timesteps:
        x = sched.step(torch.empty(4, 8, device="meta"), object(), x).prev_sample  # timestep is not read
    assert x.device.type == "meta" and x.shape == (4, 8)


def test_clip_sample_clamps_every_x0_prediction():
    """``clip_sample`` (DDPM/DDIM configs) clamps x0 to [-clip_sample_range, clip_sample_range]; a run that
    ends at sigma = 0 returns the last x0, so it lies in that range. (diffusers' DDIM keeps the raw eps
    beside the clipped x0; ours re-derives eps from the clipped x0, as thresholding does.)"""
    clipped = run(DDIMSolverScheduler(clip_sample=True, clip_sample_range=0.8, **SD), 10)
    free = run(DDIMSolverScheduler(**SD), 10)
    assert clipped.abs().max() <= 0.8 + 1e-12 < free.abs().max()


def test_half_precision_inputs_are_stepped_in_float32():
    sched = DPMSolverPPScheduler(**SD)
    sched.set_timesteps(5)
    x = X_T.half()
    for t in sched.timesteps:
        out = sched.step(EPS_NET(x.double(), t.to(F64).expand(4)).half(), t, x).prev_sample
        assert out.dtype == torch.float16
        x = out
    assert rel_err(x.double(), run(DPMSolverPPScheduler(**SD), 5)) < 1e-2


def test_stochastic_step_uses_the_generator():
    def go(seed):
        sched = DDIMSolverScheduler(eta=1.0, **SD)
        sched.set_timesteps(6)
        x, g = X_T.clone(), torch.Generator().manual_seed(seed)
        for t in sched.timesteps:
            x = sched.step(EPS_NET(x, t.to(F64).expand(4)), t, x, generator=g).prev_sample
        return x

    assert torch.equal(go(0), go(0)) and not torch.equal(go(0), go(1))


# ------------------------------------------------------------------------------- config
def test_save_load_and_from_config_round_trip(tmp_path):
    sched = UniPCScheduler(solver_order=3, time_grid="karras", karras_rho=5.0, **SD)
    sched.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "UniPCScheduler" and saved["karras_rho"] == 5.0
    loaded = UniPCScheduler.from_pretrained(tmp_path)

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(sched.config)
    again = UniPCScheduler.from_config(loaded.config)
    assert public(again.config) == public(sched.config)
    torch.testing.assert_close(run(loaded, 6), run(sched, 6), rtol=0, atol=0)


def test_from_diffusers_configs():
    """A pipeline's scheduler config carries over: DDPM betas from SD's PNDM config, flow from Flux's."""
    pndm = diffusers.PNDMScheduler(**SD, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    ours = DPMSolverPPScheduler.from_config(pndm.config)
    assert ours.config.beta_schedule == "scaled_linear" and not ours.is_flow and ours.config.steps_offset == 1
    flux = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    )
    ours = UniPCScheduler.from_config(flux.config)
    assert ours.is_flow and ours.config.use_dynamic_shifting and ours.config.flow_shift == 3.0
    sd3 = UniPCScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    sd3.set_timesteps(4)
    assert isinstance(sd3.grid.schedule, FlowMatchingSchedule) and sd3.grid.schedule.shift == 3.0
    # a zero-terminal-SNR config (CogVideoX) is accepted
    zsnr = DDIMSolverScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", **SD)
    zsnr.set_timesteps(5)
    assert torch.isfinite(zsnr.sigmas).all()


def test_foreign_solver_types_are_mapped_as_diffusers_does():
    """Released configs carry every key: another family's solver_type must not break from_config."""
    wan_like = diffusers.UniPCMultistepScheduler(solver_type="bh2", prediction_type="flow_prediction")
    assert DPMSolverPPScheduler.from_config(wan_like.config).config.solver_type == "midpoint"
    assert DEISScheduler.from_config(wan_like.config).config.solver_type == "logrho"
    heun = diffusers.DPMSolverMultistepScheduler(solver_type="heun", **SD)
    assert UniPCScheduler.from_config(heun.config).config.solver_type == "bh2"
    deis = diffusers.DEISMultistepScheduler(**SD)
    assert DPMSolverPPScheduler.from_config(deis.config).config.algorithm_type == "dpmsolver++"


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas"])
def test_log_snr_grids_on_flow_configs(flag):
    """Karras/exponential/log-SNR grids on a flow model: finite ends, one step in from pure noise and the
    shifted first training level (diffusers' FlowMatch karras: [1.0, ..., 0.0089, 0] for shift 3)."""
    sched = UniPCScheduler(prediction_type="flow_prediction", flow_shift=3.0, **{flag: True})
    sched.set_timesteps(4)
    assert sched.sigmas[0].item() == pytest.approx(0.999) and sched.sigmas[-1] == 0
    assert sched.sigmas[-2].item() == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), rel=1e-5)
    x = run(sched, 4, FLOW_NET)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(
    "sched",
    [
        DEISScheduler(prediction_type="flow_prediction"),
        DPMSolverPPScheduler(prediction_type="flow_prediction", singlestep=True),
    ],
    ids=["deis", "dpm-singlestep"],
)
def test_noise_prediction_and_singlestep_on_flows_start_one_level_in(sched):
    sched.set_timesteps(6)
    assert sched.timesteps[0].item() == pytest.approx(999.0)
    assert torch.isfinite(run(sched, 6, FLOW_NET)).all()
    ddim = DDIMSolverScheduler(prediction_type="flow_prediction")
    ddim.set_timesteps(6)
    assert ddim.timesteps[0].item() == 1000.0  # data prediction starts at pure noise


def test_get_preset_names_are_accepted():
    for name in ("unipc-bh2-3", "dpmsolver++3m", "sde-dpmsolver++2m"):
        assert ExponentialIntegratorScheduler(solver=name).solvers[0].order == get_preset(name).order


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DPMSolverPPScheduler(algorithm_type="dpmsolver+"), "algorithm_type"),
        (lambda: DPMSolverPPScheduler(solver_type="rk4"), "solver_type"),
        (lambda: DPMSolverPPScheduler(solver_order=4), "order must be 1, 2 or 3"),
        (lambda: UniPCScheduler(solver_type="bh3"), "solver_type"),
        (lambda: UniPCScheduler(disable_corrector=[0]), "disable_corrector"),
        (lambda: DEISScheduler(solver_type="x"), "solver_type"),
        (lambda: ExponentialIntegratorScheduler(solver="nope"), "unknown solver"),
        (lambda: DPMSolverPPScheduler(prediction_type="score"), "prediction_type"),
        (lambda: DPMSolverPPScheduler(time_grid="fancy"), "time_grid"),
        (lambda: DPMSolverPPScheduler(use_karras_sigmas=True, use_lu_lambdas=True), "at most one"),
        (lambda: DPMSolverPPScheduler(final_sigmas_type="one"), "final_sigmas_type"),
    ],
)
def test_bad_config(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_argument():
    with pytest.raises(TypeError, match="unexpected arguments"):
        DPMSolverPPScheduler(solver_ordr=2)


def test_bad_set_timesteps_and_step():
    sched = DPMSolverPPScheduler(**SD)
    with pytest.raises(ValueError, match="set_timesteps before step"):
        sched.step(X_T, 999, X_T)
    with pytest.raises(ValueError, match="num_inference_steps, timesteps or sigmas"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="at most one"):
        sched.set_timesteps(timesteps=[999, 500], sigmas=[10.0, 1.0])
    with pytest.raises(ValueError, match="strictly decreasing"):
        sched.set_timesteps(timesteps=[500, 999])
    with pytest.raises(ValueError, match="outside the schedule"):
        sched.set_timesteps(timesteps=[1500, 10])
    with pytest.raises(ValueError, match="positive integer"):
        sched.set_timesteps(0)
    with pytest.raises(ValueError, match="does not match"):
        sched.set_timesteps(3, timesteps=[999, 500])
    sched.set_timesteps(2)
    for t in sched.timesteps:
        sched.step(EPS_NET(X_T, t.to(F64).expand(4)), t, X_T)
    with pytest.raises(IndexError, match="step called 3 times"):
        sched.step(X_T, 0, X_T)
