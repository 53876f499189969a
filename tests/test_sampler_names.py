"""A1111 / ComfyUI sampler names resolve to the right scheduler, and the claimed equivalences are exact."""

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from pipelines.sampler_names import known_sampler_names, resolve_sampler
from samplers import (
    DDIMSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    ExponentialIntegratorScheduler,
    UniPCScheduler,
)
from samplers.analytic import GaussianMixture, make_net
from samplers.schedules import DiscreteVPSchedule

SD_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)


@pytest.mark.parametrize(
    "name, cls, options, label",
    [
        (
            "DPM++ 2M Karras",
            DPMSolverPPScheduler,
            {"solver_order": 2, "use_karras_sigmas": True},
            "DPM++ 2M Karras",
        ),
        ("dpmpp_2m", DPMSolverPPScheduler, {"solver_order": 2}, "DPM++ 2M"),
        (
            "dpmpp_2m_karras",
            DPMSolverPPScheduler,
            {"solver_order": 2, "use_karras_sigmas": True},
            "DPM++ 2M Karras",
        ),
        ("DPM++ 2M SDE", DPMSolverPPScheduler, {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
        ("DPM++ 3M", DPMSolverPPScheduler, {"solver_order": 3}, "DPM++ 3M"),
        ("uni_pc_bh2", UniPCScheduler, {"solver_type": "bh2"}, "UniPC bh2"),
        ("UniPC", UniPCScheduler, {"solver_type": "bh1"}, "UniPC"),
        ("DEIS", DEISScheduler, {}, "DEIS"),
        ("DDIM", DDIMSolverScheduler, {}, "DDIM"),
        ("Euler", ExponentialIntegratorScheduler, {"solver": "ddim"}, "Euler"),
        ("Euler a", DDIMSolverScheduler, {"eta": 1.0}, "Euler a"),
        ("euler_ancestral", DDIMSolverScheduler, {"eta": 1.0}, "Euler a"),
        ("dpmsolver++3m", ExponentialIntegratorScheduler, {"solver": "dpmsolver++3m"}, "dpmsolver++3m"),
        ("unipc-bh2-3", ExponentialIntegratorScheduler, {"solver": "unipc-bh2-3"}, "unipc-bh2-3"),
    ],
)
def test_names_resolve_to_configured_schedulers(name, cls, options, label):
    spec = resolve_sampler(name)
    assert spec.label == label
    scheduler = spec.make_scheduler(SD_CONFIG)
    assert type(scheduler) is cls
    for key, value in options.items():
        assert scheduler.config[key] == value, key


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown sampler 'LMS Turbo'; known: .*DPM\\+\\+ 2M Karras|dpmpp_2m"
    ):
        resolve_sampler("LMS Turbo")
    names = known_sampler_names()
    for required in ("DPM++ 2M", "dpmpp_2m", "uni_pc_bh2", "DEIS", "DDIM", "Euler", "dpmsolver++2m"):
        assert required in names


def _run(scheduler, x, net, generator=None, timesteps=None):
    """Ten steps from the VP sample ``x`` at the first timestep (k-diffusion schedulers work in x / alpha)."""
    scheduler.set_timesteps(10) if timesteps is None else scheduler.set_timesteps(timesteps=timesteps)
    if scheduler.init_noise_sigma != 1.0:  # diffusers' Euler uses sigma_max for linspace spacing, not 1/alpha
        x = x * (scheduler.sigmas[0] ** 2 + 1).sqrt()
    for t in scheduler.timesteps:
        eps = net(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


@pytest.fixture
def epsilon_net():
    schedule = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    gmm = GaussianMixture.random(dim=8, n_components=3, seed=1)
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), "epsilon")
    return lambda x, t: net(x.double(), torch.as_tensor(t, dtype=torch.float64)).float()


def test_euler_is_diffusers_euler(epsilon_net):
    """A1111's Euler = EulerDiscreteScheduler; our 'Euler' (DDIM as an exponential integrator) takes the
    same steps on the same timesteps."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    euler = EulerDiscreteScheduler.from_config(SD_CONFIG)
    theirs = _run(euler, x, epsilon_net)
    timesteps = [int(t) for t in euler.timesteps]
    ours = _run(resolve_sampler("Euler").make_scheduler(SD_CONFIG), x, epsilon_net, timesteps=timesteps)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-4)


def test_euler_ancestral_is_diffusers_euler_ancestral(epsilon_net):
    """'Euler a' (DDIM eta=1) takes the same steps as EulerAncestralDiscrete given the same noise draws."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    euler_a = EulerAncestralDiscreteScheduler.from_config(SD_CONFIG)
    theirs = _run(euler_a, x, epsilon_net, torch.Generator().manual_seed(3))
    timesteps = [int(t) for t in euler_a.timesteps]
    ours = _run(
        resolve_sampler("Euler a").make_scheduler(SD_CONFIG),
        x,
        epsilon_net,
        torch.Generator().manual_seed(3),
        timesteps,
    )
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-4)
