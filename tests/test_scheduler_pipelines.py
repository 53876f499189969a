"""Our diffusers-API schedulers (:mod:`samplers.schedulers`) end to end inside the five real tiny pipelines.

The pipelines of :mod:`tiny_pipelines` are the actual diffusers classes with random weights, so a scheduler
here goes through every part of the protocol a pipeline uses (``from_config`` of the pipeline's own config,
``set_timesteps`` with the arguments that pipeline passes, ``step`` once per timestep, the timesteps handed to
the network, ``generator`` passed to ``step`` in SD). The model is a fixed random network, so a comparison
of two schedulers on it is a comparison of algorithms and time grids.

Parity is measured on the final latents (``output_type="latent"``, before VAE decoding and clipping), as
``max|ours - diffusers| / max|diffusers|`` (the latents are O(1)-O(30)). Both sides compute in float32 and
the network sees float32 timesteps with the same values, so the errors are float32 rounding.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from threads import one_thread
from tiny_pipelines import CALL_KWARGS, EXPECTED_SHAPES, PIPELINES, output_of

from samplers import (
    DDIMSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    ExponentialIntegratorScheduler,
    UniPCScheduler,
)

#: Model evaluations per run. 5 rather than 4: with diffusers' ``lower_order_final`` (below 15 steps) a
#: third-order multistep solver only takes a third-order step when at least 5 steps are run (orders
#: 1, 2, 3, 2, 1); at 4 steps it would be 1, 2, 2, 1 and "order 3" would test nothing.
STEPS = 5
#: Parity tolerance on max|ours - diffusers| / max|diffusers| of the final latents. Observed (5 steps):
#: SD DDIM 4.5e-7, DPM-Solver++(2M) 5.6e-7, UniPC 5.6e-7, SDE-DPM-Solver++ 6.4e-7; SDXL DPM-Solver++(3M)
#: 4.3e-7, DEIS-2/3 5.8e-7; SD3 flow Euler 3.9e-7; Flux flow Euler 4.6e-7 -- float32 rounding. 1e-5 leaves
#: a margin of ~15x, while the near misses below (one detail changed) are off by >= 1.2e-3.
PARITY_RTOL = 1e-5
#: A near miss must exceed this, so a parity test at PARITY_RTOL can fail.
NEAR_MISS_MIN = 10 * PARITY_RTOL
#: Model calls per denoising step: Flux (true CFG) and Wan run the conditional and unconditional passes as
#: two separate forward calls; SD, SDXL and SD3 batch them into one.
CALLS_PER_STEP = {"sd": 1, "sdxl": 1, "sd3": 1, "flux": 2, "wan": 2, "cogvideox": 1, "animatediff": 1}
#: The network receives ``timesteps / scale``: Flux divides by 1000, the others pass ``t`` itself.
MODEL_TIME_SCALE = {"sd": 1.0, "sdxl": 1.0, "sd3": 1.0, "flux": 1000.0, "wan": 1.0, "cogvideox": 1.0,
                    "animatediff": 1.0}  # fmt: skip

# diffusers 0.42's own schedulers apply numpy ufuncs / np.array(copy=False) to torch tensors: NumPy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


# ---------------------------------------------------------------------------------------------- helpers


def generate(pipe: Any, name: str, seed: int = 0, steps: int = STEPS, **overrides: Any) -> np.ndarray:
    """One pipeline run; the final latents unless ``output_type`` is overridden."""
    kwargs = {**CALL_KWARGS[name], "output_type": "latent", **overrides}
    result = pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return np.asarray(output_of(result), dtype=np.float32)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def denoiser_of(pipe: Any) -> torch.nn.Module:
    return pipe.unet if "unet" in pipe.components else pipe.transformer


@contextlib.contextmanager
def recorded_timesteps(pipe: Any) -> Iterator[list[torch.Tensor]]:
    """Record the ``timestep`` argument of every call of the pipeline's UNet/transformer."""
    model = denoiser_of(pipe)
    forward = model.forward
    signature = inspect.signature(forward)
    seen: list[torch.Tensor] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        timestep = signature.bind(*args, **kwargs).arguments["timestep"]
        seen.append(torch.as_tensor(timestep).detach().clone().reshape(-1))
        return forward(*args, **kwargs)

    model.forward = record
    try:
        yield seen
    finally:
        del model.forward  # back to the class's forward


def assert_model_saw(seen: list[torch.Tensor], scheduler: Any, name: str, steps: int = STEPS) -> None:
    """The network was called ``CALLS_PER_STEP`` times per step, at exactly the scheduler's timesteps."""
    assert len(scheduler.timesteps) == steps
    assert len(seen) == steps * CALLS_PER_STEP[name], len(seen)
    for t in seen:  # a CFG batch carries one timestep
        assert (t == t[0]).all(), t
    got = torch.stack([t[0] for t in seen]).to(torch.float64) * MODEL_TIME_SCALE[name]
    expected = scheduler.timesteps.cpu().to(torch.float64).repeat_interleave(CALLS_PER_STEP[name])
    if MODEL_TIME_SCALE[name] == 1.0:  # the very float32 values of scheduler.timesteps
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    else:  # float32 t / 1000, scaled back
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------- 1. parity with diffusers

Factory = Callable[[Any], Any]  # the pipeline's own scheduler -> the scheduler to run


def _sd3_sigmas(steps: int) -> dict[str, Any]:
    # diffusers' SD3 default grid shifts the last sigma twice; the same explicit (unshifted) sigmas, which
    # the pipeline forwards to set_timesteps and both schedulers shift, give both the same grid.
    return {"sigmas": np.linspace(1.0, 1.0 / steps, steps).tolist()}


#: case -> (pipeline, diffusers scheduler, ours, a near miss of ours (one detail changed) or None).
PARITY_CASES: dict[str, tuple[str, Factory, Factory, Factory | None]] = {
    # SD's DDIM config (clip_sample False, set_alpha_to_one False, steps_offset 1, leading spacing)
    "sd-ddim": (
        "sd",
        lambda own: own,
        lambda own: DDIMSolverScheduler.from_config(own.config),
        # ends at sigma = 0 instead of alphas_cumprod[0]: observed 1.8e-3
        lambda own: DDIMSolverScheduler.from_config(own.config, set_alpha_to_one=True),
    ),
    "sd-dpmsolver++2m": (
        "sd",
        lambda own: diffusers.DPMSolverMultistepScheduler.from_config(own.config),
        lambda own: DPMSolverPPScheduler.from_config(own.config),
        None,
    ),
    "sd-unipc-bh2": (
        "sd",
        lambda own: diffusers.UniPCMultistepScheduler.from_config(own.config),
        lambda own: UniPCScheduler.from_config(own.config),
        lambda own: UniPCScheduler.from_config(own.config, solver_type="bh1"),  # observed 2.2e-2
    ),
    # our SDE draws its per-step noise from the pipeline's generator exactly as diffusers does
    "sd-sde-dpmsolver++": (
        "sd",
        lambda own: diffusers.DPMSolverMultistepScheduler.from_config(
            own.config, algorithm_type="sde-dpmsolver++"
        ),
        lambda own: DPMSolverPPScheduler.from_config(own.config, algorithm_type="sde-dpmsolver++"),
        None,
    ),
    "sdxl-dpmsolver++3m": (
        "sdxl",
        lambda own: diffusers.DPMSolverMultistepScheduler.from_config(own.config, solver_order=3),
        lambda own: DPMSolverPPScheduler.from_config(own.config, solver_order=3),
        # the same run without its one third-order step: observed 8.9e-3
        lambda own: DPMSolverPPScheduler.from_config(own.config, solver_order=2),
    ),
    "sdxl-deis2": (
        "sdxl",
        lambda own: diffusers.DEISMultistepScheduler.from_config(own.config),
        lambda own: DEISScheduler.from_config(own.config),
        None,
    ),
    "sdxl-deis3": (
        "sdxl",
        lambda own: diffusers.DEISMultistepScheduler.from_config(own.config, solver_order=3),
        lambda own: DEISScheduler.from_config(own.config, solver_order=3),
        # DEIS tAB (polynomial in t) instead of diffusers' log-rho: observed 1.2e-3
        lambda own: DEISScheduler.from_config(own.config, solver_order=3, solver_type="t"),
    ),
    # DDIM on a flow schedule is FlowMatch's Euler method
    "sd3-flow-euler": (
        "sd3",
        lambda own: own,
        lambda own: DDIMSolverScheduler.from_config(own.config),
        None,
    ),
    # Flux passes sigmas = linspace(1, 1/n, n) and the dynamic shift mu itself
    "flux-flow-euler": (
        "flux",
        lambda own: own,
        lambda own: DDIMSolverScheduler.from_config(own.config),
        # the static shift 3 of the config instead of exp(mu): observed 3.5e-2
        lambda own: DDIMSolverScheduler.from_config(own.config, use_dynamic_shifting=False),
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_diffusers_inside_pipeline(case: str):
    name, make_reference, make_ours, make_near_miss = PARITY_CASES[case]
    pipe = PIPELINES[name]()
    own = pipe.scheduler
    call = _sd3_sigmas(STEPS) if name == "sd3" else {}

    pipe.scheduler = reference = make_reference(own)
    expected = generate(pipe, name, **call)
    pipe.scheduler = ours = make_ours(own)
    assert type(ours).__module__ == "samplers.schedulers"
    with recorded_timesteps(pipe) as seen:
        got = generate(pipe, name, **call)

    # the same grid (diffusers' integer DDPM timesteps are exact in float32; flow timesteps agree to float32)
    np.testing.assert_allclose(
        ours.timesteps.cpu().double().numpy(), reference.timesteps.cpu().double().numpy(), rtol=1e-6, atol=0
    )
    assert_model_saw(seen, ours, name)
    assert np.isfinite(got).all()
    error = relative_error(got, expected)
    assert error < PARITY_RTOL, f"{case}: relative error {error:.2e}"

    if make_near_miss is not None:  # power check: the tolerance tells a one-detail change apart
        pipe.scheduler = make_near_miss(own)
        miss = relative_error(generate(pipe, name, **call), expected)
        assert miss > NEAR_MISS_MIN, f"{case}: near miss only {miss:.2e} away"


#: Wan: ours vs diffusers' UniPC (flow, bh2, order 2) on slightly different grids -- diffusers starts at
#: sigma = shift(0.999) with timesteps truncated to integers (999, 900, 750, 500, ...); ours starts at
#: sigma = 1 with timesteps 1000 * sigma. Observed relative difference of the final latents: 5.1e-3 at 4
#: steps, 5.0e-3 at 5. For scale: another seed is ~1.3 away, and a first-order method (DDIM = flow Euler)
#: on our grid is 1.8e-2 away from diffusers' UniPC (asserted below), so 1e-2 separates "same algorithm,
#: nearby grid" from "different algorithm" with a margin of ~2x on each side.
WAN_RTOL = 1e-2


def test_wan_unipc_close_to_diffusers_and_model_sees_our_timesteps():
    name = "wan"
    pipe = PIPELINES[name]()
    own = pipe.scheduler
    assert isinstance(own, diffusers.UniPCMultistepScheduler) and own.config.use_flow_sigmas
    expected = generate(pipe, name)

    pipe.scheduler = ours = UniPCScheduler.from_config(own.config)
    assert ours.is_flow and ours.config.flow_shift == 3.0 and ours.config.solver_order == 2
    with recorded_timesteps(pipe) as seen:
        got = generate(pipe, name)
    assert np.isfinite(got).all()
    assert_model_saw(seen, ours, name)  # each of our timesteps twice (cond + uncond), in order
    assert torch.unique_consecutive(torch.stack([t[0] for t in seen])).numel() == STEPS
    np.testing.assert_array_equal(generate(pipe, name), got)  # deterministic

    error = relative_error(got, expected)
    assert error < WAN_RTOL, f"relative difference to diffusers' UniPC {error:.2e}"
    pipe.scheduler = DDIMSolverScheduler.from_config(own.config)
    assert relative_error(generate(pipe, name), expected) > WAN_RTOL  # the tolerance has power


# ------------------------------------------------------------------ 2. higher-order schedulers everywhere

HIGHER_ORDER: dict[str, tuple[type, dict[str, Any]]] = {
    "unipc3": (UniPCScheduler, {"solver_order": 3}),
    "dpmsolver++2m": (DPMSolverPPScheduler, {"solver_order": 2}),
    "deis3": (DEISScheduler, {"solver_order": 3}),  # noise prediction: flow runs start one level in
    "dpmsolver++3s": (DPMSolverPPScheduler, {"solver_order": 3, "singlestep": True}),  # exactly n calls
}
HIGHER_ORDER_CASES = [
    pytest.param(name, key, id=f"{name}-{key}") for name in PIPELINES for key in HIGHER_ORDER
]


@pytest.mark.parametrize(("name", "key"), HIGHER_ORDER_CASES)
def test_higher_order_scheduler_runs_in_every_pipeline(name: str, key: str):
    cls, options = HIGHER_ORDER[key]
    pipe = PIPELINES[name]()
    pipe.scheduler = scheduler = cls.from_config(pipe.scheduler.config, **options)
    assert scheduler.is_flow == (name in ("sd3", "flux", "wan"))

    with recorded_timesteps(pipe) as seen:
        out = generate(pipe, name, output_type="np")
    assert out.shape == EXPECTED_SHAPES[name]
    assert np.isfinite(out).all() and out.std() > 0
    assert pipe.num_timesteps == STEPS
    assert scheduler.step_index == STEPS  # step() ran once per timestep
    assert_model_saw(seen, scheduler, name)

    np.testing.assert_array_equal(generate(pipe, name, output_type="np"), out)  # same seed, same output


# ------------------------------------------------------------------------------ 3. save / load round trip

ROUND_TRIP: dict[str, tuple[str, type, dict[str, Any]]] = {
    "sd-rules": (
        "sd",
        ExponentialIntegratorScheduler,
        {
            "rules": [
                {"order": 1, "prediction": "data", "rule": "exact"},
                {"order": 2, "prediction": "data", "rule": "exact"},
            ]
        },
    ),
    "sdxl-deis3": ("sdxl", DEISScheduler, {"solver_order": 3}),
    "sd3-dpmsolver++3m-exact": ("sd3", DPMSolverPPScheduler, {"solver_order": 3, "solver_type": "exact"}),
    "flux-unipc3": ("flux", UniPCScheduler, {"solver_order": 3}),  # dynamic shifting (mu) survives
    "wan-unipc-bh1": ("wan", UniPCScheduler, {"solver_type": "bh1"}),
}


def _public(config: Any) -> dict[str, Any]:
    # diffusers' own bookkeeping (_use_default_values, _class_name, _diffusers_version) aside
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_save_config_from_pretrained_round_trip(case: str, tmp_path):
    name, cls, options = ROUND_TRIP[case]
    pipe = PIPELINES[name]()
    scheduler = cls.from_config(pipe.scheduler.config, **options)
    scheduler.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == cls.__name__

    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls
    assert _public(loaded.config) == _public(scheduler.config)
    assert _public(cls.from_config(cls.load_config(tmp_path)).config) == _public(scheduler.config)
    for key, value in options.items():
        assert loaded.config[key] == value

    pipe.scheduler = scheduler
    expected = generate(pipe, name)
    pipe.scheduler = loaded
    np.testing.assert_array_equal(generate(pipe, name), expected)


# ------------------------------------------------------------------------------------------- 4. SDE in SD


def test_sde_dpmsolver_in_sd_uses_the_pipeline_generator():
    name = "sd"
    pipe = PIPELINES[name]()
    config = pipe.scheduler.config
    # fixed initial latents: the generator then feeds only the scheduler's per-step noise
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(123))
    sde = DPMSolverPPScheduler.from_config(config, algorithm_type="sde-dpmsolver++")
    assert "generator" in inspect.signature(sde.step).parameters  # so SD passes its generator to step

    pipe.scheduler = sde
    a = generate(pipe, name, seed=0, latents=latents)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(generate(pipe, name, seed=0, latents=latents), a)
    b = generate(pipe, name, seed=1, latents=latents)
    assert relative_error(b, a) > 0.1  # observed 0.97: the step noise comes from the generator

    pipe.scheduler = DPMSolverPPScheduler.from_config(config)  # control: the ODE ignores the generator
    ode = generate(pipe, name, seed=0, latents=latents)
    np.testing.assert_array_equal(generate(pipe, name, seed=1, latents=latents), ode)
    assert relative_error(a, ode) > 0.1  # observed 0.89
