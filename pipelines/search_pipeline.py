"""``SearchPipeline``: inference-time search inside an ordinary diffusers pipeline call.

``SearchPipeline.from_pipeline(pipe, search="smc", reward=reward)`` wraps a Stable Diffusion / SDXL, SD3 /
Flux, Wan or CogVideoX pipeline, or the bundled digits pipeline. Its ``__call__`` takes the wrapped pipeline's
usual arguments (prompt, ``num_inference_steps``, ``guidance_scale``, ``height``/``width``,
``negative_prompt``, ``generator``, ``output_type``) and returns the pipeline's usual output (``.images``, in
the pipeline's own output conventions) plus the search's metadata: per prompt, the returned sample's reward,
the NFE spent, the method's history and its anytime curve (best reward scored against NFE). With
``search=None`` it *is* the pipeline call (same seed, same pixels).

Video pipelines (Wan, CogVideoX) take ``num_frames`` and return ``.frames`` as they do. Each prompt becomes a
chain through :mod:`pipelines.adapters` (the prompt encoded once, CFG in one batched call, the pipeline's
latent shape and VAE decoding for look-ahead rewards) and the method runs on it
(:func:`search.registry.run_search`): particle and tree methods on the stochastic chain (the SDE solver, or
for flow models the flow -> SDE conversion on the VP interpolant), noise-search methods on the ODE chain. The
prompts of one call are searched side by side (:func:`search.lockstep.run_lockstep`): every network call is
one batched call on the particles of all prompts, and ``max_batch`` bounds the particles per call.

Text: for diffusers' ``LLaDA2Pipeline`` (masked discrete diffusion) the call takes its arguments
(``gen_length``, ``block_length``, ``num_inference_steps``, ``temperature``, ``threshold``) and returns a
:class:`TextSearchOutput` (``sequences``, ``texts`` and the search metadata); the chains are
:func:`pipelines.text.text_chains`, the pipeline's own run token for token.

``lookahead_vae`` (e.g. diffusers' ``AutoencoderTiny``, TAESD) makes the search's decoding cheap: every sample
the method scores (look-aheads and selection) is decoded with it, and only the returned sample of each prompt
is decoded again with the pipeline's own VAE and re-scored (one more reward call per prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from search.chain import SolverChain
from search.lockstep import Exclusive, run_lockstep
from search.registry import SEARCH_METHODS, get_search, run_search
from search.trace import recording

__all__ = ["OUTPUT_TYPES", "SearchPipeline", "SearchPipelineOutput", "TextSearchOutput"]

OUTPUT_TYPES = ("pil", "np", "pt")
#: LLaDA2Pipeline arguments a text search takes (:func:`pipelines.text.text_chains`)
_TEXT_OPTIONS = frozenset({"gen_length", "block_length", "temperature", "threshold", "adaptive_blocks"})
#: methods that search over a chain's initial Gaussian noise (not for text, which starts from all masks)
NOISE_SPACE_METHODS = frozenset({"zero-order", "evo"})
#: further arguments of the pipelines' ``__call__`` that searches take (passed on to the adapters)
_ADAPTER_OPTIONS = {
    "unet": frozenset(),
    "flow": frozenset({"max_sequence_length", "true_cfg_scale"}),
    "cogvideox": frozenset({"max_sequence_length"}),
}


@dataclass
class TextSearchOutput:
    """An ``LLaDA2Pipeline`` output (``sequences``: the generated token ids (B, gen_length), ``texts``:
    decoded up to the first EOS), and per prompt the search's ``scores``, ``nfe``, ``history``, ``curves``."""

    sequences: Any
    texts: list[str] | None = None
    scores: list[float] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    history: list[list[dict[str, Any]]] = field(default_factory=list)
    curves: list[list[list[float]]] = field(default_factory=list)


@dataclass
class SearchPipelineOutput:
    """``images`` as the wrapped pipeline returns them, and per prompt: ``scores`` (reward of the returned
    sample), ``nfe`` (model calls spent, per particle), ``history`` (the method's per-step records) and
    ``curves`` (the anytime curve ``[[nfe, best reward scored so far], ...]`` of :mod:`search.trace`)."""

    images: Any
    scores: list[float] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    history: list[list[dict[str, Any]]] = field(default_factory=list)
    curves: list[list[list[float]]] = field(default_factory=list)

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
        batch_prompts: search the prompts of one call side by side, their particles sharing network calls
            (:func:`search.lockstep.run_lockstep`; True, the default), or one after another (False). Both
            give the same images up to the rounding of batched kernels: each prompt's search draws from its
            own generator either way.
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
        batch_prompts: bool = True,
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
        self.batch_prompts = batch_prompts

    @classmethod
    def from_pipeline(cls, pipe: Any, search: str | None = "smc", reward: Any = None, **kwargs: Any):
        return cls(pipe, search, reward, **kwargs)

    def chains(
        self, prompts: Sequence[str], *, stochastic: bool, vae: Any = ..., **call_kwargs: Any
    ) -> list[SolverChain]:
        """One chain per prompt, built by the adapter for the wrapped pipeline's kind, all sharing one network
        call (see :mod:`pipelines.adapters`); ``vae``: the VAE their ``decode`` uses (default: the
        ``lookahead_vae``, else the pipeline's)."""
        from .adapters import cogvideox_chains, flow_pipeline_chains, pipeline_kind, stable_diffusion_chains
        from .digits import DIGITS_MODEL, DigitsPipeline, digits_chains

        vae = self.lookahead_vae if vae is ... else vae
        kind = _kind(self.pipe)
        if kind == "digits":
            assert isinstance(self.pipe, DigitsPipeline)
            return digits_chains(
                prompts,
                unet=self.pipe.unet,
                steps=call_kwargs["num_inference_steps"],
                guidance_scale=call_kwargs["guidance_scale"],
                solver=_solver(stochastic),
                model=getattr(self.pipe, "name_or_path", None) or DIGITS_MODEL,
                max_batch=self.max_batch,
            )
        kwargs = {k: v for k, v in call_kwargs.items() if v is not None}
        kwargs.update(max_batch=self.max_batch, vae=vae)
        if kind == "unet":
            return stable_diffusion_chains(self.pipe, prompts, solver=_solver(stochastic), **kwargs)
        if kind == "cogvideox":
            return cogvideox_chains(self.pipe, prompts, solver=_solver(stochastic), **kwargs)
        pipeline_kind(self.pipe)  # a TypeError for a pipeline no adapter supports
        return flow_pipeline_chains(self.pipe, prompts, stochastic=stochastic, **kwargs)

    def chain(self, prompt: str, *, stochastic: bool, **call_kwargs: Any) -> SolverChain:
        """The chain of one prompt (:meth:`chains`)."""
        return self.chains([prompt], stochastic=stochastic, **call_kwargs)[0]

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
        if _kind(self.pipe) == "text":
            return self._text_call(prompt, search, particles, max_nfe, generator, num_inference_steps,
                                   output_type, return_dict, pipe_kwargs)  # fmt: skip
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
        passed = _ADAPTER_OPTIONS.get(_kind(self.pipe), frozenset())
        unsupported = sorted(set(pipe_kwargs) - passed)
        if unsupported:
            raise ValueError(f"with search, these pipeline arguments are not supported: {unsupported}")
        call.update(pipe_kwargs)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}")
        method = self._method(search)
        prompts = [prompt] if isinstance(prompt, str | int) else list(prompt)
        generators = _generators(generator, len(prompts))
        if _kind(self.pipe) == "digits":
            call = {
                "num_inference_steps": num_inference_steps or 20,
                "guidance_scale": 2.0 if guidance_scale is None else guidance_scale,
            }
        chains = self.chains([str(p) for p in prompts], stochastic=method.stochastic, **call)
        found = self._search(method.name, chains, [str(p) for p in prompts], generators, particles, max_nfe)
        images, output = [], SearchPipelineOutput(images=None)
        full_decode = None
        if self.lookahead_vae is not None:  # the pipeline's own VAE (the same decode for every prompt)
            full_decode = self.chains([str(prompts[0])], stochastic=method.stochastic, vae=None, **call)[
                0
            ].decode
        for text, (result, curve) in zip(prompts, found, strict=True):
            sample, score = result.samples[:1], result.scores[0]
            if full_decode is not None:  # the returned sample through the pipeline's own VAE, re-scored
                with torch.no_grad():
                    sample = full_decode(result.x[:1].detach())
                    score = self.reward(sample, str(text)).reshape(-1)[0]
            images.append(torch.as_tensor(sample).detach().float().cpu())
            output.scores.append(float(score))
            output.nfe.append(result.nfe)
            output.history.append(result.history)
            output.curves.append(curve)
        output.images = _as_output(self.pipe, torch.cat(images), output_type)
        return output if return_dict else (output.images,)

    def _method(self, search: str):
        if self.reward is None:
            raise ValueError(f"search {search!r} needs a reward")
        return get_search(search)

    def _search(
        self,
        method: str,
        chains: Sequence[Any],
        prompts: Sequence[str],
        generators: Sequence[torch.Generator | None],
        particles: int | None,
        max_nfe: int | None,
    ) -> list[tuple[Any, list[list[float]]]]:
        """(result, anytime curve) of the search on each chain: side by side (sharing model calls) or one
        after another (``batch_prompts``); the reward is called by one search at a time."""
        reward = Exclusive(self.reward)

        def search_one(chain: Any, text: str, g: torch.Generator | None):
            with recording() as trace:
                result = run_search(
                    method, chain, reward, particles=particles, max_nfe=max_nfe, prompts=text, generator=g,
                    **self.search_kwargs,
                )  # fmt: skip
            return result, trace.as_lists()

        tasks = [partial(search_one, c, t, g) for c, t, g in zip(chains, prompts, generators, strict=True)]
        if self.batch_prompts and len(tasks) > 1:
            return run_lockstep(tasks)
        return [task() for task in tasks]

    def _text_call(
        self,
        prompt: str | Sequence[str],
        search: str | None,
        particles: int | None,
        max_nfe: int | None,
        generator: Any,
        num_inference_steps: int | None,
        output_type: str | None,
        return_dict: bool,
        pipe_kwargs: dict[str, Any],
    ):
        """An ``LLaDA2Pipeline`` call: the plain call without search, else one searched continuation per
        prompt (:func:`pipelines.text.text_chains`: each prompt as the pipeline makes it on its own)."""
        output_type = "text" if output_type in (None, "pil") else output_type
        steps = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
        if search is None and "adaptive_blocks" in pipe_kwargs:
            raise ValueError("adaptive_blocks needs a search (LLaDA2Pipeline's block loop is fixed); "
                             "pipelines.text.run_chains samples such chains without one")  # fmt: skip
        if search is None:
            return self.pipe(prompt, generator=generator, output_type=output_type, return_dict=return_dict,
                             **steps, **pipe_kwargs)  # fmt: skip
        from .text import text_chains

        unsupported = sorted(set(pipe_kwargs) - _TEXT_OPTIONS)
        if unsupported:
            raise ValueError(f"with search, these pipeline arguments are not supported: {unsupported}")
        if output_type not in ("text", "seq"):
            raise ValueError(f"output_type must be 'text' or 'seq', not {output_type!r}")
        method = self._method(search)
        if method.name in NOISE_SPACE_METHODS:
            usable = ", ".join(m for m in SEARCH_METHODS if m not in NOISE_SPACE_METHODS)
            raise ValueError(
                f"search {method.name!r} searches over the initial Gaussian noise; text diffusion starts "
                f"from all masks: use one of {usable}"
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        chains = text_chains(self.pipe, prompts, max_batch=self.max_batch, **steps, **pipe_kwargs)
        if not chains[0].stochastic_step(0):
            raise ValueError("text search needs random steps: temperature > 0, or the 'random' policy")
        found = self._search(
            method.name, chains, prompts, _generators(generator, len(prompts)), particles, max_nfe
        )
        output = TextSearchOutput(sequences=None)
        sequences = []
        for chain, (result, curve) in zip(chains, found, strict=True):
            start = chain.layout.prompt_length
            sequences.append(result.x[0, start : start + chain.layout.gen_length].cpu())
            output.scores.append(float(result.scores[0]))
            output.nfe.append(result.nfe)
            output.history.append(result.history)
            output.curves.append(curve)
        output.sequences = torch.stack(sequences)
        if output_type == "text":
            output.texts = [str(result.samples[0]) for result, _ in found]  # decoded by the search
        return output if return_dict else (output.sequences, output.texts)


def _kind(pipe: Any) -> str:
    from .adapters.unet import is_sdxl
    from .digits import DigitsPipeline

    if isinstance(pipe, DigitsPipeline):
        return "digits"
    if type(pipe).__name__ == "LLaDA2Pipeline" or hasattr(pipe, "mask_token_id"):
        return "text"
    if type(pipe).__name__.startswith("CogVideoX"):
        from diffusers import CogVideoXPipeline

        if isinstance(pipe, CogVideoXPipeline):
            return "cogvideox"
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    if is_sdxl(pipe) and getattr(pipe, "transformer", None) is None:  # SD3 / Flux have text_encoder_2 too
        return "unet"
    return "flow"


def _solver(stochastic: bool):
    """What the chains of particle/tree methods (stochastic) and of noise-search methods solve with."""
    from samplers.solvers import DPMSolverPP, SDEDPMSolverPP

    return SDEDPMSolverPP(2) if stochastic else DPMSolverPP(2)


def _generators(generator: Any, n: int) -> list[torch.Generator | None]:
    """One generator per prompt: the given list, or for several prompts and one generator (or None: the
    global RNG) independent generators seeded from it, so that each search draws its own stream whether the
    searches run one after another or side by side."""
    if isinstance(generator, list | tuple):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} prompts")
        return list(generator)
    if n == 1:
        return [generator]
    device = "cpu" if generator is None else generator.device
    seeds = torch.randint(0, 2**63 - 1, (n,), generator=generator, device=device).tolist()
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


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
