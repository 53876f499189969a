"""Discrete text diffusion in diffusers' ``LLaDA2Pipeline``: loading models, chains per prompt, search.

* :func:`load_text_pipeline` -- an ``LLaDA2Pipeline`` over any masked-diffusion language model by hub id or
  local directory (``AutoModelForMaskedLM``: MDLM, BERT-style masked LMs, the bundled tiny model; with
  ``trust_remote_code=True``, LLaDA / LLaDA2 through ``AutoModelForCausalLM``), with our stateless
  :class:`samplers.masked_scheduler.MaskedDiffusionScheduler` as its scheduler. The default is the bundled
  model (``pipelines/assets/text``), trained by ``scripts/train_tiny_text.py``.
* :func:`text_chains` -- one :class:`search.masked_chain.MaskedDiffusionChain` per prompt, with the
  pipeline's model, tokenizer and scheduler settings and its window context, so that a chain's run is the
  pipeline's run token for token; the chains share one model call (:class:`search.lockstep.RowwiseFunction`),
  so searches on several prompts run side by side batch their particles. With ``adaptive_blocks``
  (:class:`samplers.masked.AdaBlock`, built by :func:`adablock_for`) the chains size their blocks as they
  go, in full context -- something ``LLaDA2Pipeline``'s fixed block loop cannot host, so such chains are
  run directly (:func:`run_chains`) or searched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from samplers.masked import AdaBlock, ConfidenceThreshold, ReMDM, UnmaskingPolicy, make_policy
from search.chain import advance
from search.lockstep import RowwiseFunction
from search.masked_chain import MaskedDiffusionChain

__all__ = [
    "TEXT_MODEL",
    "adablock_for",
    "load_text_pipeline",
    "run_chains",
    "scheduler_policy",
    "text_chains",
]

TEXT_MODEL = Path(__file__).resolve().parent / "assets" / "text"


def load_text_pipeline(
    model: str | Path | None = None,
    *,
    policy: str = "low-confidence",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    **scheduler_options: Any,
):
    """``LLaDA2Pipeline(model, MaskedDiffusionScheduler(policy=...), tokenizer)`` for a masked-diffusion LM
    (default: the bundled tiny model). ``scheduler_options`` go to the scheduler (``threshold``,
    ``entropy_bound``, ``remask_eta``, ...). Raises ``ValueError`` for a tokenizer without a mask token."""
    import transformers
    from diffusers import LLaDA2Pipeline
    from transformers import AutoTokenizer

    from samplers.masked_scheduler import MaskedDiffusionScheduler

    path = str(model or TEXT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no mask token; masked diffusion needs one")
    loader = getattr(transformers, _remote_auto_class(path) if trust_remote_code else "AutoModelForMaskedLM")
    network = loader.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
    scheduler = MaskedDiffusionScheduler(policy=policy, **scheduler_options)
    pipe = LLaDA2Pipeline(model=network, scheduler=scheduler, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


#: Auto classes a remote-code model may register its model under, in the order they are preferred
_REMOTE_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModel")


def _remote_auto_class(path: str) -> str:
    """The auto class to load a remote-code model with: the first of :data:`_REMOTE_AUTO_CLASSES` its
    ``auto_map`` names (LLaDA, LLaDA2: ``AutoModelForCausalLM``; some diffusion LMs only ``AutoModel``) --
    each auto class loads only what its own ``auto_map`` key names."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return "AutoModelForCausalLM"  # a hub id with remote code: LLaDA-style models load as causal LMs
    auto_map = json.loads(config.read_text()).get("auto_map", {})
    return next((name for name in _REMOTE_AUTO_CLASSES if name in auto_map), "AutoModelForMaskedLM")


def scheduler_policy(scheduler: Any, threshold: float | None = None) -> tuple[UnmaskingPolicy, ReMDM | None]:
    """The unmasking policy and remasking a pipeline's scheduler applies: ours' configured ones; for
    diffusers' ``BlockRefinementScheduler``, its threshold rule (``ConfidenceThreshold``)."""
    from samplers.masked_scheduler import MaskedDiffusionScheduler

    if isinstance(scheduler, MaskedDiffusionScheduler):
        return scheduler.policy(threshold), scheduler.remasking
    return ConfidenceThreshold(
        float(threshold if threshold is not None else scheduler.config.threshold)
    ), None


def text_chains(
    pipe: Any,
    prompts: Sequence[str],
    *,
    gen_length: int = 64,
    block_length: int | None = None,
    num_inference_steps: int = 32,
    temperature: float = 0.0,
    threshold: float | None = None,
    policy: str | UnmaskingPolicy | None = None,
    remasking: ReMDM | None | type[Ellipsis] = ...,
    lookahead: str = "argmax",
    max_batch: int | None = None,
    adaptive_blocks: AdaBlock | None = None,
) -> list[MaskedDiffusionChain]:
    """One chain per prompt for an ``LLaDA2Pipeline``: its model, tokenizer (prompts encoded as the pipeline
    does without a chat template), mask and EOS tokens, its scheduler's policy (or ``policy``), block length
    (``block_length`` or the scheduler's), ``num_inference_steps`` per block and ``temperature``, in the
    pipeline's window context (full context with ``adaptive_blocks``); the chains share one model call
    (merged when searched side by side)."""
    tokenizer = pipe.tokenizer
    block_length = block_length or pipe.scheduler.config.block_length
    steps = min(num_inference_steps, gen_length)  # the pipeline's cap (gen_length // minimal_topk, topk 1)
    chosen, configured = scheduler_policy(pipe.scheduler, threshold)
    if policy is not None:
        chosen = make_policy(policy)
    remasking = configured if remasking is ... else remasking
    model = pipe.model
    device = pipe._execution_device

    def logits(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    shared = RowwiseFunction(logits, max_batch)

    def decode(ids: list[torch.Tensor]) -> list[str]:
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    return [
        MaskedDiffusionChain(
            shared,
            tokenizer(prompt)["input_ids"],
            gen_length=gen_length,
            mask_token_id=tokenizer.mask_token_id,
            eos_token_id=tokenizer.eos_token_id,
            block_length=block_length,
            steps_per_block=steps,
            policy=chosen,
            temperature=temperature,
            remasking=remasking,
            context="window" if adaptive_blocks is None else "full",
            adaptive_blocks=adaptive_blocks,
            lookahead=lookahead,
            decode_fn=decode,
            max_batch=max_batch,
            device=device,
        )
        for prompt in prompts
    ]


def adablock_for(tokenizer: Any, delimiters: Sequence[str] | None = None, threshold: float = 0.3) -> AdaBlock:
    """AdaBlock with the tokenizer's ids of ``delimiters`` (tokens; default: a newline where the vocabulary
    has one as a single token -- the paper's choice -- and the EOS token). ``ValueError`` for a delimiter
    that is not a single token."""
    if delimiters is None:
        newline = tokenizer.encode("\n", add_special_tokens=False)
        ids = ([newline[0]] if len(newline) == 1 and newline[0] != tokenizer.unk_token_id else []) + (
            [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        )
    else:
        ids = []
        for token in delimiters:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"delimiter {token!r} is not a token of the vocabulary")
            ids.append(token_id)
    if not ids:
        raise ValueError("no delimiter token: give some (e.g. a newline or the EOS token)")
    return AdaBlock(tuple(ids), threshold=threshold)


def run_chains(chains: Sequence[MaskedDiffusionChain], generators: Sequence[torch.Generator]) -> list[str]:
    """Each chain run once from its prior with its own generator (no search): the decoded texts."""
    texts = []
    for chain, generator in zip(chains, generators, strict=True):
        texts.extend(chain.decode(advance(chain, chain.prior(1), generator=generator).x))
    return texts
