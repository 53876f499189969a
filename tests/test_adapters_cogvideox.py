"""CogVideoX text-to-video as a search chain (pipelines.adapters.cogvideox), on the tiny offline pipeline: the
chain's schedule is CogVideoX's (SNR shift + zero terminal SNR), the ODE chain reproduces ``pipe(...)`` with
the DPM-Solver++ façade from the same latents, and search methods run with NFE equal to an independent
count of transformer rows (2 per particle evaluation with CFG)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from counting import VideoBrightness, counting_rows
from threads import one_thread
from tiny_pipelines import CALL_KWARGS, PROMPT, T5_MAX_LENGTH, tiny_cogvideox

from pipelines.adapters import cogvideox_chain
from samplers.schedulers import DPMSolverPPScheduler
from samplers.solvers import DPMSolverPP
from search import best_of_n, fk_steering
from search.chain import advance

STEPS = 4
SIZE = 32
FRAMES = 9


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_cogvideox()


@pytest.fixture(autouse=True)
def _one_thread_no_grad() -> Iterator[None]:
    with one_thread(), torch.no_grad():
        yield


def _chain(pipe: Any, **kw: Any):
    return cogvideox_chain(pipe, PROMPT, negative_prompt="blurry", num_inference_steps=STEPS,
                           height=SIZE, width=SIZE, num_frames=FRAMES,
                           max_sequence_length=T5_MAX_LENGTH, **kw)  # fmt: skip


def test_the_facade_runs_cogvideox_schedule(pipe):
    """The façade reads snr_shift_scale from the config: its abar equals
    CogVideoXDDIMScheduler's (but for the terminal level, 2^-24 instead of 0) and its timesteps are the
    scheduler's trailing ones."""
    ref = pipe.scheduler
    facade = DPMSolverPPScheduler.from_config(ref.config)
    abar = facade._base_schedule.alphas_cumprod
    torch.testing.assert_close(abar[:-1], ref.alphas_cumprod[:-1].to(abar.dtype), atol=1e-12, rtol=1e-9)
    assert float(ref.alphas_cumprod[-1]) == 0 and float(abar[-1]) == 2.0**-24
    facade.set_timesteps(STEPS)
    ref.set_timesteps(STEPS)
    torch.testing.assert_close(facade.timesteps, ref.timesteps.float(), atol=0, rtol=0)
    assert facade.prediction == "v_prediction"


def test_ode_chain_reproduces_the_pipeline(pipe):
    kw = {k: v for k, v in CALL_KWARGS["cogvideox"].items() if k != "output_type"}
    chain = cogvideox_chain(pipe, kw["prompt"], negative_prompt=kw["negative_prompt"],
                            num_inference_steps=STEPS, guidance_scale=kw["guidance_scale"],
                            height=kw["height"], width=kw["width"], num_frames=kw["num_frames"],
                            max_sequence_length=kw["max_sequence_length"], solver=DPMSolverPP(2))  # fmt: skip
    assert chain.shape == (3, 4, 4, 4)  # (9 - 1) / 4 + 1 latent frames, 4 channels, 32 px / 8
    latents = torch.randn(1, *chain.shape, generator=torch.Generator().manual_seed(0))
    final = advance(chain, chain.start(latents))
    frames = chain.decode(final.x)
    assert chain.budget.nfe == STEPS
    original = pipe.scheduler
    try:
        pipe.scheduler = DPMSolverPPScheduler.from_config(original.config)
        ref_latents = pipe(**kw, num_inference_steps=STEPS, latents=latents, output_type="latent").frames
        reference = pipe(**kw, num_inference_steps=STEPS, latents=latents, output_type="pt").frames
    finally:
        pipe.scheduler = original
    assert frames.shape == reference.shape == (1, FRAMES, 3, SIZE, SIZE)
    print(
        f"max abs diff: latents {(final.x - ref_latents).abs().max().item():.3g}, "
        f"frames {(frames - reference).abs().max().item():.3g}"
    )
    torch.testing.assert_close(final.x, ref_latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(frames, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["fk_steering", "best_of_n"])
def test_search_counts_transformer_rows(pipe, method):
    if method == "fk_steering":
        chain = _chain(pipe)  # SDEDPMSolverPP(2): stochastic steps
        run = lambda ch, gen: fk_steering(ch, VideoBrightness(), particles=3, generator=gen)  # noqa: E731
    else:
        chain = _chain(pipe, solver=DPMSolverPP(2))
        run = lambda ch, gen: best_of_n(ch, VideoBrightness(), n=3, generator=gen)  # noqa: E731
    with counting_rows(pipe) as rows:
        result = run(chain, torch.Generator().manual_seed(1))
    assert result.nfe == 3 * STEPS
    assert result.nfe * 2 == rows[0]
    assert result.samples.shape[1:] == (FRAMES, 3, SIZE, SIZE)
    assert 0 <= result.samples.min() and result.samples.max() <= 1
    torch.testing.assert_close(result.scores, result.samples.mean(dim=(1, 2, 3, 4)).to(result.scores.dtype))


def test_the_chain_conditions_on_the_prompt_and_rejects_other_pipelines(pipe):
    x = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    a = advance(c := _chain(pipe, solver=DPMSolverPP(2)), c.start(x)).x
    other = cogvideox_chain(pipe, "a red car on the street", negative_prompt="blurry",
                            num_inference_steps=STEPS, height=SIZE, width=SIZE, num_frames=FRAMES,
                            max_sequence_length=T5_MAX_LENGTH, solver=DPMSolverPP(2))  # fmt: skip
    b = advance(other, other.start(x)).x
    assert not torch.allclose(a, b)
    with pytest.raises(TypeError, match="is not a CogVideoXPipeline"):
        cogvideox_chain(object(), PROMPT)
