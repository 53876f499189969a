"""Cheap look-ahead decoding: the adapters' ``vae=`` decodes with another VAE (a tiny ``AutoencoderTiny``,
TAESD's architecture), and ``SearchPipeline(lookahead_vae=...)`` searches with it while the returned image
and score come from the pipeline's own VAE (Flux's latents unpacked), at the same NFE."""

import pytest
import torch
from counting import Brightness
from diffusers import AutoencoderTiny
from threads import one_thread
from tiny_pipelines import tiny_flux, tiny_sd

import pipelines.search_pipeline as search_pipeline
from pipelines.adapters import stable_diffusion_chain
from pipelines.adapters.common import vae_decoder
from pipelines.search_pipeline import SearchPipeline

STEPS = 4


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


@pytest.fixture(scope="module")
def tiny():
    """An AutoencoderTiny matching tiny_sd's VAE: 4 latent channels, spatial factor 2 (16x16 -> 32x32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        vae = AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=4,
            upsampling_scaling_factor=2,
        )
    return vae.eval()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Calls:
    """Counts (and records the inputs of) a VAE's ``decode`` calls while active."""

    def __init__(self, vae):
        self.vae, self.inputs = vae, []

    def __enter__(self):
        original = self.vae.decode

        def counted(z, *args, **kwargs):
            self.inputs.append(z.detach().clone())
            return original(z, *args, **kwargs)

        self.vae.decode = counted
        return self

    def __exit__(self, *exc):
        del self.vae.decode  # the instance attribute; the class's method again


def test_tiny_vae_matches_the_pipeline_latents(sd, tiny):
    z = torch.randn(2, 4, 16, 16, generator=seeded(0))
    with one_thread(), torch.no_grad():
        assert tiny.decode(z).sample.shape == sd.vae.decode(z).sample.shape == (2, 3, 32, 32)


def test_chain_decodes_with_the_given_vae(sd, tiny):
    x = torch.randn(2, 4, 16, 16, generator=seeded(1))
    with one_thread(), torch.no_grad():
        default = stable_diffusion_chain(sd, "a cube", num_inference_steps=STEPS)
        cheap = stable_diffusion_chain(sd, "a cube", num_inference_steps=STEPS, vae=tiny)
        with Calls(tiny) as calls:
            images = cheap.decode(x)
        assert len(calls.inputs) == 1
        torch.testing.assert_close(images, vae_decoder(tiny)(x), rtol=0, atol=0)
        torch.testing.assert_close(default.decode(x), vae_decoder(sd.vae)(x), rtol=0, atol=0)
        assert images.shape == (2, 3, 32, 32)
        assert (images - default.decode(x)).abs().max() > 1e-3


def test_search_looks_ahead_with_the_cheap_vae_and_returns_the_full_decode(sd, tiny, monkeypatch):
    results = []
    run_search = search_pipeline.run_search

    def recorded(*args, **kwargs):
        results.append(run_search(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(search_pipeline, "run_search", recorded)
    reward = Brightness()
    kw = {"num_inference_steps": STEPS, "output_type": "pt"}
    with one_thread():
        plain = SearchPipeline(sd, "bon", reward, particles=3)("a cube", generator=seeded(0), **kw)
        pipe = SearchPipeline(sd, "bon", reward, particles=3, lookahead_vae=tiny)
        with Calls(tiny) as cheap, Calls(sd.vae) as full:
            out = pipe("a cube", generator=seeded(0), **kw)
        result = results[-1]
        assert len(cheap.inputs) >= 1 and sum(len(z) for z in cheap.inputs) >= 3  # every particle scored
        assert len(full.inputs) == 1 and full.inputs[0].shape[0] == 1  # the returned sample only
        with torch.no_grad():
            expected = vae_decoder(sd.vae)(result.x[:1])
            expected_score = float(reward(expected, "a cube")[0])
            cheap_score = float(reward(vae_decoder(tiny)(result.x[:1]), "a cube")[0])
    assert out.images.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out.images, expected, rtol=0, atol=0)
    assert out.scores[0] == pytest.approx(expected_score, abs=1e-6)
    # the search's own score was the cheap decode's
    assert float(result.scores[0]) == pytest.approx(cheap_score, abs=1e-6)
    assert cheap_score != pytest.approx(expected_score, abs=1e-6)
    assert out.nfe == plain.nfe == [3 * STEPS]
    assert len(out.history) == 1 and out.history[0] == result.history


def test_flux_full_decode_unpacks_the_latents():
    """With the pipeline's own VAE as the look-ahead VAE, the re-decode path (Flux: packed latents unpacked
    at the call's size) returns what the plain search returns."""
    flux = tiny_flux()
    kw = {"num_inference_steps": STEPS, "height": 32, "width": 32, "output_type": "pt"}
    with one_thread():
        plain = SearchPipeline(flux, "bon", Brightness(), particles=2)("a cat", generator=seeded(0), **kw)
        pipe = SearchPipeline(flux, "bon", Brightness(), particles=2, lookahead_vae=flux.vae)
        with Calls(flux.vae) as calls:
            again = pipe("a cat", generator=seeded(0), **kw)
    assert len(calls.inputs) >= 2  # the search's decodes and the returned sample's
    assert again.images.shape == plain.images.shape == (1, 3, 32, 32)
    torch.testing.assert_close(again.images, plain.images, rtol=0, atol=1e-6)
    assert again.scores == pytest.approx(plain.scores, abs=1e-6)
    assert again.nfe == plain.nfe


def test_digits_pipeline_refuses_a_lookahead_vae(tiny):
    from pipelines.digits import DIGITS_MODEL, DigitsPipeline

    digits = DigitsPipeline.from_pretrained(DIGITS_MODEL)
    with pytest.raises(ValueError, match="no VAE"):
        SearchPipeline(digits, "bon", Brightness(), particles=2, lookahead_vae=tiny)
