"""SD3 / Flux / Wan pipelines as search chains (pipelines.adapters.flow), on the tiny offline pipelines: the
ODE chain reproduces ``pipe(...)`` with the DPM-Solver++ façade from the same latents, every search method
runs end-to-end with its NFE equal to an independent count of transformer rows, and the SDE chains (linear
and VP interpolants) run and are reproducible under a fixed generator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from counting import Brightness, VideoBrightness, counting_rows
from diffusers import FlowMatchEulerDiscreteScheduler
from threads import one_thread
from tiny_pipelines import CALL_KWARGS, PROMPT, T5_MAX_LENGTH, tiny_flux, tiny_sd3, tiny_wan

from pipelines.adapters.flow import flow_pipeline_chain
from samplers.schedulers import DPMSolverPPScheduler
from samplers.solvers import DPMSolverPP
from search import (
    beam_search,
    best_of_n,
    diffusion_tree_sampling,
    evo_search,
    fk_steering,
    path_search,
    rollover_budget_forcing,
    zero_order_search,
)
from search.chain import advance

STEPS = 4
SIZE = 32
FACTORIES = {"sd3": tiny_sd3, "flux": tiny_flux, "wan": tiny_wan}


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return {name: make() for name, make in FACTORIES.items()}


@pytest.fixture(autouse=True)
def _one_thread_no_grad() -> Iterator[None]:
    with one_thread(), torch.no_grad():
        yield


CASES = {
    "sd3-cfg": ("sd3", dict(guidance_scale=5.0), 2),
    "flux-distilled": ("flux", dict(guidance_scale=3.5), 1),
    "flux-true-cfg": ("flux", dict(guidance_scale=3.5, negative_prompt="blurry", true_cfg_scale=4.0), 2),
}


def make_chain(pipes: dict[str, Any], case: str, **kw: Any):
    name, options, _ = CASES[case]
    return flow_pipeline_chain(
        pipes[name],
        PROMPT,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        max_sequence_length=T5_MAX_LENGTH,
        **options,
        **kw,
    )


@pytest.mark.parametrize("name", ["sd3", "flux", "sd3-dynamic-shift"])
def test_ode_chain_reproduces_the_pipeline_with_the_dpmsolver_facade(pipes, name):
    """stochastic=False with DPMSolverPP(2) == ``pipe(...)`` with DPMSolverPPScheduler from the same
    latents: same grid, same transformer inputs, same CFG (SD3) / guidance embedding + true CFG (Flux).
    ``sd3-dynamic-shift``: an SD3 scheduler config with ``use_dynamic_shifting`` (mu from the token count)."""
    pipe = pipes[name.split("-")[0]]
    kw = {k: v for k, v in CALL_KWARGS[name.split("-")[0]].items() if k != "output_type"}
    original = pipe.scheduler
    if name == "sd3-dynamic-shift":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256
        )
    try:
        chain = flow_pipeline_chain(
            pipe,
            kw["prompt"],
            negative_prompt=kw.get("negative_prompt"),
            num_inference_steps=STEPS,
            guidance_scale=kw["guidance_scale"],
            true_cfg_scale=kw.get("true_cfg_scale", 1.0),
            height=kw["height"],
            width=kw["width"],
            max_sequence_length=kw["max_sequence_length"],
            stochastic=False,
            solver=DPMSolverPP(2),
        )
        latents = torch.randn(1, *chain.shape, generator=torch.Generator().manual_seed(0))
        final = advance(chain, chain.start(latents))
        images = chain.decode(final.x)
        assert chain.budget.nfe == STEPS

        pipe.scheduler = DPMSolverPPScheduler.from_config(pipe.scheduler.config)
        ref_latents = pipe(**kw, num_inference_steps=STEPS, latents=latents, output_type="latent").images
        ref_images = pipe(**kw, num_inference_steps=STEPS, latents=latents, output_type="pt").images
        ref_grid = pipe.scheduler.grid
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(chain.grid.t, ref_grid.t, atol=0, rtol=0)
    assert images.shape == ref_images.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(final.x, ref_latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(images, ref_images, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- every search method

#: (method, stochastic chain?, options): deterministic-only methods on the ODE chain, particle methods on
#: the SDE chain.
METHODS: dict[str, tuple[Callable[..., Any], bool, dict[str, Any]]] = {
    "best_of_n": (best_of_n, False, dict(n=3)),
    "zero_order_search": (zero_order_search, False, dict(candidates=2, iterations=2)),
    "evo_search": (evo_search, False, dict(population=3, generations=2)),
    "path_search": (path_search, False, dict(paths=2, branches=2, start=2, back=1, forward=2)),
    "fk_steering": (fk_steering, True, dict(particles=3)),
    "beam_search": (beam_search, True, dict(beams=2, children=2)),
    "diffusion_tree_sampling": (diffusion_tree_sampling, True, dict(rollouts=3)),
    "rollover_budget_forcing": (rollover_budget_forcing, True, dict(max_nfe=3 * STEPS)),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", ["sd3-cfg", "flux-distilled"])
def test_every_search_method_runs_with_exact_nfe(pipes, case, method):
    run, stochastic, options = METHODS[method]
    name, _, rows_per_eval = CASES[case]
    chain = make_chain(pipes, case, stochastic=stochastic)
    with counting_rows(pipes[name]) as rows:
        result = run(chain, Brightness(), generator=torch.Generator().manual_seed(1), **options)
    assert rows[0] > 0
    assert result.nfe * rows_per_eval == rows[0]
    images = result.samples
    assert images.shape[1:] == (3, SIZE, SIZE)
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(result.scores, images.mean(dim=(1, 2, 3)).to(result.scores.dtype))


def test_true_cfg_counts_two_rows_per_particle(pipes):
    """Flux true CFG: one batched transformer call on 2 rows per particle, charged once."""
    chain = make_chain(pipes, "flux-true-cfg", stochastic=True)
    with counting_rows(pipes["flux"]) as rows:
        result = fk_steering(chain, Brightness(), particles=2, generator=torch.Generator().manual_seed(0))
    assert result.nfe == 2 * STEPS
    assert rows[0] == 2 * result.nfe


def test_max_batch_splits_calls_but_not_the_count(pipes):
    chain = make_chain(pipes, "sd3-cfg", stochastic=True, max_batch=2)
    with counting_rows(pipes["sd3"]) as rows:
        state = advance(chain, chain.prior(5, torch.Generator().manual_seed(0)), generator=torch.Generator())
    assert chain.budget.nfe == 5 * STEPS and rows[0] == 2 * chain.budget.nfe
    assert state.x.shape == (5, *chain.shape)


# --------------------------------------------------------------------------- SDE chains


def _sample(chain, seed: int, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return advance(chain, chain.prior(n, gen), generator=gen).x


@pytest.mark.parametrize("interpolant", ["linear", "vp"])
@pytest.mark.parametrize("case", ["sd3-cfg", "flux-distilled"])
def test_sde_chains_run_and_are_reproducible(pipes, case, interpolant):
    chain = make_chain(pipes, case, stochastic=True, interpolant=interpolant)
    assert chain.solver.is_stochastic and chain.steps == STEPS
    a, b, c = _sample(chain, 0), _sample(chain, 0), _sample(chain, 1)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # particles differ
    images = chain.decode(a)
    assert images.shape == (2, 3, SIZE, SIZE) and 0 <= images.min() and images.max() <= 1


def test_linear_sde_chain_runs_the_pipeline_grid(pipes):
    """The linear-interpolant SDE chain visits the same (shifted) times as the ODE chain / the pipeline."""
    for case in ("sd3-cfg", "flux-distilled"):
        ode = make_chain(pipes, case, stochastic=False)
        sde = make_chain(pipes, case, stochastic=True, interpolant="linear")
        torch.testing.assert_close(sde.grid.t, ode.grid.t, atol=1e-12, rtol=0)


def test_the_chains_condition_on_the_prompt(pipes):
    """Different prompts give different samples from the same noise (the embeddings reach the network)."""
    for case in ("sd3-cfg", "flux-distilled"):
        name, options, _ = CASES[case]
        chains = [
            flow_pipeline_chain(
                pipes[name],
                p,
                num_inference_steps=2,
                height=SIZE,
                width=SIZE,
                max_sequence_length=T5_MAX_LENGTH,
                stochastic=False,
                **options,
            )
            for p in (PROMPT, "a red car on the street")
        ]
        x = torch.randn(1, *chains[0].shape, generator=torch.Generator().manual_seed(0))
        a, b = (advance(ch, ch.start(x)).x for ch in chains)
        assert not torch.allclose(a, b)


def test_bad_inputs_fail_clearly(pipes):
    with pytest.raises(TypeError, match="is not a StableDiffusion3Pipeline, FluxPipeline or WanPipeline"):
        flow_pipeline_chain(object(), PROMPT)
    with pytest.raises(ValueError, match="interpolant"):
        make_chain(pipes, "sd3-cfg", interpolant="cosine")
    with pytest.raises(ValueError, match="deterministic solver"):
        from samplers.solvers import SDEDPMSolverPP

        make_chain(pipes, "sd3-cfg", stochastic=False, solver=SDEDPMSolverPP(2))


# --------------------------------------------------------------------------- video: Wan


def test_wan_ode_chain_reproduces_the_pipeline_and_decodes_frames(pipes):
    """The Wan text-to-video chain == ``pipe(...)`` with the DPM-Solver++ façade from the same latents (CFG
    with a negative prompt); frames come out (B, F, C, H, W) in [0, 1], as the pipeline's "pt" output."""
    pipe, kw = pipes["wan"], {k: v for k, v in CALL_KWARGS["wan"].items() if k != "output_type"}
    options = {k: kw[k] for k in ("negative_prompt", "guidance_scale", "height", "width", "num_frames")}
    chain = flow_pipeline_chain(pipe, kw["prompt"], num_inference_steps=STEPS, stochastic=False,
                                max_sequence_length=kw["max_sequence_length"], **options)  # fmt: skip
    assert chain.shape == (16, 2, 4, 4)  # 5 frames -> 2 latent frames; 32 px -> 4
    latents = torch.randn(1, *chain.shape, generator=torch.Generator().manual_seed(0))
    final = advance(chain, chain.start(latents))
    frames = chain.decode(final.x)
    original = pipe.scheduler
    try:
        pipe.scheduler = DPMSolverPPScheduler.from_config(pipe.scheduler.config)
        reference = pipe(**kw, num_inference_steps=STEPS, latents=latents, output_type="pt").frames
    finally:
        pipe.scheduler = original
    assert frames.shape == reference.shape == (1, 5, 3, SIZE, SIZE)
    torch.testing.assert_close(frames, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["fk_steering", "best_of_n", "rollover_budget_forcing"])
def test_wan_search_counts_transformer_rows(pipes, method):
    run, stochastic, options = METHODS[method]
    chain = flow_pipeline_chain(pipes["wan"], PROMPT, negative_prompt="blurry", num_inference_steps=STEPS,
                                guidance_scale=5.0, height=SIZE, width=SIZE, num_frames=5,
                                max_sequence_length=T5_MAX_LENGTH, stochastic=stochastic)  # fmt: skip
    with counting_rows(pipes["wan"]) as rows:
        result = run(chain, VideoBrightness(), generator=torch.Generator().manual_seed(1), **options)
    assert result.nfe * 2 == rows[0] > 0
    assert result.samples.shape[1:] == (5, 3, SIZE, SIZE)
