"""``dsample text``: generate text by masked discrete diffusion, optionally with inference-time search.

The model is the bundled tiny masked-diffusion model (``pipelines/assets/text``, list tasks such as
``sort : 3 1 2 =``) unless ``--model`` names another (a hub id or directory; ``--trust-remote-code`` for
LLaDA-style models). It runs in diffusers' ``LLaDA2Pipeline`` with our stateless
:class:`samplers.masked_scheduler.MaskedDiffusionScheduler` (``--policy``: ``low-confidence``, ``random``,
``threshold``, ``entropy``; ``--remask-eta`` for ReMDM; ``--adaptive-blocks`` for AdaBlock's block
sizes, which the pipeline's fixed block loop cannot host, so those samples come from our chain). Sample j of
prompt i draws from its own generator, seeded by (``--seed``, i, j). With ``--search METHOD --reward NAME``
each sample is the result of a search (:class:`pipelines.search_pipeline.SearchPipeline`; all samples
searched side by side, sharing model calls).
Prints one line per sample; ``--out FILE`` also writes one JSON line per sample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .prompts import UsageError

__all__ = ["TextOptions", "bundled_defaults", "run_text"]


@dataclass(frozen=True)
class TextOptions:
    prompts: list[str] | None = None
    prompt_file: str | None = None
    model: str | None = None  # None: the bundled model
    trust_remote_code: bool = False
    policy: str = "low-confidence"
    threshold: float = 0.9
    entropy_bound: float = 0.5
    remask_eta: float = 0.0
    adaptive_blocks: bool = False
    delimiters: Sequence[str] | None = None  # AdaBlock's; None: newline and EOS
    delimiter_threshold: float = 0.3
    gen_length: int | None = None  # None: the bundled model's training length, else 64
    block_length: int | None = None  # None: the bundled model's, else gen_length
    steps: int | None = None  # refinement steps per block; None: one token per step
    temperature: float = 0.0
    seed: int = 0
    num_samples: int = 1
    search: str | None = None
    particles: int = 8
    max_nfe: int | None = None
    reward: str | None = None
    reward_options: Sequence[str] | Mapping[str, Any] | None = field(default=None)
    out: str | None = None
    device: str | None = None
    quiet: bool = False


def bundled_defaults() -> dict[str, Any]:
    """The bundled model's generation length and block length, from its ``training.json``."""
    from .text import TEXT_MODEL

    path = TEXT_MODEL / "training.json"
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    layout = info.get("layout", info)
    return {k: layout[k] for k in ("gen_length", "block_length") if isinstance(layout.get(k), int)}


def _prompts(opts: TextOptions) -> list[str]:
    if opts.prompts and opts.prompt_file:
        raise UsageError("give --prompt or --prompt-file, not both")
    if opts.prompt_file:
        try:
            lines = Path(opts.prompt_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read --prompt-file {opts.prompt_file!r}: {error}") from None
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise UsageError(f"--prompt-file {opts.prompt_file!r} has no prompts")
        return prompts
    if opts.prompts:
        return list(opts.prompts)
    if opts.model is None:  # the bundled model's default: one example of each task
        from rewards.list_tasks import TASKS, random_example

        g = torch.Generator().manual_seed(opts.seed)
        return [random_example(g, task)[0] for task in TASKS]
    raise UsageError("give --prompt or --prompt-file")


def _check(opts: TextOptions) -> None:
    positive = {"--num-samples": opts.num_samples, "--particles": opts.particles}
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    for flag, value in {"--gen-length": opts.gen_length, "--block-length": opts.block_length,
                        "--steps": opts.steps, "--max-nfe": opts.max_nfe}.items():  # fmt: skip
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if opts.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {opts.temperature}")
    if not opts.adaptive_blocks and opts.delimiters:
        raise UsageError("--delimiter needs --adaptive-blocks")
    if opts.adaptive_blocks and opts.remask_eta > 0:
        raise UsageError("--remask-eta follows a fixed block schedule; it does not go with --adaptive-blocks")
    if opts.search is None and (opts.reward is not None or opts.max_nfe is not None):
        raise UsageError("--reward and --max-nfe need --search")
    if opts.search is not None and opts.reward is None:
        raise UsageError(f"--search {opts.search} needs --reward (see `dsample rewards`, or module:Class)")


def run_text(opts: TextOptions) -> list[dict[str, Any]]:
    """Generate (and search); returns one record per sample. ``UsageError`` on bad input, before any work."""
    from search.registry import SEARCH_METHODS, get_search

    from .generate import image_seed
    from .score import ScoreOptions, build_reward, parse_option
    from .search_pipeline import NOISE_SPACE_METHODS, SearchPipeline
    from .text import adablock_for, load_text_pipeline, run_chains, text_chains

    _check(opts)
    prompts = _prompts(opts)
    reward = None
    if opts.search is not None:  # bad search settings fail before the model loads
        try:
            method = get_search(opts.search).name
        except ValueError as error:
            raise UsageError(str(error)) from None
        if method in NOISE_SPACE_METHODS:
            usable = ", ".join(m for m in SEARCH_METHODS if m not in NOISE_SPACE_METHODS)
            raise UsageError(f"--search {method} searches over initial Gaussian noise; for text use {usable}")
        if opts.temperature == 0 and opts.policy != "random" and opts.remask_eta == 0:
            raise UsageError(
                "text search needs random steps: --temperature > 0, --policy random or --remask-eta"
            )
        reward_options = opts.reward_options or {}
        if not isinstance(reward_options, Mapping):
            reward_options = dict(parse_option(text) for text in reward_options)
        options = ScoreOptions(run="", reward=opts.reward, options=reward_options, device=opts.device)
        reward = build_reward(options, "text")[1]
    if opts.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    defaults = bundled_defaults() if opts.model is None else {}
    gen_length = opts.gen_length or defaults.get("gen_length", 64)
    block_length = opts.block_length or defaults.get("block_length", gen_length)
    steps = opts.steps or block_length
    try:
        pipe = load_text_pipeline(opts.model, policy=opts.policy, device=opts.device,
                                  trust_remote_code=opts.trust_remote_code, threshold=opts.threshold,
                                  entropy_bound=opts.entropy_bound, remask_eta=opts.remask_eta)  # fmt: skip
    except (OSError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load model {opts.model or 'bundled'!r}: {message}") from None
    jobs = [(i, j, p) for i, p in enumerate(prompts) for j in range(opts.num_samples)]
    generators = [torch.Generator().manual_seed(image_seed(opts.seed, i, j)) for i, j, _ in jobs]
    call = {"gen_length": gen_length, "block_length": block_length, "num_inference_steps": steps,
            "temperature": opts.temperature}  # fmt: skip
    if opts.adaptive_blocks:
        try:
            call["adaptive_blocks"] = adablock_for(pipe.tokenizer, opts.delimiters, opts.delimiter_threshold)
        except ValueError as error:
            raise UsageError(str(error)) from None
    records = []
    if opts.search is None and opts.adaptive_blocks:
        chains = text_chains(pipe, [p for _, _, p in jobs], **call)
        for (i, j, prompt), text in zip(jobs, run_chains(chains, generators), strict=True):
            records.append({"prompt_index": i, "sample_index": j, "prompt": prompt, "text": text})
    elif opts.search is None:
        for (i, j, prompt), g in zip(jobs, generators, strict=True):
            out = pipe(prompt, generator=g, editing_threshold=None, **call)
            records.append({"prompt_index": i, "sample_index": j, "prompt": prompt, "text": out.texts[0]})
    else:
        searcher = SearchPipeline.from_pipeline(pipe, opts.search, reward, particles=opts.particles,
                                                max_nfe=opts.max_nfe)  # fmt: skip
        try:
            out = searcher([p for _, _, p in jobs], generator=generators, **call)
        except ValueError as error:  # e.g. a method that needs noise, or a deterministic chain
            raise UsageError(str(error)) from None
        for k, (i, j, prompt) in enumerate(jobs):
            records.append({"prompt_index": i, "sample_index": j, "prompt": prompt, "text": out.texts[k],
                            "reward": out.scores[k], "nfe": out.nfe[k], "curve": out.curves[k]})  # fmt: skip
    ada = call.get("adaptive_blocks")
    settings = {"model": opts.model or "bundled", "policy": opts.policy, "gen_length": gen_length,
                "block_length": block_length, "steps": steps, "temperature": opts.temperature,
                "seed": opts.seed, "search": opts.search, "adaptive_blocks": opts.adaptive_blocks,
                "delimiters": pipe.tokenizer.convert_ids_to_tokens(list(ada.delimiter_ids)) if ada else None,
                "delimiter_threshold": opts.delimiter_threshold if opts.adaptive_blocks else None,
                "particles": opts.particles if opts.search else None, "reward_name": opts.reward}  # fmt: skip
    for record in records:
        record["settings"] = settings
    if opts.out:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    return records
