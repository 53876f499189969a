"""``SearchPipeline``: inference-time search inside an ordinary diffusers pipeline call.

``SearchPipeline.from_pipeline(pipe, search="smc", reward=reward)`` wraps a Stable Diffusion / SDXL, SD3 /
Flux or the bundled digits pipeline. Its ``__call__`` takes the wrapped pipeline's usual arguments (prompt,
``num_inference_steps``, ``guidance_scale``, ``height``/``width``, ``negative_prompt``, ``generator``,
``output_type``) and returns the pipeline's usual output (``.images``, in the pipeline's own output
conventions) plus the search's metadata: per prompt, the returned sample's reward, the NFE spent and the
method's history. With ``search=None`` it *is* the pipeline call (same seed, same pixels).

Video pipelines (Wan) take ``num_frames`` and return ``.frames`` as they do. Each prompt becomes a chain
through :mod:`pipelines.adapters` (the prompt encoded once, CFG in one batched
call, the pipeline's latent shape and VAE decoding for look-ahead rewards) and the method runs on it
(:func:`search.registry.run_search`): particle and tree methods on the stochastic chain (the SDE solver, or
for flow models the flow -> SDE conversion on the VP interpolant), noise-search methods on the ODE chain.
Prompts are searched one after another; ``max_batch`` bounds the particles per network call.

``lookahead_vae`` (e.g. diffusers' ``AutoencoderTiny``, TAESD) makes the search's decoding cheap: every
sample the method scores (look-aheads and selection) is decoded with it, and only the returned sample of each
prompt is decoded again with the pipeline's own VAE and re-scored (one more reward call per prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from search.chain import SolverChain
from search.registry import get_search, run_search

__all__ = ["OUTPUT_TYPES", "SearchPipeline", "SearchPipelineOutput"]

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class SearchPipelineOutput:
    """``images`` as the wrapped pipeline returns them, and per prompt: ``scores`` (reward of the returned
    sample), ``nfe`` (model calls spent, per particle) and ``history`` (the method's per-step records)."""

    images: Any
    scores: list[float] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    history: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def frames(self) -> Any:
        """Video pipelines' name for the output (``.frames``, as their own outputs have it)."""
        return self.images


class SearchPipeline:
    """A diffusers pipeline whose calls search (see the module docstring).

    Args:
        pipe: the wrapped pipeline.
        search: a method name of :data:`search.registry.SEARCH_METHODS` (``bon``, ``zero-order``, ``paths``,
            ``beam``, ``smc``, ``dts``, ``evo``, ``rbf``), or None for plain generation.
        reward: what the search maximises (a :class:`rewards.Reward`; it gets the prompt).
        particles: the method's size (trajectories, particles, beams, population; for DTS*, RBF and
            zero-order search the budget of that many trajectories).
        max_nfe: a hard NFE budget per prompt instead of (or with) ``particles``.
        search_kwargs: further keyword arguments of the method (e.g. ``temperature``).
        max_batch: at most this many particles per network call.
        lookahead_vae: a cheap VAE that decodes the pipeline's latents (e.g. ``AutoencoderTiny``: TAESD for
            SD / SDXL / SD3, TAEF1 for Flux), or None. When given, the search scores the samples it decodes
            (look-aheads, selection) through it, and the returned sample of each prompt is decoded with the
            pipeline's own VAE and re-scored by ``reward`` (one extra reward call per prompt): ``images`` and
            ``scores`` describe that full-quality decode, ``nfe`` and ``history`` are the search's (the
            history's rewards are the cheap decodes'). Not for the digits pipeline (it has no VAE).
    """

    def __init__(
        self,
        pipe: Any,
        search: str | None = "smc",
        reward: Any = None,
        *,
        particles: int | None = 8,
        max_nfe: int | None = None,
        search_kwargs: dict[str, Any] | None = None,
        max_batch: int | None = None,
        lookahead_vae: Any = None,
    ):
        if lookahead_vae is not None and _kind(pipe) == "digits":
            raise ValueError("lookahead_vae: the digits pipeline has no VAE")
        if search is not None:
            get_search(search)  # unknown names fail here, before any work
            if reward is None:
                raise ValueError(f"search {search!r} needs a reward")
        self.pipe, self.search, self.reward = pipe, search, reward
        self.particles, self.max_nfe, self.max_batch = particles, max_nfe, max_batch
        self.search_kwargs = dict(search_kwargs or {})
        self.lookahead_vae = lookahead_vae

    @classmethod
    def from_pipeline(cls, pipe: Any, search: str | None = "smc", reward: Any = None, **kwargs: Any):
        return cls(pipe, search, reward, **kwargs)

    def chain(self, prompt: str, *, stochastic: bool, **call_kwargs: Any) -> SolverChain:
        """The chain of one prompt, built by the adapter for the wrapped pipeline's kind."""
        from .adapters import flow_pipeline_chain, pipeline_kind, stable_diffusion_chain

        batch = self.max_batch
        from .digits import DIGITS_MODEL, DigitsPipeline, digits_chain

        kind = _kind(self.pipe)
        if kind == "digits":
            assert isinstance(self.pipe, DigitsPipeline)
            return digits_chain(
                prompt,
                unet=self.pipe.unet,
                steps=call_kwargs["num_inference_steps"],
                guidance_scale=call_kwargs["guidance_scale"],
                solver=_solver(stochastic),
                model=getattr(self.pipe, "name_or_path", None) or DIGITS_MODEL,
            )
        kwargs = {k: v for k, v in call_kwargs.items() if v is not None}
        if kind == "unet":
            solver = _solver(stochastic)
            return stable_diffusion_chain(
                self.pipe, prompt, solver=solver, max_batch=batch, vae=self.lookahead_vae, **kwargs
            )
        pipeline_kind(self.pipe)  # a TypeError for a pipeline no adapter supports
        return flow_pipeline_chain(
            self.pipe, prompt, stochastic=stochastic, max_batch=batch, vae=self.lookahead_vae, **kwargs
        )

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        search: str | None | type[Ellipsis] = ...,
        particles: int | None | type[Ellipsis] = ...,
        max_nfe: int | None | type[Ellipsis] = ...,
        **pipe_kwargs: Any,
    ):
        """Generate one image per prompt, searching with the configured method (or the ones given here)."""
        search = self.search if search is ... else search
        particles = self.particles if particles is ... else particles
        max_nfe = self.max_nfe if max_nfe is ... else max_nfe
        call = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "negative_prompt": negative_prompt,
            "height": height,
            "width": width,
            "num_frames": num_frames,
        }
        if search is None:
            plain = {k: v for k, v in call.items() if v is not None}
            return self.pipe(
                prompt,
                generator=generator,
                output_type=output_type,
                return_dict=return_dict,
                **plain,
                **pipe_kwargs,
            )
        if pipe_kwargs:
            unsupported = sorted(pipe_kwargs)
            raise ValueError(f"with search, these pipeline arguments are not supported: {unsupported}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}")
        if self.reward is None:
            raise ValueError(f"search {search!r} needs a reward")
        method = get_search(search)
        prompts = [prompt] if isinstance(prompt, str | int) else list(prompt)
        generators = _generators(generator, len(prompts))
        if _kind(self.pipe) == "digits":
            call = {
                "num_inference_steps": num_inference_steps or 20,
                "guidance_scale": 2.0 if guidance_scale is None else guidance_scale,
            }
        images, output = [], SearchPipelineOutput(images=None)
        full_decode = None if self.lookahead_vae is None else _full_decoder(self.pipe, call)
        for text, g in zip(prompts, generators, strict=True):
            chain = self.chain(str(text), stochastic=method.stochastic, **call)
            result = run_search(
                method.name,
                chain,
                self.reward,
                particles=particles,
                max_nfe=max_nfe,
                prompts=str(text),
                generator=g,
                **self.search_kwargs,
            )
            sample, score = result.samples[:1], result.scores[0]
            if full_decode is not None:  # the returned sample through the pipeline's own VAE, re-scored
                with torch.no_grad():
                    sample = full_decode(result.x[:1].detach())
                    score = self.reward(sample, str(text)).reshape(-1)[0]
            images.append(torch.as_tensor(sample).detach().float().cpu())
            output.scores.append(float(score))
            output.nfe.append(result.nfe)
            output.history.append(result.history)
        output.images = _as_output(self.pipe, torch.cat(images), output_type)
        return output if return_dict else (output.images,)


def _kind(pipe: Any) -> str:
    from .adapters.unet import is_sdxl
    from .digits import DigitsPipeline

    if isinstance(pipe, DigitsPipeline):
        return "digits"
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    if is_sdxl(pipe) and getattr(pipe, "transformer", None) is None:  # SD3 / Flux have text_encoder_2 too
        return "unet"
    return "flow"


def _full_decoder(pipe: Any, call: dict[str, Any]):
    """Final latents -> [0, 1] images through the pipeline's own VAE, as the adapters' ``decode`` with
    ``vae=None`` (Flux's packed latents are unpacked first, at the chain's height and width)."""
    from .adapters import pipeline_kind
    from .adapters.common import vae_decoder

    decode = vae_decoder(pipe.vae)
    if _kind(pipe) != "flow" or pipeline_kind(pipe) != "flux":
        return decode
    factor = pipe.vae_scale_factor
    height = call.get("height") or pipe.default_sample_size * factor
    width = call.get("width") or pipe.default_sample_size * factor
    return lambda x0: decode(pipe._unpack_latents(x0, height, width, factor))


def _solver(stochastic: bool):
    """What the chains of particle/tree methods (stochastic) and of noise-search methods solve with."""
    from samplers.solvers import DPMSolverPP, SDEDPMSolverPP

    return SDEDPMSolverPP(2) if stochastic else DPMSolverPP(2)


def _generators(generator: Any, n: int) -> list[torch.Generator | None]:
    if isinstance(generator, list | tuple):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} prompts")
        return list(generator)
    return [generator] * n


def _as_output(pipe: Any, images: torch.Tensor, output_type: str) -> Any:
    """[0, 1] images (B, C, H, W) in the wrapped pipeline's output conventions."""
    from .digits import DigitsPipeline, to_uint8

    if isinstance(pipe, DigitsPipeline):  # pt: [-1, 1]; np: uint8 (B, H, W, C); pil: grayscale
        if output_type == "pt":
            return images * 2 - 1
        pixels = to_uint8(images * 2 - 1)
        return pixels if output_type == "np" else [Image.fromarray(p[..., 0]) for p in pixels]
    if images.ndim == 5:  # video frames (B, F, C, H, W) in [0, 1]: as the video pipeline post-processes
        return pipe.video_processor.postprocess_video(images.transpose(1, 2) * 2 - 1, output_type=output_type)
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
    return array if output_type == "np" else pipe.image_processor.numpy_to_pil(array)
