"""What every pipeline adapter shares: decoding latents to [0, 1] images for rewards, the pipeline's execution
device and dtype, and the rule for when a network call builds an autograd graph."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from samplers.denoiser import Denoiser
from search.chain import SolverChain
from search.lockstep import RowwiseFunction

__all__ = [
    "graph_if_needed",
    "prompt_chains",
    "prompt_list",
    "rows_per_call",
    "particle_dtype",
    "pipeline_device_dtype",
    "transformer_net",
    "vae_decoder",
]


def pipeline_device_dtype(pipe: Any) -> tuple[torch.device, torch.dtype]:
    """Where and in what dtype the pipeline's denoising network runs."""
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None:
        raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return pipe._execution_device, net.dtype


def prompt_list(prompts: Any) -> list[str]:
    """The prompts of a plural adapter as a non-empty list of strings (a ``TypeError`` for one string, which
    would otherwise be read as a list of characters)."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a sequence of strings, got {prompts!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    return prompts


def prompt_chains(
    net: Callable[..., torch.Tensor],
    encodings: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]],
    make_chain: Callable[[Denoiser, dict[str, torch.Tensor]], SolverChain],
    *,
    prediction_type: str,
    guidance_scale: float | None,
    max_batch: int | None,
    **denoiser_kwargs: Any,
) -> list[SolverChain]:
    """One chain per prompt encoding ``(cond, uncond)``: ``make_chain(denoiser, cond)`` with a
    :class:`~samplers.denoiser.Denoiser` of the prompt's CFG inputs around ONE shared
    :class:`search.lockstep.RowwiseFunction` of ``net`` (so that searches on the chains, run side by side,
    merge their network calls into calls of at most ``max_batch`` particles)."""
    shared = RowwiseFunction(net, rows_per_call(max_batch, guidance_scale is not None))
    return [
        make_chain(
            Denoiser(
                shared, prediction_type, guidance_scale=guidance_scale, uncond=uncond, **denoiser_kwargs
            ),
            cond,
        )
        for cond, uncond in encodings
    ]


def rows_per_call(max_batch: int | None, guided: bool) -> int | None:
    """The network rows of ``max_batch`` particles (twice as many under classifier-free guidance): the bound
    on one merged network call (:class:`search.lockstep.RowwiseFunction`)."""
    return None if max_batch is None else max_batch * (2 if guided else 1)


def particle_dtype(net_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a chain's particles: float32 where the network runs in half precision (the solver's
    arithmetic stays in float32; inputs are cast at the network's boundary), else the network's."""
    return torch.float32 if net_dtype in (torch.float16, torch.bfloat16) else net_dtype


def transformer_net(
    transformer: Any,
    net_dtype: torch.dtype,
    *,
    timestep_dtype: torch.dtype | None = None,
    cast: tuple[str, ...] = (),
    **constants: Any,
) -> Callable[..., torch.Tensor]:
    """``net(x, t, **cond)``: a diffusers transformer on particles x (cast to its dtype) at timestep t, with
    the per-particle conditioning (the keys in ``cast`` cast to the network's dtype too) and the
    ``constants`` (Flux's position ids, CogVideoX's rotary embeddings), back in the particles' dtype."""

    def net(x: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        timestep = t if timestep_dtype is None else t.to(timestep_dtype)
        inputs = {k: v.to(net_dtype) if k in cast else v for k, v in kw.items()}
        with graph_if_needed(x, *kw.values()):
            out = transformer(
                hidden_states=x.to(net_dtype), timestep=timestep, return_dict=False, **constants, **inputs
            )
        return out[0].to(x.dtype)

    return net


def graph_if_needed(*inputs: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Grad mode for a call of a pipeline network on ``inputs``: a graph only when one of them requires
    grad (noise optimisation). Loaded pipelines keep ``requires_grad`` on their parameters, so without this
    every model call and decoded batch of a search would build (and hold) a graph."""
    wanted = any(v is not None and v.requires_grad for v in inputs)
    return torch.set_grad_enabled(torch.is_grad_enabled() and wanted)


def vae_decoder(vae: Any, max_rows: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents -> images in [0, 1], (B, C, H, W), as the pipelines decode them: ``latents * std / scaling +
    mean`` where the VAE config has ``latents_mean``/``latents_std`` (else ``latents / scaling + shift``, the
    shift only where the config has ``shift_factor``, as SD3 and Flux do), then (x + 1) / 2. A float16 VAE
    whose config asks for ``force_upcast`` (SDXL's) decodes in float32, as the SDXL pipeline does. Video
    latents (B, C, F, h, w) decode to frames (B, F, C, H, W), the layout video rewards take (Wan's VAE has
    latent statistics and no scaling factor: z = latents * std + mean). A graph is built only when the
    latents require grad (:func:`graph_if_needed`).

    The decoder is a :class:`search.lockstep.RowwiseFunction`: searches run side by side decode their
    particles in shared VAE calls of at most ``max_rows`` latents, one at a time (some VAEs, e.g. Wan's,
    keep a per-call feature cache on the module and must not decode in two threads at once)."""
    config = vae.config
    scaling = float(getattr(config, "scaling_factor", None) or 1.0)  # video VAEs (Wan) have none
    shift = getattr(config, "shift_factor", None)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    upcast = bool(getattr(config, "force_upcast", False)) and vae.dtype == torch.float16

    def decode(latents: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if upcast else vae.dtype
        with graph_if_needed(latents):
            z = latents
            if mean is not None and std is not None:
                view = (1, -1) + (1,) * (latents.ndim - 2)
                m = torch.tensor(mean, device=z.device, dtype=z.dtype).view(view)
                s = torch.tensor(std, device=z.device, dtype=z.dtype).view(view)
                z = z * s / scaling + m
            else:
                z = z / scaling + (float(shift) if shift is not None else 0.0)
            images = _decode_in(vae, z.to(dtype), dtype)
        if images.ndim == 5:  # a video VAE decodes (B, C, F, H, W); video rewards take (B, F, C, H, W)
            images = images.transpose(1, 2)
        return ((images.float() + 1) / 2).clamp(0, 1)

    return RowwiseFunction(decode, max_rows)


def _decode_in(vae: Any, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``vae.decode(z)`` with the VAE's parameters in ``dtype`` for the call (restored afterwards)."""
    original = vae.dtype
    if dtype != original:
        vae.to(dtype)
    try:
        return vae.decode(z, return_dict=False)[0]
    finally:
        if dtype != original:
            vae.to(original)
