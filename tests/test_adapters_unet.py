"""Stable Diffusion and SDXL pipelines as search chains (pipelines/adapters/unet.py), on the tiny offline
pipelines: the chain reproduces ``pipe(...)`` exactly, every search method runs on it with its NFE equal to an
independent count of UNet rows, and ``max_batch`` bounds the UNet batch without changing the result."""

from collections.abc import Callable

import pytest
import torch
from counting import Brightness
from tiny_pipelines import CALL_KWARGS, tiny_animatediff, tiny_sd, tiny_sdxl

import search
from pipelines.adapters.unet import stable_diffusion_chain
from samplers.schedulers import DPMSolverPPScheduler
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP
from search.chain import SolverChain, advance

STEPS = 4
FACTORIES = {"sd": tiny_sd, "sdxl": tiny_sdxl}


class UNetRows:
    """Counts the rows of every UNet call and the largest batch, by wrapping ``unet.forward``."""

    def __init__(self, unet: torch.nn.Module, monkeypatch: pytest.MonkeyPatch):
        self.rows, self.largest, forward = 0, 0, unet.forward

        def counted(sample: torch.Tensor, *args, **kwargs):
            self.rows += sample.shape[0]
            self.largest = max(self.largest, sample.shape[0])
            return forward(sample, *args, **kwargs)

        monkeypatch.setattr(unet, "forward", counted)


@pytest.fixture(scope="module")
def pipes() -> dict:
    return {name: make() for name, make in FACTORIES.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _chain(pipe, name: str, **kw) -> SolverChain:
    options = dict(num_inference_steps=STEPS, guidance_scale=CALL_KWARGS[name]["guidance_scale"])
    return stable_diffusion_chain(pipe, CALL_KWARGS[name]["prompt"], **{**options, **kw})


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    "options",
    [{}, {"negative_prompt": "blurry", "guidance_scale": 3.0}, {"guidance_scale": 1.0}],
    ids=["cfg", "negative", "no-cfg"],
)
def test_chain_reproduces_the_pipeline_with_the_same_scheduler(pipes, name, options, monkeypatch):
    pipe = pipes[name]
    monkeypatch.setattr(pipe, "scheduler", DPMSolverPPScheduler.from_config(pipe.scheduler.config))
    chain = _chain(pipe, name, solver=DPMSolverPP(2), **options)
    assert chain.shape == (4, 16, 16)  # the pipeline's default 32x32 pixels, VAE factor 2
    assert chain.noise_scale == pytest.approx(1.0, abs=1e-12) and pipe.scheduler.init_noise_sigma == 1.0
    z = torch.randn(2, *chain.shape, generator=torch.Generator().manual_seed(1))
    call = {**CALL_KWARGS[name], **options, "output_type": "pt", "num_images_per_prompt": 2}
    with torch.no_grad():
        expected = pipe(**call, num_inference_steps=STEPS, latents=z.clone()).images
    images = chain.decode(advance(chain, chain.start(z * chain.noise_scale)).x)
    torch.testing.assert_close(chain.grid.t[:-1].float(), pipe.scheduler.timesteps)  # the same grid
    assert images.shape == expected.shape == (2, 3, 32, 32)
    assert float((images - expected).abs().max()) <= 1e-5
    assert chain.budget.nfe == 2 * STEPS
    # the comparison is sharp: another guidance weight moves the images by far more than the tolerance
    other = _chain(pipe, name, solver=DPMSolverPP(2), **{**options, "guidance_scale": 7.0})
    moved = other.decode(advance(other, other.start(z)).x)
    assert float((moved - expected).abs().max()) > 1e-3


METHODS: dict[str, Callable[..., search.SearchResult]] = {
    "best_of_n": lambda c, r, g: search.best_of_n(c, r, max_nfe=3 * STEPS, generator=g),
    "fk_steering": lambda c, r, g: search.fk_steering(c, r, max_nfe=3 * STEPS, generator=g),
    "beam_search": lambda c, r, g: search.beam_search(c, r, children=2, max_nfe=4 * STEPS, generator=g),
    "tree_greedy": lambda c, r, g: search.diffusion_tree_sampling(
        c, r, greedy=True, max_nfe=3 * STEPS, generator=g
    ),
    "evo_search": lambda c, r, g: search.evo_search(c, r, population=3, max_nfe=6 * STEPS, generator=g),
    "rollover": lambda c, r, g: search.rollover_budget_forcing(c, r, max_nfe=3 * STEPS, generator=g),
    "zero_order": lambda c, r, g: search.zero_order_search(
        c, r, candidates=2, max_nfe=3 * STEPS, generator=g
    ),
    "path_search": lambda c, r, g: search.path_search(c, r, branches=2, max_nfe=10 * STEPS, generator=g),
}
DETERMINISTIC = {"evo_search"}  # evolves the initial noise of the ODE chain


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("method", METHODS)
def test_every_search_method_runs_and_its_nfe_counts_unet_rows(pipes, name, method, monkeypatch):
    pipe = pipes[name]
    counter = UNetRows(pipe.unet, monkeypatch)
    solver = DPMSolverPP(2) if method in DETERMINISTIC else SDEDPMSolverPP(2)
    chain = _chain(pipe, name, solver=solver)
    result = METHODS[method](chain, Brightness(), torch.Generator().manual_seed(0))
    assert 0 < result.nfe and counter.rows == 2 * result.nfe  # CFG: two UNet rows per particle evaluation
    images = result.samples
    assert images.ndim == 4 and images.shape[1:] == (3, 32, 32) and len(images) == len(result.scores)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert not images.requires_grad  # no graph through the VAE when nothing asks for gradients


@pytest.mark.parametrize("name", FACTORIES)
def test_without_guidance_one_unet_row_is_one_nfe(pipes, name, monkeypatch):
    counter = UNetRows(pipes[name].unet, monkeypatch)
    chain = _chain(pipes[name], name, guidance_scale=1.0)
    result = search.best_of_n(
        chain, Brightness(), max_nfe=3 * STEPS, generator=torch.Generator().manual_seed(0)
    )
    assert result.nfe == counter.rows == 3 * STEPS


@pytest.mark.parametrize("name", FACTORIES)
def test_max_batch_bounds_the_unet_batch_and_changes_nothing(pipes, name, monkeypatch):
    def run(max_batch: int | None) -> tuple[search.SearchResult, int]:
        with monkeypatch.context() as patch:
            counter = UNetRows(pipes[name].unet, patch)
            chain = _chain(pipes[name], name, max_batch=max_batch)
            result = search.fk_steering(
                chain, Brightness(), particles=5, generator=torch.Generator().manual_seed(0)
            )
        assert counter.rows == 2 * result.nfe == 2 * 5 * STEPS
        return result, counter.largest

    whole, largest = run(None)
    chunked, largest_chunked = run(2)
    assert largest == 10 and largest_chunked == 4  # 2 particles x (uncond, cond)
    # the same particles, resampled alike; only float rounding differs (the UNet's kernels round a batch of
    # 10 rows and one of 4 differently, ~1e-6 relative per call)
    torch.testing.assert_close(chunked.x, whole.x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5, rtol=0)


def test_gradients_flow_to_the_initial_noise_when_asked(pipes):
    chain = _chain(pipes["sdxl"], "sdxl", solver=DPMSolverPP(2), num_inference_steps=2)
    z = torch.randn(1, *chain.shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    chain.decode(advance(chain, chain.start(z)).x).mean().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_arguments_are_checked(pipes):
    with pytest.raises(ValueError, match="multiples of 2"):
        stable_diffusion_chain(pipes["sd"], "a cat", height=33)
    with pytest.raises(TypeError, match="one string"):
        stable_diffusion_chain(pipes["sd"], ["a cat", "a dog"])


def test_a_guidance_embedded_unet_gets_its_embedding_and_no_cfg(pipes, monkeypatch):
    """UNets with ``time_cond_proj_dim`` (LCM-distilled) take w as ``timestep_cond``; the pipeline then runs
    no classifier-free guidance, and neither does the chain."""
    pipe = pipes["sd"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
        unet = type(pipe.unet).from_config({**config, "time_cond_proj_dim": 8})
    monkeypatch.setattr(pipe, "unet", unet)
    monkeypatch.setattr(pipe, "scheduler", DPMSolverPPScheduler.from_config(pipe.scheduler.config))
    counter = UNetRows(unet, monkeypatch)
    chain = _chain(pipe, "sd", solver=DPMSolverPP(2))
    z = torch.randn(1, *chain.shape, generator=torch.Generator().manual_seed(1))
    images = chain.decode(advance(chain, chain.start(z)).x)
    assert counter.rows == STEPS
    with torch.no_grad():
        expected = pipe(
            **{**CALL_KWARGS["sd"], "output_type": "pt"}, num_inference_steps=STEPS, latents=z
        ).images
    assert float((images - expected).abs().max()) <= 1e-5
    other = _chain(pipe, "sd", solver=DPMSolverPP(2), guidance_scale=2.0)  # w reaches the UNet
    assert float((other.decode(advance(other, other.start(z)).x) - expected).abs().max()) > 1e-3


def test_animatediff_chain_reproduces_the_pipeline_and_decodes_frames(monkeypatch):
    """AnimateDiff: video latents (C, F, h, w), the prompt repeated per frame inside the UNet call, frames
    decoded one by one -- the chain's ODE is ``pipe(...)`` with the same scheduler, from the same latents."""
    pipe = tiny_animatediff()
    name = "animatediff"
    monkeypatch.setattr(pipe, "scheduler", DPMSolverPPScheduler.from_config(pipe.scheduler.config))
    call = {**CALL_KWARGS[name], "output_type": "pt"}
    frames = call["num_frames"]
    options = dict(guidance_scale=call["guidance_scale"], num_frames=frames, solver=DPMSolverPP(2))
    chain = stable_diffusion_chain(pipe, call["prompt"], num_inference_steps=STEPS,
                                   negative_prompt=call["negative_prompt"], **options)  # fmt: skip
    assert chain.shape == (4, frames, 16, 16)
    z = torch.randn(2, *chain.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # one video per call: diffusers fails given latents with num_videos_per_prompt=2
        expected = torch.cat(
            [pipe(**call, num_inference_steps=STEPS, latents=z[i : i + 1]).frames for i in (0, 1)]
        )
    got = chain.decode(advance(chain, chain.start(z)).x)
    assert got.shape == expected.shape == (2, frames, 3, 32, 32)
    assert float((got - expected).abs().max()) <= 1e-5
    assert chain.budget.nfe == 2 * STEPS
    other = stable_diffusion_chain(pipe, "a dog", num_inference_steps=STEPS, **options)
    assert float((other.decode(advance(other, other.start(z)).x) - expected).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="num_frames is only for AnimateDiff"):
        stable_diffusion_chain(tiny_sd(), "a cat", num_frames=4)
