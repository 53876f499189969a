"""Flow-matching transformer pipelines (diffusers' ``StableDiffusion3Pipeline``, ``FluxPipeline``, and the
video ``WanPipeline``) plus one prompt as a search chain (:class:`search.chain.SolverChain`).

The prompt is encoded once with the pipeline's own ``encode_prompt``; the chain then calls the pipeline's
transformer exactly as the pipeline's ``__call__`` does:

* SD3: ``transformer(hidden_states, timestep=1000 t, encoder_hidden_states, pooled_projections)`` on
  (C, H/f, W/f) latents; classifier-free guidance (``guidance_scale > 1``) runs uncond + cond in one
  batched call (:class:`samplers.denoiser.Denoiser`), ``out = u + w (c - u)``, as the pipeline does.
* Flux: the particles are the *packed* latents, (tokens, 4 C) (``FluxPipeline._pack_latents``), and the
  transformer gets ``timestep=t`` (the pipeline passes ``timesteps / 1000``), the constant ``img_ids`` /
  ``txt_ids``, and, for guidance-distilled models (FLUX.1-dev, ``config.guidance_embeds``), the
  ``guidance`` embedding input. True CFG (``true_cfg_scale > 1`` with a negative prompt) is the Denoiser's
  guidance on the negative prompt's embeddings (one batched call where the pipeline makes two). ``decode``
  unpacks (``_unpack_latents``) before the VAE.
* Wan (text to video): ``transformer(hidden_states, timestep=1000 t, encoder_hidden_states)`` on
  (C, F', H/8, W/8) video latents (F' = (frames - 1) / 4 + 1), CFG as SD3; ``decode`` gives frames
  (B, F, 3, H, W) in [0, 1], the layout video rewards take. Wan 2.2's two-expert ``transformer_2`` is not
  supported (a ValueError).

Time: the flow schedule alpha = 1 - t, sigma = t with the pipeline's shift -- SD3's ``config.shift`` (or a
dynamic ``mu`` where the config asks for one), Flux's resolution-dependent ``mu`` from ``calculate_shift`` of
the packed token count, as the pipelines compute it. The grid comes from the
:class:`samplers.schedulers.DPMSolverPPScheduler` façade built from the pipeline's scheduler config, so the
deterministic chain (``stochastic=False``) runs exactly the grid that ``pipe(...)`` runs with
``pipe.scheduler = DPMSolverPPScheduler.from_config(pipe.scheduler.config)``.

Flow models are deterministic under their ODE, so particle methods (FK steering, beam search, DTS,
rollover budget forcing) need ``stochastic=True``: the flow -> SDE conversion of Kim et al. 2025
(:func:`search.flow_chain.flow_sde_chain`), on the VP interpolant by default or on the model's own linear
one. Methods that search over initial noise only (best-of-N, zero-order search, EvoSearch, search over
paths) run on either chain.

NFE is charged per particle evaluation by the chain; with CFG one evaluation is one batched call on
2 rows per particle (not counted twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from samplers.denoiser import Denoiser
from samplers.schedulers import DPMSolverPPScheduler
from samplers.solvers import DPMSolverPP, Solver
from search.budget import Budget
from search.chain import SolverChain
from search.flow_chain import INTERPOLANTS, flow_sde_chain

from .common import (
    particle_dtype,
    pipeline_device_dtype,
    prompt_chains,
    prompt_list,
    transformer_net,
    vae_decoder,
)

__all__ = ["flow_pipeline_chain", "flow_pipeline_chains", "pipeline_kind"]

#: ``guidance_scale`` defaults of the pipelines' ``__call__``.
_DEFAULT_GUIDANCE = {"sd3": 7.0, "flux": 3.5, "wan": 5.0}
#: ``max_sequence_length`` (T5 tokens) defaults of the pipelines' ``__call__``.
_DEFAULT_MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512, "wan": 512}
#: Wan's ``__call__`` defaults: height, width, frames.
_WAN_SIZE = (480, 832, 81)


def pipeline_kind(pipe: Any) -> Literal["sd3", "flux", "wan"]:
    """``"sd3"``, ``"flux"`` or ``"wan"``: which of the supported flow pipelines ``pipe`` is (subclasses
    included)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, WanPipeline

    if isinstance(pipe, FluxPipeline):
        return "flux"
    if isinstance(pipe, StableDiffusion3Pipeline):
        return "sd3"
    if isinstance(pipe, WanPipeline):
        return "wan"
    raise TypeError(f"{type(pipe).__name__} is not a StableDiffusion3Pipeline, FluxPipeline or WanPipeline")


def _calculate_shift(image_seq_len: int, config: Any, max_shift_default: float) -> float:
    """The pipelines' dynamic shift ``mu`` (diffusers' ``calculate_shift``) read from a scheduler config with
    the defaults each pipeline uses (SD3: max_shift 1.16, Flux: 1.15)."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base_shift = config.get("base_shift", 0.5)
    max_shift = config.get("max_shift", max_shift_default)
    m = (max_shift - base_shift) / (max_len - base_len)
    b = base_shift - m * base_len
    return image_seq_len * m + b


def flow_pipeline_chains(
    pipe: Any,
    prompts: Sequence[str],
    *,
    negative_prompt: str | None = None,
    num_inference_steps: int = 28,
    guidance_scale: float | None = None,
    true_cfg_scale: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    max_sequence_length: int | None = None,
    stochastic: bool = True,
    interpolant: Literal["linear", "vp"] = "vp",
    solver: Solver | None = None,
    eta: float = 1.0,
    max_batch: int | None = None,
    vae: Any = None,
) -> list[SolverChain]:
    """Search chains generating images (Wan: videos) with an SD3, Flux or Wan pipeline, one per prompt,
    sharing one transformer call: searches on them run by :func:`search.lockstep.run_lockstep` make batched
    transformer calls on the particles of every prompt.

    Args:
        pipe: a ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (any device and dtype; the particles are
            kept in float32 where the transformer runs in half precision, and cast at its boundary).
        prompts: one prompt per chain (every particle of a chain shares its prompt's embeddings).
        negative_prompt: SD3: the unconditional branch of CFG (``""`` by default, as the pipeline). Flux:
            the negative prompt of true CFG (only used with ``true_cfg_scale > 1``, as the pipeline).
        num_inference_steps: steps of the chain's grid.
        guidance_scale: SD3: the CFG weight (CFG runs only when > 1); Flux: the distilled guidance
            embedding's value (guidance-embedded models only). Default: the pipeline's (7.0 / 3.5).
        true_cfg_scale: Flux only: true classifier-free guidance on ``negative_prompt`` when > 1 and a
            negative prompt is given (as ``FluxPipeline``).
        height, width: image size in pixels (default: the pipeline's default size).
        num_frames: Wan only: frames of the video (default 81, as the pipeline).
        max_sequence_length: T5 tokens of the prompt encoding (default: the pipeline's, 256 / 512).
        stochastic: ``False``: the probability-flow ODE on the pipeline's grid (deterministic; the same run as
            the pipeline with ``DPMSolverPPScheduler``); ``True``: the flow -> SDE chain
            (:func:`search.flow_chain.flow_sde_chain`), what particle methods need.
        interpolant: the stochastic chain's interpolant: ``"vp"`` (default) or ``"linear"``.
        solver: ODE: default ``DPMSolverPP(2)``; SDE: default ``SDEDPMSolverPP(2, eta=eta)``.
        eta: the SDE's stochasticity when ``solver`` is not given (1: the reverse SDE).
        max_batch: at most this many particles per transformer call (CFG doubles the rows of a call), also
            when the calls of several chains are merged.
        vae: the VAE ``decode`` uses instead of ``pipe.vae`` (None: the pipeline's), e.g. a cheap
            ``AutoencoderTiny`` (TAESD / TAEF1) for look-ahead rewards; it must decode the pipeline's
            (unpacked) latents.

    Returns:
        one :class:`~search.chain.SolverChain` per prompt (each charging its own budget) whose ``decode``
        gives (B, 3, height, width) images in [0, 1] (Wan: frames (B, F, 3, H, W)).
    """
    kind = pipeline_kind(pipe)
    prompts = prompt_list(prompts)
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if stochastic and interpolant not in INTERPOLANTS:
        raise ValueError(f"interpolant must be one of {INTERPOLANTS}, got {interpolant!r}")
    device, net_dtype = pipeline_device_dtype(pipe)
    guidance_scale = _DEFAULT_GUIDANCE[kind] if guidance_scale is None else float(guidance_scale)
    max_sequence_length = max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH[kind]
    if kind == "wan":
        height, width = height or _WAN_SIZE[0], width or _WAN_SIZE[1]
    else:
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
    transformer = pipe.transformer
    config = pipe.scheduler.config
    decode_latents = vae_decoder(pipe.vae if vae is None else vae, max_batch)
    mu = None
    time_fn: Callable[[torch.Tensor], torch.Tensor] | None = lambda t: 1000 * t  # noqa: E731
    decode: Callable[[torch.Tensor], torch.Tensor] = decode_latents

    if kind == "wan":
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("Wan 2.2's two-expert denoising (transformer_2) is not supported")
        frames = num_frames or _WAN_SIZE[2]
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        shape = (transformer.config.in_channels, (frames - 1) // temporal + 1, height // spatial,
                 width // spatial)  # fmt: skip
        cfg = guidance_scale > 1

        def encode(prompt: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
            embeds, neg_embeds = pipe.encode_prompt(
                prompt=prompt,
                negative_prompt=negative_prompt,
                do_classifier_free_guidance=cfg,
                max_sequence_length=max_sequence_length,
                device=device,
            )
            return {"encoder_hidden_states": embeds}, ({"encoder_hidden_states": neg_embeds} if cfg else None)

        net = transformer_net(transformer, net_dtype)
        guidance = guidance_scale if cfg else None
    elif kind == "sd3":
        factor = pipe.vae_scale_factor
        shape = (transformer.config.in_channels, int(height) // factor, int(width) // factor)
        if config.get("use_dynamic_shifting", None):
            patch = transformer.config.patch_size
            mu = _calculate_shift((shape[1] // patch) * (shape[2] // patch), config, 1.16)
        cfg = guidance_scale > 1

        def encode(prompt: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
            embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_3=None,
                negative_prompt=negative_prompt,
                do_classifier_free_guidance=cfg,
                device=device,
                max_sequence_length=max_sequence_length,
            )
            cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
            return cond, (
                {"encoder_hidden_states": neg_embeds, "pooled_projections": neg_pooled} if cfg else None
            )

        net = transformer_net(transformer, net_dtype)
        guidance = guidance_scale if cfg else None
    else:
        factor = pipe.vae_scale_factor
        lat_h, lat_w = 2 * (int(height) // (factor * 2)), 2 * (int(width) // (factor * 2))
        channels = transformer.config.in_channels // 4
        shape = ((lat_h // 2) * (lat_w // 2), channels * 4)
        mu = _calculate_shift(shape[0], config, 1.15)
        cfg = true_cfg_scale > 1 and negative_prompt is not None
        text_ids: list[torch.Tensor] = []  # Flux's text position ids: the same for every prompt

        def flux_inputs(text: str) -> dict[str, torch.Tensor]:
            embeds, pooled, ids = pipe.encode_prompt(
                prompt=text, prompt_2=None, device=device, max_sequence_length=max_sequence_length
            )
            if text_ids and not torch.equal(ids, text_ids[0]):
                raise ValueError("the prompts' text position ids differ (encodings of different lengths)")
            text_ids.append(ids)
            inputs = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
            if transformer.config.guidance_embeds:
                inputs["guidance"] = torch.full([1], guidance_scale, device=device, dtype=torch.float32)
            return inputs

        def encode(prompt: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
            return flux_inputs(prompt), (flux_inputs(negative_prompt) if cfg else None)

        net = None  # built once the text ids are known
        guidance = true_cfg_scale if cfg else None
        time_fn = None

        def decode(x0: torch.Tensor) -> torch.Tensor:
            return decode_latents(pipe._unpack_latents(x0, height, width, factor))

    with torch.no_grad():
        encodings = [encode(p) for p in prompts]
    if net is None:  # Flux: constant position ids of the image and text tokens
        img_ids = pipe._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device, text_ids[0].dtype)
        net = transformer_net(
            transformer, net_dtype, timestep_dtype=net_dtype, txt_ids=text_ids[0], img_ids=img_ids
        )

    # the pipeline's grid, through the scheduler façade (the pipeline with this scheduler runs the same one)
    facade = DPMSolverPPScheduler.from_config(config)
    facade.set_timesteps(num_inference_steps, mu=mu)
    schedule = facade.schedule_for(mu)
    if not stochastic:
        solver = solver if solver is not None else DPMSolverPP(2)
        if solver.is_stochastic:
            raise ValueError(f"stochastic=False needs a deterministic solver, got {solver.name} (eta > 0)")

    def make_chain(denoiser: Denoiser, cond: dict[str, torch.Tensor]) -> SolverChain:
        chain_kwargs: dict[str, Any] = dict(
            cond=cond, decode=decode, dtype=particle_dtype(net_dtype), device=device, max_batch=max_batch
        )
        if not stochastic:
            return SolverChain(denoiser, facade.grid, solver, shape, **chain_kwargs)
        return flow_sde_chain(denoiser, shape, num_inference_steps, interpolant=interpolant, source=schedule,
                              solver=solver, eta=eta, grid_kind="uniform_t", **chain_kwargs)  # fmt: skip

    return prompt_chains(
        net, encodings, make_chain, prediction_type="flow", guidance_scale=guidance, max_batch=max_batch,
        time_fn=time_fn,
    )  # fmt: skip


def flow_pipeline_chain(
    pipe: Any, prompt: str, *, budget: Budget | None = None, **kwargs: Any
) -> SolverChain:
    """A search chain generating images (Wan: videos) for one prompt with an SD3, Flux or Wan pipeline: the
    chain of :func:`flow_pipeline_chains` for ``[prompt]`` (see there for the arguments), charging
    ``budget`` (a fresh one by default)."""
    pipeline_kind(pipe)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be one string, got {type(prompt).__name__}")
    chain = flow_pipeline_chains(pipe, [prompt], **kwargs)[0]
    return chain if budget is None else chain.with_budget(budget)
