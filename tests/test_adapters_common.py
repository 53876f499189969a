"""The adapters' shared VAE decoding: the pipelines' latent normalisations, SDXL's float32 upcast of a float16
VAE, and a graph only when the latents need one."""

import copy

import torch
from threads import one_thread
from tiny_pipelines import _vae

from pipelines.adapters.common import graph_if_needed, vae_decoder


def _latents(channels: int = 4) -> torch.Tensor:
    return torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(0))


def _reference(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((vae.decode(z, return_dict=False)[0].float() + 1) / 2).clamp(0, 1)


def test_scaling_shift_and_latent_statistics_are_undone_as_the_pipelines_do():
    torch.manual_seed(0)
    with one_thread():
        plain = _vae(4, scaling_factor=0.5, shift_factor=0.25)
        z = _latents()
        torch.testing.assert_close(vae_decoder(plain)(z), _reference(plain, z / 0.5 + 0.25))
        mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 1.0, 2.0]
        stats = _vae(4, scaling_factor=0.5, latents_mean=mean, latents_std=std)
        expected = z * torch.tensor(std).view(1, 4, 1, 1) / 0.5 + torch.tensor(mean).view(1, 4, 1, 1)
        torch.testing.assert_close(vae_decoder(stats)(z), _reference(stats, expected))


def test_a_float16_vae_that_asks_for_it_decodes_in_float32_and_stays_float16():
    torch.manual_seed(0)
    with one_thread():
        vae = _vae(4, scaling_factor=0.5, force_upcast=True).half()
        z = _latents()
        expected = _reference(copy.deepcopy(vae).float(), z / 0.5)  # the float16 weights, float32 math
        images = vae_decoder(vae)(z)
        assert vae.dtype == torch.float16 and images.dtype == torch.float32
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)  # float32 math: no half rounding


def test_a_graph_only_when_the_latents_require_grad():
    torch.manual_seed(0)
    with one_thread():
        vae = _vae(4)
        assert all(p.requires_grad for p in vae.parameters())  # as loaded pipelines have them
        decode = vae_decoder(vae)
        assert not decode(_latents()).requires_grad
        z = _latents().requires_grad_(True)
        images = decode(z)
        assert images.requires_grad
        images.sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0
        with graph_if_needed(None, torch.ones(1)):
            assert not torch.is_grad_enabled()
