"""Stable Diffusion 1.x/2.x, SDXL and AnimateDiff pipelines (UNet denoisers) + prompts as search chains.

:func:`stable_diffusion_chains` turns a diffusers ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``
or ``AnimateDiffPipeline`` and prompts into :class:`search.chain.SolverChain` s (one per prompt, sharing one
UNet call) that denoise exactly as ``pipe(prompt, ...)`` does when the pipeline's scheduler is the matching
façade of :mod:`samplers.schedulers`:

* the prompt is encoded once, with the pipeline's own ``encode_prompt`` (SDXL: both text encoders, the pooled
  projection, and the micro-conditioning ``add_time_ids`` of ``pipe._get_add_time_ids``, as ``__call__``
  passes them in ``added_cond_kwargs``);
* classifier-free guidance (Ho & Salimans 2022) is the denoiser's: ``u + w (c - u)`` on the raw UNet output,
  unconditional and conditional rows in one batched UNet call, as the pipelines do; only with ``w > 1``
  (and, as in diffusers, never for guidance-embedded UNets with ``time_cond_proj_dim``, whose guidance
  embedding ``timestep_cond`` is passed instead);
* the time grid, noise schedule, prediction type and x0 clipping/thresholding come from
  ``scheduler_cls.from_config(pipe.scheduler.config)`` after ``set_timesteps(num_inference_steps)``, so the
  chain runs the grid ``pipe(...)`` runs with that scheduler;
* latents start as N(0, I) * ``chain.noise_scale`` (the façades' ``init_noise_sigma`` is 1, VP scaling)
  and are decoded by ``pipe.vae`` to [0, 1] images (:func:`pipelines.adapters.common.vae_decoder`);
* AnimateDiff (a ``UNetMotionModel``: SD's UNet + a motion adapter): latents (C, F, h, w), the prompt's
  embeddings repeated for every frame inside the UNet call, as its ``__call__`` does, and the VAE decoding
  frame by frame to (B, F, 3, H, W) frames.

Not supported (the pipelines' options without a counterpart here): ``guidance_rescale``, IP-adapter
images, ``cross_attention_kwargs`` (LoRA scales), ``denoising_end``, AnimateDiff's FreeInit/FreeNoise and
its SDXL variant.
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

from .common import graph_if_needed, pipeline_device_dtype, prompt_chains, prompt_list, vae_decoder

__all__ = ["is_animatediff", "is_sdxl", "stable_diffusion_chain", "stable_diffusion_chains"]

#: ``num_frames`` default of ``AnimateDiffPipeline.__call__``.
_ANIMATEDIFF_FRAMES = 16


def is_sdxl(pipe: Any) -> bool:
    """Whether ``pipe`` is an SDXL-style pipeline (two text encoders, pooled + micro-conditioning inputs)."""
    return hasattr(pipe, "text_encoder_2") or hasattr(pipe, "_get_add_time_ids")


def is_animatediff(pipe: Any) -> bool:
    """Whether ``pipe`` is an AnimateDiff pipeline: its UNet is a ``UNetMotionModel`` (SD's UNet with the
    motion adapter's temporal layers) on video latents (B, C, F, h, w)."""
    return type(getattr(pipe, "unet", None)).__name__ == "UNetMotionModel"


def _frame_by_frame(decode: Any) -> Any:
    """Video latents (B, C, F, h, w) -> frames (B, F, 3, H, W) in [0, 1], each frame decoded by the image
    VAE, as ``AnimateDiffPipeline.decode_latents`` does."""

    def decode_video(latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        images = decode(latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return images.reshape(b, f, *images.shape[1:])

    return decode_video


def _default_size(pipe: Any) -> tuple[int, int]:
    """The pipelines' default (height, width): the UNet's ``sample_size`` times the VAE's scale factor
    (SDXL reads it through ``default_sample_size``, SD from the UNet config, an int or a pair)."""
    size = getattr(pipe, "default_sample_size", None) if is_sdxl(pipe) else None
    if size is None:
        size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else (size[0], size[1])
    return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor


@torch.no_grad()
def _encode(
    pipe: Any,
    prompt: str,
    negative_prompt: str | None,
    guided: bool,
    size: tuple[int, int],
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(cond, uncond) keyword inputs of the closure, batch 1, from the pipeline's own encoders."""
    if not is_sdxl(pipe):
        embeds, negative = pipe.encode_prompt(prompt, device, 1, guided, negative_prompt=negative_prompt)
        cond = {"encoder_hidden_states": embeds}
        return cond, ({"encoder_hidden_states": negative} if guided else None)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompt,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=guided,
        negative_prompt=negative_prompt,
    )
    if getattr(pipe, "text_encoder_2", None) is None:
        projection_dim = int(pooled.shape[-1])
    else:
        projection_dim = pipe.text_encoder_2.config.projection_dim
    # __call__'s defaults: original_size = target_size = (height, width), crops_coords_top_left = (0, 0); the
    # negative branch reuses them unless negative sizes are given
    time_ids = pipe._get_add_time_ids(
        size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=projection_dim
    ).to(device)
    cond = {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids}
    if not guided:
        return cond, None
    return cond, {"encoder_hidden_states": negative, "text_embeds": negative_pooled, "time_ids": time_ids}


def stable_diffusion_chain(
    pipe: Any, prompt: str, *, budget: Budget | None = None, **kwargs: Any
) -> SolverChain:
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` and one prompt as a search chain: the
    chain of :func:`stable_diffusion_chains` for ``[prompt]`` (see there for the arguments), charging
    ``budget`` (a fresh one by default)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be one string, got {type(prompt).__name__}")
    chain = stable_diffusion_chains(pipe, [prompt], **kwargs)[0]
    return chain if budget is None else chain.with_budget(budget)


def stable_diffusion_chains(
    pipe: Any,
    prompts: Sequence[str],
    *,
    negative_prompt: str | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    solver: Solver | None = None,
    scheduler_cls: type = DPMSolverPPScheduler,
    max_batch: int | None = None,
    vae: Any = None,
) -> list[SolverChain]:
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` and prompts as search chains, one per
    prompt, sharing one UNet call: searches on them run by :func:`search.lockstep.run_lockstep` make
    batched UNet calls on the particles of every prompt.

    Args:
        pipe: the pipeline (its UNet, text encoders, VAE and scheduler config are used; nothing is changed).
        prompts: one prompt per chain (every particle of a chain has its prompt); negative_prompt: the
            unconditional branch's prompt (the pipeline's default when None: the empty prompt, or zeros with
            SDXL's ``force_zeros_for_empty_prompt``).
        num_inference_steps: passed to the façade's ``set_timesteps``: the grid has this many steps for
            multistep schedulers (each step of a singlestep ``solver`` costs its order in NFE).
        guidance_scale: classifier-free guidance weight w; no guidance (one UNet row per particle) when
            w <= 1, as in diffusers.
        height, width: image size in pixels (the pipeline's default when None); latents are
            ``(unet.config.in_channels, height // vae_scale_factor, width // vae_scale_factor)``.
        num_frames: AnimateDiff only: frames of the video (default 16, as the pipeline); latents
            ``(in_channels, num_frames, h, w)``, ``decode`` gives frames (B, F, 3, H, W).
        solver: any :mod:`samplers.solvers` solver; default ``SDEDPMSolverPP(2)`` (stochastic steps, as
            particle methods need; ``DPMSolverPP(2)`` is the ODE that ``DPMSolverPPScheduler`` runs).
        scheduler_cls: the :mod:`samplers.schedulers` façade whose grid the chain runs.
        max_batch: at most this many particles per UNet call (2 * max_batch rows with guidance), also
            when the calls of several chains are merged. Each chain charges its own budget one NFE per
            particle evaluation, the doubled guidance batch included.
        vae: the VAE ``decode`` uses instead of ``pipe.vae`` (None: the pipeline's), e.g. a cheap
            ``AutoencoderTiny`` (TAESD) for look-ahead rewards; it must decode the pipeline's latents.

    Returns:
        one :class:`~search.chain.SolverChain` per prompt on the pipeline's execution device with float32
        latents (the UNet runs in its own dtype); ``decode`` gives [0, 1] images (B, 3, height, width).

    The UNet and the VAE build an autograd graph only when a latent or conditioning input requires grad
    (gradient methods through the chain); otherwise they run without one, whatever
    ``torch.is_grad_enabled()`` (the pipeline's parameters requiring grad do not count).
    """
    prompts = prompt_list(prompts)
    unet = pipe.unet
    device, net_dtype = pipeline_device_dtype(pipe)
    default_h, default_w = _default_size(pipe)
    height, width = height or default_h, width or default_w
    animated = is_animatediff(pipe)
    if num_frames is not None and not animated:
        raise ValueError("num_frames is only for AnimateDiff pipelines (a motion UNet)")
    if animated and is_sdxl(pipe):
        raise ValueError("AnimateDiff SDXL is not supported")
    frames = (num_frames or _ANIMATEDIFF_FRAMES) if animated else None
    factor = pipe.vae_scale_factor
    if height % factor or width % factor:
        raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")

    embedded_guidance = unet.config.time_cond_proj_dim is not None
    guided = guidance_scale > 1 and not embedded_guidance
    encodings = [_encode(pipe, p, negative_prompt, guided, (height, width), device) for p in prompts]
    if embedded_guidance:  # guidance-distilled UNets (LCM): w enters as an embedding, no CFG
        w = torch.tensor([guidance_scale - 1.0])
        embedding = pipe.get_guidance_scale_embedding(w, embedding_dim=unet.config.time_cond_proj_dim)
        for cond, _ in encodings:
            cond["timestep_cond"] = embedding.to(device=device, dtype=torch.float32)

    scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    grid = scheduler.grid
    # the network receives the façade's timesteps: DDPM time, or 1000 * t for flow configs
    time_scale = float(scheduler.config.num_train_timesteps) if scheduler.is_flow else 1.0
    sdxl = is_sdxl(pipe)

    def net(
        x: torch.Tensor,
        t: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``unet(x, t, encoder_hidden_states, [added_cond_kwargs], [timestep_cond]).sample``, as the
        pipelines call it, in the UNet's dtype."""
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if sdxl else None
        if frames is not None:  # AnimateDiff: the prompt's embeddings for every frame, as its __call__
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        with graph_if_needed(x, encoder_hidden_states, text_embeds, time_ids, timestep_cond):
            return unet(
                x.to(net_dtype),
                t * time_scale if time_scale != 1.0 else t,
                encoder_hidden_states=encoder_hidden_states.to(net_dtype),
                timestep_cond=None if timestep_cond is None else timestep_cond.to(net_dtype),
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

    decode = vae_decoder(pipe.vae if vae is None else vae, max_batch)
    shape = (unet.config.in_channels, height // factor, width // factor)
    if frames is not None:
        shape = (shape[0], frames, *shape[1:])
        decode = _frame_by_frame(decode)
    solver = solver if solver is not None else SDEDPMSolverPP(2)

    def make_chain(denoiser: Denoiser, cond: dict[str, torch.Tensor]) -> SolverChain:
        return SolverChain(denoiser, grid, solver, shape, cond=cond, decode=decode, dtype=torch.float32,
                           device=device, max_batch=max_batch)  # fmt: skip

    return prompt_chains(
        net,
        encodings,
        make_chain,
        prediction_type=scheduler.prediction,
        guidance_scale=float(guidance_scale) if guided else None,
        max_batch=max_batch,
        threshold=x0_limit_from_config(scheduler.config),
    )
