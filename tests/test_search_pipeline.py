"""SearchPipeline: the wrapped pipeline's own call when search is off, its output types with search on, NFE
against the UNet's own count, SMC beating best-of-1 on a reward a random tiny pipeline can move, and the
bundled digits model steered by its classifier."""

import numpy as np
import pytest
import torch
from counting import Brightness, VideoBrightness
from PIL import Image
from threads import one_thread
from tiny_pipelines import tiny_sd, tiny_wan

from pipelines.digits import DIGITS_MODEL, DigitsPipeline
from pipelines.search_pipeline import SearchPipeline
from rewards import digits_reward

STEPS = 4


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_without_search_it_is_the_pipeline_call(sd):
    with one_thread():
        ours = SearchPipeline.from_pipeline(sd, search=None)(
            "a red cube", num_inference_steps=STEPS, generator=seeded(0), output_type="np"
        )
        theirs = sd("a red cube", num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    assert np.array_equal(ours.images, theirs.images)


def test_search_returns_the_pipelines_output_types_and_counts_nfe(sd):
    rows = []
    forward = sd.unet.forward

    def counted(x, *args, **kwargs):
        rows.append(x.shape[0])
        return forward(x, *args, **kwargs)

    pipe = SearchPipeline.from_pipeline(sd, search="smc", reward=Brightness(), particles=3)
    with one_thread():
        sd.unet.forward = counted
        try:
            out = pipe(["a cube", "a ball"], num_inference_steps=STEPS, generator=seeded(0))
        finally:
            sd.unet.forward = forward
        assert isinstance(out.images, list) and all(isinstance(im, Image.Image) for im in out.images)
        assert len(out.images) == len(out.scores) == len(out.nfe) == len(out.history) == 2
        assert out.nfe == [3 * STEPS, 3 * STEPS] and sum(rows) == 2 * sum(out.nfe)  # CFG: 2 rows each
        as_np = pipe("a cube", num_inference_steps=STEPS, generator=seeded(0), output_type="np").images
        as_pt = pipe("a cube", num_inference_steps=STEPS, generator=seeded(0), output_type="pt")
    assert as_np.shape == (1, 32, 32, 3) and as_pt.images.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(as_np[0], as_pt.images[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert float(Brightness()(as_pt.images)) == pytest.approx(as_pt.scores[0], abs=1e-5)


def test_smc_with_8_particles_beats_best_of_1(sd):
    """Mean brightness over 8 seeds: SMC with 8 particles against one plain stochastic sample."""
    reward = Brightness()
    pipe = SearchPipeline.from_pipeline(sd, reward=reward)
    smc, single = [], []
    with one_thread():
        for seed in range(8):
            kw = {"num_inference_steps": STEPS, "generator": seeded(seed)}
            smc.append(pipe("a cube", search="smc", particles=8, **kw).scores[0])
            single.append(pipe("a cube", search="bon", particles=1, **kw).scores[0])
    assert np.mean(smc) > np.mean(single) + 2 * np.std(single) / np.sqrt(8), (smc, single)


def test_digits_search_raises_the_classifier_log_probability():
    digits = DigitsPipeline.from_pretrained(DIGITS_MODEL)
    reward = digits_reward()
    pipe = SearchPipeline.from_pipeline(digits, search="smc", reward=reward, particles=8)
    prompts = ["3", "5", "8", "9"]
    kw = {"guidance_scale": 1.0, "output_type": "pt"}
    with one_thread():
        plain = digits(prompts, generator=[seeded(i) for i in range(4)], **kw)
        searched = pipe(prompts, generator=[seeded(i) for i in range(4)], **kw)
    assert searched.images.shape == plain.images.shape == (4, 1, 8, 8)
    before = reward((plain.images + 1) / 2, prompts)
    after = reward((searched.images + 1) / 2, prompts)
    torch.testing.assert_close(
        after.double(), torch.tensor(searched.scores, dtype=torch.float64), atol=0.02, rtol=0
    )
    assert float(after.mean()) > float(before.mean())


def test_bad_settings_fail_before_any_work(sd):
    with pytest.raises(ValueError, match="unknown search method"):
        SearchPipeline.from_pipeline(sd, search="annealing", reward=Brightness())
    with pytest.raises(ValueError, match="needs a reward"):
        SearchPipeline.from_pipeline(sd, search="smc")
    pipe = SearchPipeline.from_pipeline(sd, search="bon", reward=Brightness(), particles=2)
    with pytest.raises(ValueError, match="not supported"):
        pipe("a cube", num_inference_steps=STEPS, eta=0.5)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a cube", num_inference_steps=STEPS, output_type="latent")


def test_video_pipelines_return_frames_as_they_do():
    wan = tiny_wan()
    kw = {"num_inference_steps": STEPS, "height": 32, "width": 32, "num_frames": 5, "guidance_scale": 5.0}
    pipe = SearchPipeline.from_pipeline(wan, search="smc", reward=VideoBrightness(), particles=2)
    with one_thread():
        plain = pipe("a cat", search=None, generator=seeded(0), output_type="np", **kw).frames
        searched = pipe("a cat", generator=seeded(0), output_type="np", **kw)
        as_pt = pipe("a cat", generator=seeded(0), output_type="pt", **kw).frames
    assert plain.shape == searched.frames.shape == (1, 5, 32, 32, 3)
    assert as_pt.shape == (1, 5, 3, 32, 32)
    assert float(as_pt.mean()) == pytest.approx(searched.scores[0], abs=1e-5)
