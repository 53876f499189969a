"""Noise schedules and time grids: exact formulas, the diffusers conventions they reproduce, and errors.

diffusers builds betas and alphas_cumprod in float32; where a check needs more than float32 accuracy the
scheduler's own code is run with its module's ``torch.float32``/``np.float32`` redirected to float64
(:func:`diffusers_float64`, the same device as in test_diffusers_parity.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

import diffusers
import pytest
import torch
from diffusers64 import diffusers_float64

from samplers import (
    GRID_KINDS,
    ContinuousVPSchedule,
    DiscreteVPSchedule,
    EDMSchedule,
    FlowMatchingSchedule,
    TimeGrid,
    flux_time_shift_mu,
    make_grid,
    schedule_from_diffusers_config,
)

F64 = torch.float64


def ve_sigma(grid: TimeGrid) -> torch.Tensor:
    return grid.sigma / grid.alpha


BETA_CONFIGS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}
SD = DiscreteVPSchedule.from_betas(**BETA_CONFIGS["scaled_linear"])


# ---------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", list(BETA_CONFIGS))
def test_discrete_vp_matches_diffusers_alphas_cumprod(name: str) -> None:
    config = BETA_CONFIGS[name]
    ours = DiscreteVPSchedule.from_betas(num_train_timesteps=1000, **config)
    with diffusers_float64(diffusers.DDPMScheduler):
        reference = diffusers.DDPMScheduler(num_train_timesteps=1000, **config).alphas_cumprod
    assert reference.dtype == F64
    torch.testing.assert_close(ours.alphas_cumprod, reference, rtol=0, atol=1e-12)
    # and the unmodified float32 diffusers, to float32 accuracy (cumprod of 1000 float32 factors)
    native = diffusers.DDPMScheduler(num_train_timesteps=1000, **config).alphas_cumprod
    torch.testing.assert_close(ours.alphas_cumprod, native.to(F64), rtol=0, atol=2e-6)
    # the VE sigma at integer t is sqrt((1 - abar)/abar) and alpha^2 = abar there
    t = torch.arange(1000, dtype=F64)
    torch.testing.assert_close(ours.alpha(t) ** 2, ours.alphas_cumprod, rtol=1e-13, atol=0)


def test_discrete_vp_trained_betas_match_diffusers() -> None:
    betas = torch.linspace(1e-4, 0.03, 200, dtype=F64) ** 1.5
    ours = DiscreteVPSchedule.from_betas(trained_betas=betas, num_train_timesteps=200)
    with diffusers_float64(diffusers.DDPMScheduler):
        reference = diffusers.DDPMScheduler(
            num_train_timesteps=200, trained_betas=betas.numpy()
        ).alphas_cumprod
    torch.testing.assert_close(ours.alphas_cumprod, reference, rtol=0, atol=1e-12)


def test_discrete_vp_interpolates_ve_sigma_linearly() -> None:
    """diffusers' convention: sigma_ve = sqrt((1 - abar)/abar) linear in t between integer timesteps."""
    s = DiscreteVPSchedule.from_betas("linear")
    t = torch.tensor([0.25, 10.5, 998.75], dtype=F64)
    lo = t.floor().long()
    expected = s.sigmas_ve[lo] + (t - lo) * (s.sigmas_ve[lo + 1] - s.sigmas_ve[lo])
    torch.testing.assert_close(s.sigma(t) / s.alpha(t), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(-s.lambda_(t), expected.log(), rtol=1e-14, atol=1e-14)


ROUND_TRIP = {
    "discrete_linear": (DiscreteVPSchedule.from_betas("linear"), (0.0, 999.0)),
    "discrete_cosine": (DiscreteVPSchedule.from_betas("squaredcos_cap_v2"), (0.0, 999.0)),
    "continuous_vp": (ContinuousVPSchedule(), (1e-3, 1.0)),
    "edm": (EDMSchedule(), (0.002, 80.0)),
    "flow_shift3": (FlowMatchingSchedule(shift=3.0), (1e-4, 1 - 1e-4)),
    "flow_mu": (FlowMatchingSchedule(mu=1.15), (1e-4, 1 - 1e-4)),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_lambda_round_trip(name: str) -> None:
    schedule, (lo, hi) = ROUND_TRIP[name]
    t = torch.linspace(lo, hi, 301, dtype=F64)
    torch.testing.assert_close(schedule.t_of_lambda(schedule.lambda_(t)), t, rtol=0, atol=1e-9)
    lam = torch.linspace(float(schedule.lambda_(hi)), float(schedule.lambda_(lo)), 301, dtype=F64)
    torch.testing.assert_close(schedule.lambda_(schedule.t_of_lambda(lam)), lam, rtol=0, atol=1e-9)
    # lambda is log(alpha/sigma) and strictly decreasing in t
    torch.testing.assert_close(
        schedule.lambda_(t), torch.log(schedule.alpha(t)) - torch.log(schedule.sigma(t)), rtol=0, atol=1e-12
    )
    assert torch.all(schedule.lambda_(t)[1:] < schedule.lambda_(t)[:-1])


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_variance_preserving_iff_alpha2_plus_sigma2_is_one(name: str) -> None:
    schedule, (lo, hi) = ROUND_TRIP[name]
    t = torch.linspace(lo, hi, 101, dtype=F64)
    total = schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2
    if name in ("discrete_linear", "discrete_cosine", "continuous_vp"):
        assert schedule.is_variance_preserving()
        torch.testing.assert_close(total, torch.ones_like(t), rtol=0, atol=1e-14)
    else:
        assert not schedule.is_variance_preserving()
        assert (total - 1).abs().max() > 0.1


def test_continuous_vp_closed_form() -> None:
    """log alpha(t) = -t^2 (beta_1 - beta_0)/4 - t beta_0 / 2 (Song et al. 2021)."""
    s = ContinuousVPSchedule(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=F64)
    torch.testing.assert_close(s.alpha(t).log(), -(t**2) * 19.9 / 4 - t * 0.05, rtol=1e-12, atol=0)


def _loaded_config(scheduler: Any) -> dict:
    """The config as ``from_pretrained`` sees it: the saved scheduler_config.json (with ``_class_name``)."""
    return json.loads(scheduler.to_json_string())


def test_schedule_from_ddpm_config() -> None:
    for config in (diffusers.DDPMScheduler().config, _loaded_config(diffusers.DDPMScheduler())):
        schedule = schedule_from_diffusers_config(config)
        assert isinstance(schedule, DiscreteVPSchedule)
        torch.testing.assert_close(
            schedule.alphas_cumprod, DiscreteVPSchedule.from_betas("linear", 1000, 1e-4, 0.02).alphas_cumprod
        )
    sd_config = diffusers.DDPMScheduler(**BETA_CONFIGS["scaled_linear"], num_train_timesteps=1000).config
    schedule = schedule_from_diffusers_config(sd_config)
    assert isinstance(schedule, DiscreteVPSchedule)
    torch.testing.assert_close(schedule.alphas_cumprod, SD.alphas_cumprod, rtol=0, atol=0)


def test_schedule_from_flow_match_config() -> None:
    # as loaded by from_pretrained (the JSON config names the class)
    schedule = schedule_from_diffusers_config(
        _loaded_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    )
    assert isinstance(schedule, FlowMatchingSchedule) and schedule.shift == 3.0
    # a multistep scheduler configured for flow sigmas
    dpm = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"
    )
    schedule = schedule_from_diffusers_config(dpm.config)
    assert isinstance(schedule, FlowMatchingSchedule) and schedule.shift == 3.0


def test_schedule_from_flow_match_config_built_in_code() -> None:
    schedule = schedule_from_diffusers_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert isinstance(schedule, FlowMatchingSchedule) and schedule.shift == 3.0


# ---------------------------------------------------------------------------------------------- flow shift


@pytest.mark.parametrize("steps", [4, 28])
def test_flow_shift_matches_flow_match_euler(steps: int) -> None:
    """FlowMatchEulerDiscreteScheduler(shift=s): sigmas = s u / (1 + (s - 1) u), u = linspace(sigma_max,
    sigma_min, N) (its sigma_min is itself the shifted 1/1000), then a final 0."""
    cls = diffusers.FlowMatchEulerDiscreteScheduler
    schedule = FlowMatchingSchedule(shift=3.0)
    with diffusers_float64(cls):
        sched = cls(shift=3.0)
        sched.set_timesteps(steps)
    assert sched.sigmas.dtype == F64
    u = torch.linspace(sched.sigma_max, sched.sigma_min, steps, dtype=F64)
    torch.testing.assert_close(schedule.warp(u), sched.sigmas[:-1], rtol=0, atol=1e-12)
    assert sched.sigmas[-1] == 0
    native = cls(shift=3.0)
    native.set_timesteps(steps)
    torch.testing.assert_close(schedule.warp(u), native.sigmas[:-1].to(F64), rtol=0, atol=1e-6)
    # the shift is what makes the difference (power check)
    assert (FlowMatchingSchedule().warp(u) - sched.sigmas[:-1]).abs().max() > 0.1


@pytest.mark.parametrize("mu", [0.5, 1.15, 1.7])
def test_flow_mu_matches_dynamic_shifting(mu: float) -> None:
    """Flux: use_dynamic_shifting with mu gives exp(mu) / (exp(mu) + 1/u - 1) = the shift by e^mu."""
    cls = diffusers.FlowMatchEulerDiscreteScheduler
    with diffusers_float64(cls):
        sched = cls(use_dynamic_shifting=True)
        sched.set_timesteps(10, mu=mu)
    u = torch.linspace(sched.sigma_max, sched.sigma_min, 10, dtype=F64)
    torch.testing.assert_close(FlowMatchingSchedule(mu=mu).warp(u), sched.sigmas[:-1], rtol=0, atol=1e-12)


def test_flux_time_shift_mu_matches_diffusers_calculate_shift() -> None:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for seq_len in (256, 1024, 4096, 6144, 100):
        assert flux_time_shift_mu(seq_len) == pytest.approx(calculate_shift(seq_len), rel=0, abs=1e-12)
    custom = dict(base_seq_len=64, max_seq_len=1024, base_shift=0.3, max_shift=1.5)
    assert flux_time_shift_mu(500, **custom) == pytest.approx(
        calculate_shift(500, **custom), rel=0, abs=1e-12
    )
    assert flux_time_shift_mu(256) == pytest.approx(0.5) and flux_time_shift_mu(4096) == pytest.approx(1.15)


@pytest.mark.parametrize("mu", [-0.3, 0.0, 0.7, 1.15])
def test_flow_mu_is_shift_exp_mu(mu: float) -> None:
    by_mu, by_shift = FlowMatchingSchedule(mu=mu), FlowMatchingSchedule(shift=math.exp(mu))
    assert by_mu.shift == pytest.approx(math.exp(mu), rel=1e-15)
    u = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(by_mu.warp(u), by_shift.warp(u), rtol=1e-15, atol=0)
    s = math.exp(mu)
    torch.testing.assert_close(by_mu.warp(u), s * u / (1 + (s - 1) * u), rtol=1e-15, atol=0)
    # the warp moves times, not alpha/sigma
    torch.testing.assert_close(by_mu.alpha(u), 1 - u)
    torch.testing.assert_close(by_mu.sigma(u), u)


# ---------------------------------------------------------------------------------------------- grids

VP = DiscreteVPSchedule.from_betas("linear")


def karras_sigmas(s_max: float, s_min: float, n: int, rho: float) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i < n."""
    ramp = torch.arange(n, dtype=F64) / (n - 1)
    return (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_grid_matches_formula_and_diffusers(rho: float) -> None:
    steps = 12
    grid = make_grid(VP, steps, "karras", final="min", rho=rho)
    s_max, s_min = float(VP.sigmas_ve[-1]), float(VP.sigmas_ve[0])
    expected = karras_sigmas(s_max, s_min, steps + 1, rho)
    torch.testing.assert_close(ve_sigma(grid), expected, rtol=1e-12, atol=0)
    if rho == 7.0:  # diffusers' _convert_to_karras hard-codes rho = 7
        sched = diffusers.DPMSolverMultistepScheduler()
        reference = sched._convert_to_karras(
            in_sigmas=torch.tensor([s_max, s_min], dtype=F64), num_inference_steps=13
        )
        torch.testing.assert_close(ve_sigma(grid), torch.as_tensor(reference, dtype=F64), rtol=1e-12, atol=0)
    # EDM: sigma = t, so the grid's times are the Karras sigmas themselves
    edm = make_grid(EDMSchedule(), steps, "karras", final="min", rho=rho)
    torch.testing.assert_close(edm.t, karras_sigmas(80.0, 0.002, steps + 1, rho), rtol=1e-12, atol=0)
    # final="zero": the same first N points, then sigma = 0
    zero = make_grid(VP, steps, "karras", final="zero", rho=rho)
    torch.testing.assert_close(ve_sigma(zero)[:-1], expected[:-1], rtol=1e-12, atol=0)
    assert zero.sigma[-1] == 0


UNIFORM_LAMBDA = {
    "discrete_vp": (VP, {}),
    "continuous_vp": (ContinuousVPSchedule(), {}),
    "edm": (EDMSchedule(), {}),
    "flow": (FlowMatchingSchedule(shift=3.0), {"t_start": 0.99, "t_end": 0.01}),
}


@pytest.mark.parametrize("name", list(UNIFORM_LAMBDA))
def test_uniform_lambda_has_constant_increments(name: str) -> None:
    schedule, window = UNIFORM_LAMBDA[name]
    grid = make_grid(schedule, 9, "uniform_lambda", final="min", **window)
    dlam = grid.lambda_.diff()
    torch.testing.assert_close(dlam, torch.full_like(dlam, float(dlam.mean())), rtol=1e-9, atol=0)
    assert float(grid.t[0]) == window.get("t_start", schedule.t_max)
    assert float(grid.t[-1]) == window.get("t_end", schedule.t_min)
    exponential = make_grid(schedule, 9, "exponential", final="min", **window)
    for a, b in ((grid.t, exponential.t), (grid.alpha, exponential.alpha), (grid.sigma, exponential.sigma)):
        assert torch.equal(a, b)


def test_exponential_equals_uniform_lambda_with_zero_final() -> None:
    a, b = make_grid(VP, 7, "uniform_lambda"), make_grid(VP, 7, "exponential")
    assert torch.equal(a.t, b.t) and torch.equal(a.sigma, b.sigma) and torch.equal(a.alpha, b.alpha)


@pytest.mark.parametrize("schedule", [ContinuousVPSchedule(), VP], ids=["continuous_vp", "discrete_vp"])
def test_quadratic_grid_is_uniform_in_sqrt_t(schedule: Any) -> None:
    grid = make_grid(schedule, 8, "quadratic", final="min")
    root = grid.t.sqrt()
    expected = torch.linspace(schedule.t_max**0.5, schedule.t_min**0.5, 9, dtype=F64)
    torch.testing.assert_close(root, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(grid.t, torch.linspace(schedule.t_max, schedule.t_min, 9, dtype=F64))


def test_uniform_t_grid() -> None:
    grid = make_grid(VP, 10, "uniform_t", final="min")
    torch.testing.assert_close(grid.t, torch.linspace(999, 0, 11, dtype=F64), rtol=0, atol=1e-12)
    flow = FlowMatchingSchedule(shift=3.0)
    shifted = make_grid(flow, 10, "uniform_t", final="zero")
    torch.testing.assert_close(shifted.t, flow.warp(torch.linspace(1, 0, 11, dtype=F64)), rtol=0, atol=1e-15)
    assert shifted.alpha[0] == 0 and shifted.sigma[-1] == 0


def test_uniform_t_shifted_grid_is_warped_linspace_at_both_ends() -> None:
    flow = FlowMatchingSchedule(shift=3.0)
    grid = make_grid(flow, 4, "uniform_t", t_start=0.9, t_end=0.1, final="min")
    torch.testing.assert_close(grid.t, flow.warp(torch.linspace(0.9, 0.1, 5, dtype=F64)), rtol=0, atol=1e-15)


#: An Align-Your-Steps-like list of VE sigmas inside the SD schedule's range [0.0292, 14.6146] (diffusers'
#: published AysSchedules["StableDiffusionSigmas"] start at 14.615 > the schedule's max and end at 0.0).
AYS = [14.6, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0292]


def test_ays_reproduces_given_sigmas() -> None:
    grid = make_grid(SD, len(AYS) - 1, "ays", sigmas=AYS, final="min")
    torch.testing.assert_close(ve_sigma(grid), torch.tensor(AYS, dtype=F64), rtol=1e-10, atol=0)
    # with final="zero" the AYS levels are the evaluation levels and sigma = 0 is appended
    zero = make_grid(SD, len(AYS), "ays", sigmas=AYS, final="zero")
    torch.testing.assert_close(ve_sigma(zero)[:-1], torch.tensor(AYS, dtype=F64), rtol=1e-10, atol=0)
    assert zero.sigma[-1] == 0 and zero.alpha[-1] == 1


def test_ays_resamples_log_linearly() -> None:
    grid = make_grid(SD, 4, "ays", sigmas=[10.0, 1.0, 0.1], final="min")
    expected = torch.tensor([10.0, 10**0.5, 1.0, 10**-0.5, 0.1], dtype=F64)
    torch.testing.assert_close(ve_sigma(grid), expected, rtol=1e-10, atol=0)


def test_from_times() -> None:
    times = [999.0, 700.5, 300.0, 10.0]
    grid = TimeGrid.from_times(VP, times, final="min")
    assert grid.steps == 3 and not grid.ends_clean
    torch.testing.assert_close(grid.t, torch.tensor(times, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(grid.alpha, VP.alpha(grid.t), rtol=0, atol=0)
    torch.testing.assert_close(grid.sigma, VP.sigma(grid.t), rtol=0, atol=0)
    zero = TimeGrid.from_times(VP, times, final="zero")
    assert zero.ends_clean and zero.sigma[-1] == 0 and zero.alpha[-1] == 1 and zero.lambda_[-1] == math.inf
    torch.testing.assert_close(zero.sigma[:-1], grid.sigma[:-1], rtol=0, atol=0)
    assert float(zero.t[-1]) == 10.0  # the model time is kept; only alpha/sigma are replaced
    with pytest.raises(ValueError, match="final must be 'zero' or 'min'"):
        TimeGrid.from_times(VP, times, final="last")
    with pytest.raises(ValueError, match="strictly from noise to data"):
        TimeGrid.from_times(VP, [10.0, 500.0], final="min")
    with pytest.raises(ValueError, match="at least 2 points"):
        TimeGrid.from_times(VP, [500.0], final="min")


@pytest.mark.parametrize("kind", [k for k in GRID_KINDS if k != "ays"])
def test_final_zero_and_final_min(kind: str) -> None:
    zero = make_grid(VP, 6, kind, final="zero", t_end=10.0)
    assert zero.ends_clean and zero.sigma[-1] == 0 and zero.alpha[-1] == 1
    assert torch.all(zero.sigma[:-1] > 0)
    end = make_grid(VP, 6, kind, final="min", t_end=10.0)
    assert not end.ends_clean
    assert float(end.t[-1]) == 10.0 and float(end.t[0]) == VP.t_max
    torch.testing.assert_close(end.sigma[-1], VP.sigma(10.0), rtol=0, atol=0)
    torch.testing.assert_close(zero.t[:-1], end.t[:-1], rtol=0, atol=0)


def test_grid_errors() -> None:
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        make_grid(VP, 0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        make_grid(VP, 2.5)
    with pytest.raises(ValueError, match="unknown grid kind 'linear'.*expected one of"):
        make_grid(VP, 5, "linear")
    with pytest.raises(
        ValueError, match=r"need t_min <= t_end < t_start <= t_max, got t_end=0.0, t_start=2000.0"
    ):
        make_grid(VP, 5, "uniform_t", t_start=2000.0)
    with pytest.raises(ValueError, match="t_end < t_start"):
        make_grid(VP, 5, "uniform_t", t_start=100.0, t_end=200.0)
    with pytest.raises(ValueError, match="kind='ays' needs the schedule's VE noise levels in `sigmas`"):
        make_grid(SD, 10, "ays")
    with pytest.raises(ValueError, match=r"needs a finite log-SNR at t=1.0.*t_start=0.999"):
        make_grid(FlowMatchingSchedule(), 10, "uniform_lambda", t_start=1.0, t_end=0.01)
    with pytest.raises(ValueError, match="needs a finite log-SNR at t=0.0"):
        make_grid(FlowMatchingSchedule(), 10, "karras", t_start=0.99)


def test_ays_accepts_diffusers_published_sd_sigmas() -> None:
    """diffusers' AYS list for SD1.5 rounds its first level above the schedule's maximum and ends at 0."""
    from diffusers.schedulers import AysSchedules

    published = AysSchedules["StableDiffusionSigmas"]
    grid = make_grid(SD, len(published) - 1, "ays", sigmas=published, final="zero")
    ve = grid.sigma[:-1] / grid.alpha[:-1]
    torch.testing.assert_close(ve[1:], torch.tensor(published[1:-1], dtype=F64), rtol=1e-10, atol=0)
    assert abs(float(ve[0]) - published[0]) < 1e-3 * published[0] and grid.ends_clean
    with pytest.raises(ValueError, match="made for another schedule"):
        make_grid(SD, 5, "ays", sigmas=[100.0, 10.0, 1.0])
