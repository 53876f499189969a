"""diffusers' ``CogVideoXPipeline`` (text to video) plus one prompt as a search chain
(:class:`search.chain.SolverChain`).

The prompt is encoded once with the pipeline's ``encode_prompt``; the chain then calls the transformer as
``CogVideoXPipeline.__call__`` does: ``transformer(hidden_states, encoder_hidden_states, timestep,
image_rotary_emb)`` on latents laid out (F', C, H/8, W/8) per sample (frames first, as the pipeline keeps
them; F' = (frames - 1) / 4 + 1, padded to a multiple of ``patch_size_t`` for CogVideoX 1.5), with the 3D
rotary embeddings of the pipeline's ``_prepare_rotary_positional_embeddings`` where the transformer uses
them. Classifier-free guidance (``guidance_scale > 1``) is one batched call on uncond + cond rows,
``out = u + w (c - u)``, as the pipeline (charged one NFE per particle evaluation).

Time: the scheduler's DDPM schedule (CogVideoX's DDIM/DPM schedulers: v-prediction, zero terminal SNR,
trailing spacing) *including* its ``snr_shift_scale`` (abar -> abar / (s + (1 - s) abar), before the
zero-SNR rescale), which the :mod:`samplers.schedulers` façades read from the config. The deterministic
chain with ``DPMSolverPP(2)`` runs exactly what ``pipe(...)`` runs with
``pipe.scheduler = DPMSolverPPScheduler.from_config(pipe.scheduler.config)``.

``decode`` gives frames (B, F, 3, H, W) in [0, 1] (the pipeline's ``output_type="pt"``), the layout video
rewards take. Not supported: ``use_dynamic_cfg`` (the guidance weight would depend on the step), and image or
video conditioning (the I2V / V2V pipelines).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from samplers.denoiser import Denoiser
from samplers.schedulers import DPMSolverPPScheduler, x0_limit_from_config
from samplers.solvers import SDEDPMSolverPP, Solver
from search.budget import Budget
from search.chain import SolverChain

from .common import (
    particle_dtype,
    pipeline_device_dtype,
    prompt_chains,
    prompt_list,
    transformer_net,
    vae_decoder,
)

__all__ = ["cogvideox_chain", "cogvideox_chains"]

#: ``max_sequence_length`` default of ``CogVideoXPipeline.__call__``.
_DEFAULT_MAX_SEQUENCE_LENGTH = 226


def cogvideox_chain(pipe: Any, prompt: str, *, budget: Budget | None = None, **kwargs: Any) -> SolverChain:
    """A search chain generating videos for one prompt with a ``CogVideoXPipeline``: the chain of
    :func:`cogvideox_chains` for ``[prompt]`` (see there for the arguments), charging ``budget`` (a fresh one
    by default)."""
    _check_pipeline(pipe)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be one string, got {type(prompt).__name__}")
    chain = cogvideox_chains(pipe, [prompt], **kwargs)[0]
    return chain if budget is None else chain.with_budget(budget)


def _check_pipeline(pipe: Any) -> None:
    from diffusers import CogVideoXPipeline

    if not isinstance(pipe, CogVideoXPipeline):
        raise TypeError(f"{type(pipe).__name__} is not a CogVideoXPipeline")


def cogvideox_chains(
    pipe: Any,
    prompts: Sequence[str],
    *,
    negative_prompt: str | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 6.0,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    max_sequence_length: int | None = None,
    solver: Solver | None = None,
    max_batch: int | None = None,
    vae: Any = None,
) -> list[SolverChain]:
    """Search chains generating videos with a ``CogVideoXPipeline``, one per prompt, sharing one transformer
    call: searches on them run by :func:`search.lockstep.run_lockstep` make batched transformer calls on the
    particles of every prompt.

    Args:
        pipe: a ``CogVideoXPipeline`` (subclasses included); nothing of it is changed.
        prompts: one prompt per chain (every particle of a chain shares its prompt's embeddings).
        negative_prompt: the unconditional branch of CFG (``""`` by default, as the pipeline).
        num_inference_steps: steps of the chain's grid (the scheduler config's spacing).
        guidance_scale: the CFG weight (CFG runs only when > 1, as the pipeline); constant over the steps
            (the pipeline's ``use_dynamic_cfg`` is not supported).
        height, width, num_frames: video size (default: the transformer config's sample size, as the
            pipeline: ``sample_height * 8``, ``sample_width * 8``, ``sample_frames``).
        max_sequence_length: T5 tokens of the prompt (default 226, as the pipeline; must match the
            transformer's ``max_text_seq_length`` for models with learned/sincos positional embeddings).
        solver: default ``SDEDPMSolverPP(2)`` (stochastic steps, as particle methods need);
            ``DPMSolverPP(2)`` is the ODE that ``DPMSolverPPScheduler`` runs in the pipeline.
        max_batch: at most this many particles per transformer call (CFG doubles the rows of a call), also
            when the calls of several chains are merged.
        vae: the VAE ``decode`` uses instead of ``pipe.vae`` (None: the pipeline's); it must decode the
            pipeline's latents (B, C, F', h, w) to frames.

    Returns:
        one :class:`~search.chain.SolverChain` per prompt (each charging its own budget) on (F', C, H/8,
        W/8) latents (float32 particles where the transformer runs in half precision) whose ``decode``
        gives frames (B, F, 3, H, W) in [0, 1].
    """
    _check_pipeline(pipe)
    prompts = prompt_list(prompts)
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    transformer = pipe.transformer
    tconfig = transformer.config
    device, net_dtype = pipeline_device_dtype(pipe)
    spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    height = int(height or tconfig.sample_height * spatial)
    width = int(width or tconfig.sample_width * spatial)
    num_frames = int(num_frames or tconfig.sample_frames)
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    max_sequence_length = max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH

    latent_frames = (num_frames - 1) // temporal + 1
    additional = 0  # CogVideoX 1.5: latent frames padded to a multiple of patch_size_t (dropped at decode)
    if tconfig.patch_size_t is not None and latent_frames % tconfig.patch_size_t:
        additional = tconfig.patch_size_t - latent_frames % tconfig.patch_size_t
    shape = (latent_frames + additional, tconfig.in_channels, height // spatial, width // spatial)

    cfg = guidance_scale > 1
    encodings = []
    with torch.no_grad():
        for prompt in prompts:
            embeds, neg_embeds = pipe.encode_prompt(
                prompt,
                negative_prompt,
                do_classifier_free_guidance=cfg,
                max_sequence_length=max_sequence_length,
                device=device,
            )
            encodings.append(
                ({"encoder_hidden_states": embeds}, {"encoder_hidden_states": neg_embeds} if cfg else None)
            )
    rotary = None
    if tconfig.use_rotary_positional_embeddings:
        rotary = pipe._prepare_rotary_positional_embeddings(height, width, shape[0], device)

    # the pipeline's transformer call on (B, F', C, h, w) latents at DDPM timesteps t
    net = transformer_net(transformer, net_dtype, cast=("encoder_hidden_states",), image_rotary_emb=rotary)

    facade = DPMSolverPPScheduler.from_config(pipe.scheduler.config)
    facade.set_timesteps(num_inference_steps)
    decode_video = vae_decoder(pipe.vae if vae is None else vae, max_batch)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        """(B, F', C, h, w) latents -> (B, F, 3, H, W) frames in [0, 1], as ``decode_latents`` + "pt"."""
        return decode_video(latents[:, additional:].permute(0, 2, 1, 3, 4))

    solver = solver if solver is not None else SDEDPMSolverPP(2)

    def make_chain(denoiser: Denoiser, cond: dict[str, torch.Tensor]) -> SolverChain:
        return SolverChain(denoiser, facade.grid, solver, shape, cond=cond, decode=decode,
                           dtype=particle_dtype(net_dtype), device=device, max_batch=max_batch)  # fmt: skip

    return prompt_chains(
        net,
        encodings,
        make_chain,
        prediction_type=facade.prediction,
        guidance_scale=float(guidance_scale) if cfg else None,
        max_batch=max_batch,
        threshold=x0_limit_from_config(facade.config),
    )
