"""Masked discrete diffusion (text) as a denoising chain, so every search method runs on it.

:class:`MaskedDiffusionChain` wraps any model that maps token ids (with a mask token) to logits at every
position -- a ``transformers`` masked LM (MDLM, BERT-style, LLaDA via ``trust_remote_code``) or a project
model -- into the :class:`search.chain.Chain` interface:

* the state is the token ids (B, total_length) in a :class:`~samplers.state.SolverState` (``x``), so
  particles are indexed, resampled and merged like any other chain's; the step index is the run's step;
* ``prior(n)``: n copies of ``prompt + [mask] * gen_length`` (padded with masks to whole blocks);
* ``step``: one model call and one :func:`samplers.masked.commit_block` on the active block (semi-
  autoregressive blocks, ``steps_per_block`` steps each); a step whose block has no masks left makes no call;
  rows that finished (an EOS with every generated position before it filled; ``eos_stop``) commit nothing;
* ``predict``: the look-ahead x̂0 -- every still-masked position filled with the model's argmax (``lookahead=
  "argmax"``) or a draw from it (``"sample"``, from a generator seeded by the state itself, so it is
  reproducible); the model call is cached and reused by the next ``step``;
* ``decode``: the generated token ids of each row, cut at the first EOS, through ``decode_fn`` (e.g. the
  tokenizer's ``batch_decode``).

``context="full"`` gives the model the whole sequence (LLaDA 1, MDLM); ``"window"`` only the prefix up to
the end of the active block, with absolute position ids (LLaDA2's block diffusion, as diffusers'
``LLaDA2Pipeline`` does). With ``context="window"`` and
:class:`samplers.masked_scheduler.MaskedDiffusionScheduler` in the pipeline, the chain makes exactly the
pipeline's tokens for the same generator.

Adaptive blocks (``adaptive_blocks=AdaBlock(...)``, full context): each row's block is sized when it starts,
from that step's model call (:class:`samplers.masked.AdaBlock`), and its end is kept per row in the state
(``cond["block_end"]``, counted within the generation region), so particles carry their own blocks. A
step commits ceil(m / k) of the block's m masks (k = ceil(block_length / steps_per_block) tokens per step),
plus what the policy adds (the threshold policy: every confident one, AdaBlock's pairing). The run has
``gen_length`` steps, an upper bound: once every row is done the remaining steps make no call.

NFE: one per row per model call (a call on B particles costs B), charged to the chain's budget.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from samplers.denoiser import DenoiserOutput
from samplers.masked import (
    AdaBlock,
    BlockLayout,
    ReMDM,
    UnmaskingPolicy,
    commit_block,
    make_policy,
    sample_candidates,
)
from samplers.state import SolverState

from .budget import Budget
from .chain import ChainState

__all__ = ["LogitsFn", "MaskedDiffusionChain"]

#: ``logits_fn(input_ids, attention_mask, position_ids) -> logits`` (B, L, V).
LogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MaskedDiffusionChain:
    """Masked diffusion over a prompt's continuation as a search chain (see the module docstring).

    Args:
        logits_fn: the model, ``logits_fn(input_ids, attention_mask, position_ids) -> logits`` (B, L, V).
        prompt_ids: the prompt's token ids (1-D); kept fixed (never masked).
        gen_length: generated positions.
        mask_token_id, eos_token_id: the mask token; the end-of-sequence token (None: no EOS handling).
        block_length: semi-autoregressive block size (default: one block covering prompt and generation).
        steps_per_block: model calls per block (default: ``block_length``, one token per call).
        policy: an :class:`~samplers.masked.UnmaskingPolicy` or its name (``policy_options`` its parameters).
        temperature: sampling temperature of the candidates (0: argmax).
        remasking: ReMDM remasking of decoded tokens (:class:`~samplers.masked.ReMDM`), or None.
        context: ``"full"`` or ``"window"`` (see the module docstring).
        lookahead: ``"argmax"`` or ``"sample"`` fill of the masked positions for ``predict``.
        eos_stop: freeze rows once they have an EOS with every generated position before it filled.
        decode_fn: generated ids (list of 1-D tensors, cut at EOS) -> what rewards score (default: the ids).
        budget: where NFE are charged; max_batch: at most this many rows per model call.
        adaptive_blocks: AdaBlock's adaptive block sizes (``block_length`` is then the default size); needs
            ``context="full"`` and no remasking.
    """

    def __init__(
        self,
        logits_fn: LogitsFn,
        prompt_ids: torch.Tensor | Sequence[int],
        *,
        gen_length: int,
        mask_token_id: int,
        eos_token_id: int | None = None,
        block_length: int | None = None,
        steps_per_block: int | None = None,
        policy: str | UnmaskingPolicy = "low-confidence",
        policy_options: dict[str, float] | None = None,
        temperature: float = 0.0,
        remasking: ReMDM | None = None,
        context: Literal["full", "window"] = "full",
        lookahead: Literal["argmax", "sample"] = "argmax",
        eos_stop: bool = True,
        decode_fn: Callable[[list[torch.Tensor]], Any] | None = None,
        budget: Budget | None = None,
        max_batch: int | None = None,
        device: str | torch.device = "cpu",
        adaptive_blocks: AdaBlock | None = None,
    ):
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
        if context not in ("full", "window"):
            raise ValueError(f"context must be 'full' or 'window', got {context!r}")
        if lookahead not in ("argmax", "sample"):
            raise ValueError(f"lookahead must be 'argmax' or 'sample', got {lookahead!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
        if adaptive_blocks is not None and context != "full":
            raise ValueError("adaptive blocks need context='full' (rows' blocks differ, so do their windows)")
        if adaptive_blocks is not None and remasking is not None:
            raise ValueError("ReMDM remasking follows a fixed block schedule; it does not go with AdaBlock")
        block_length = block_length or (prompt.numel() + gen_length)
        self.layout = BlockLayout(prompt.numel(), gen_length, block_length, steps_per_block or block_length)
        self.adaptive_blocks = adaptive_blocks
        self.tokens_per_step = -(-block_length // self.layout.steps_per_block)
        self.logits_fn = logits_fn
        self.device = torch.device(device)
        self.prompt_ids = prompt.to(self.device)
        self.mask_token_id, self.eos_token_id = int(mask_token_id), eos_token_id
        self.policy = make_policy(policy, **(policy_options or {}))
        self.temperature, self.context, self.lookahead = float(temperature), context, lookahead
        self.remasking = remasking
        self.eos_stop = eos_stop and eos_token_id is not None
        self.decode_fn = decode_fn
        self.budget = budget if budget is not None else Budget()
        self.max_batch = max_batch
        self.steps = self.layout.steps if adaptive_blocks is None else gen_length

    # ------------------------------------------------------------------------------------------ protocol
    def trajectory_nfe(self) -> int:
        return self.steps

    def segment_nfe(self, first: int, stop: int) -> int:
        return max(stop - first, 0)

    def stochastic_step(self, i: int) -> bool:
        """Whether step i draws random numbers (two children of a particle can differ)."""
        return self.temperature > 0 or self.policy.stochastic or self.remasking is not None

    def with_budget(self, budget: Budget) -> MaskedDiffusionChain:
        chain = copy.copy(self)
        chain.budget = budget
        return chain

    def prior(self, n: int, generator: torch.Generator | None = None) -> ChainState:
        """n rows of ``prompt + masks`` at step 0 (deterministic: the generator is not used)."""
        if n < 1:
            raise ValueError(f"need at least one particle, got {n}")
        tokens = torch.full(
            (n, self.layout.total_length), self.mask_token_id, dtype=torch.long, device=self.device
        )
        tokens[:, : self.layout.prompt_length] = self.prompt_ids
        cond = {}
        if self.adaptive_blocks is not None:  # no block yet: the first step sizes one
            cond = {"block_end": torch.zeros(n, dtype=torch.long, device=self.device)}
        return ChainState(SolverState(x=tokens, step=0, cond=cond))

    def predict(self, state: ChainState) -> tuple[ChainState, torch.Tensor]:
        """(state with the model call cached, look-ahead tokens: the masked positions it sees, filled)."""
        if state.step >= self.steps:
            return state, state.x
        if state.cached is None:
            if self._view_decoded(state.x, state.step, self._frozen(state.x)):
                return state, state.x  # no generated position left to fill in the model's view: no call
            logits = self._logits(state.x, self._window(state.step))
            fill = self._fill(state.x, logits, state.step)
            state = ChainState(state.solver, DenoiserOutput(x0=fill, eps=logits))
        return state, state.cached.x0

    def step(self, state: ChainState, generator: torch.Generator | None = None) -> ChainState:
        i = state.step
        if i >= self.steps:
            raise ValueError(f"the chain has {self.steps} steps; the state is already at the end")
        block, within = self.layout.block_of_step(i)
        tokens = state.x
        frozen = self._frozen(tokens)
        if self._idle(tokens, i, frozen):  # the block is done (or every row finished): no model call
            # the model's output on unchanged tokens stays valid where its view does not change
            carried = state.cached if self.context == "full" else None
            return ChainState(SolverState(x=tokens, step=i + 1, cond=state.solver.cond), carried)
        logits = state.cached.eps if state.cached is not None else self._logits(tokens, self._window(i))
        if self.adaptive_blocks is not None:
            return self._adaptive_step(state, logits, frozen, generator)
        span = self.layout.block_slice(block)
        new_block, _, _, _ = commit_block(
            logits[:, span],
            tokens[:, span],
            mask_token_id=self.mask_token_id,
            policy=self.policy,
            steps_left=self.layout.steps_per_block - within,
            temperature=self.temperature,
            generator=generator,
            frozen=frozen,
            remasking=self.remasking,
            steps=self.layout.steps_per_block,
            editable=self._generated_positions(tokens.device)[span],
        )
        tokens = tokens.clone()
        tokens[:, span] = new_block
        return ChainState(SolverState(x=tokens, step=i + 1))

    def _adaptive_step(
        self,
        state: ChainState,
        logits: torch.Tensor,
        frozen: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> ChainState:
        """One step with AdaBlock's blocks: rows whose block is done size a new one from this call's
        candidates, then every row commits within its block."""
        span = self._generation_slice()
        region = state.x[:, span]
        start = self._first_masked(region)
        end = state.solver.cond["block_end"]
        new_end = end.clone()
        positions = torch.arange(region.shape[1], device=region.device)

        def restrict(candidates: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
            sized = self.adaptive_blocks.block_end(candidates, confidence, start, self.layout.block_length)
            new_end.copy_(torch.where(start >= end, sized, end))
            return (positions >= start.unsqueeze(-1)) & (positions < new_end.unsqueeze(-1))

        new_region, _, _, _ = commit_block(
            logits[:, span],
            region,
            mask_token_id=self.mask_token_id,
            policy=self.policy,
            temperature=self.temperature,
            generator=generator,
            frozen=frozen,
            restrict=restrict,
            tokens_per_step=self.tokens_per_step,
        )
        tokens = state.x.clone()
        tokens[:, span] = new_region
        return ChainState(SolverState(x=tokens, step=state.step + 1, cond={"block_end": new_end}))

    def _first_masked(self, region: torch.Tensor) -> torch.Tensor:
        """Index of each row's first masked position in ``region`` (its length where none is)."""
        masked = region == self.mask_token_id
        first = masked.int().argmax(-1)
        return torch.where(masked.any(-1), first, torch.full_like(first, region.shape[1]))

    def renoise(
        self, state: ChainState, to_step: int, generator: torch.Generator | None = None
    ) -> ChainState:
        """Back to step ``to_step`` by the forward (masking) process: in every block the schedule had not
        finished at ``to_step``, re-mask uniformly random generated positions until the block has as many
        masks as the low-confidence schedule leaves there (all, for blocks not yet started). No model call."""
        i = state.step
        if not 0 <= to_step <= i:
            raise ValueError(f"can only renoise to a step in 0..{i}, got {to_step}")
        if self.adaptive_blocks is not None:
            return self._renoise_adaptive(state, to_step)
        tokens = state.x.clone()
        generated = self._generated_positions(tokens.device)
        to_block, within = self.layout.block_of_step(to_step)
        for block in range(to_block, self.layout.num_blocks):
            span = self.layout.block_slice(block)
            region = generated[span].expand(tokens.shape[0], -1)
            size = int(generated[span].sum())
            keep = 0 if block > to_block else size - _masks_left(size, self.layout.steps_per_block, within)
            scores = torch.rand(region.shape, generator=generator, dtype=torch.float64, device=tokens.device)
            ranks = scores.masked_fill(~region, 2.0).argsort(-1).argsort(-1)
            block_tokens = tokens[:, span]
            block_tokens[region & (ranks >= keep)] = self.mask_token_id
            tokens[:, span] = block_tokens
        return ChainState(SolverState(x=tokens, step=to_step))

    def _renoise_adaptive(self, state: ChainState, to_step: int) -> ChainState:
        """Adaptive blocks decode a prefix: keep the first ``to_step * k`` generated tokens of each row (at
        most its decoded prefix) and mask the rest; the next step sizes a new block after the prefix."""
        span = self._generation_slice()
        tokens = state.x.clone()
        region = tokens[:, span]
        keep = self._first_masked(region).clamp(max=to_step * self.tokens_per_step)
        positions = torch.arange(region.shape[1], device=region.device)
        region[positions >= keep.unsqueeze(-1)] = self.mask_token_id
        tokens[:, span] = region
        return ChainState(SolverState(x=tokens, step=to_step, cond={"block_end": keep}))

    def decode(self, x0: torch.Tensor) -> Any:
        ids = self.generated(x0)
        return ids if self.decode_fn is None else self.decode_fn(ids)

    # ---------------------------------------------------------------------------------------- helpers
    def generated(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The generated ids of every row, cut after the first EOS (kept) and without masks."""
        start = self.layout.prompt_length
        rows = []
        for row in tokens[:, start : start + self.layout.gen_length]:
            if self.eos_token_id is not None:
                eos = (row == self.eos_token_id).nonzero()
                if len(eos):
                    row = row[: int(eos[0]) + 1]
            rows.append(row[row != self.mask_token_id])
        return rows

    def finished(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rows with an EOS in the generation region and no mask before its first occurrence (B,)."""
        start, end = self.layout.prompt_length, self.layout.prompt_length + self.layout.gen_length
        region = tokens[:, start:end]
        is_eos = region == self.eos_token_id
        has_eos = is_eos.any(-1)
        first = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, end, dtype=torch.long))
        before = torch.arange(region.shape[1], device=tokens.device) < first.unsqueeze(-1)
        return has_eos & ~((region == self.mask_token_id) & before).any(-1)

    def _frozen(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The finished rows (B,) when ``eos_stop``, else None."""
        return self.finished(tokens) if self.eos_stop else None

    def _idle(self, tokens: torch.Tensor, step: int, frozen: torch.Tensor | None) -> bool:
        """Whether step ``step`` has nothing to commit: no row outside ``frozen`` has a mask in its block
        (with adaptive blocks, full context: in its generation region, the model's view)."""
        if self.adaptive_blocks is not None:
            return self._view_decoded(tokens, step, frozen)
        span = self.layout.block_slice(self.layout.block_of_step(step)[0])
        return not _masks_in_live_rows(tokens[:, span] == self.mask_token_id, frozen)

    def _view_decoded(self, tokens: torch.Tensor, step: int, frozen: torch.Tensor | None) -> bool:
        """Whether no row outside ``frozen`` has a masked generated position in the model's view at ``step``
        (the look-ahead is then the tokens themselves)."""
        window = self._window(step)
        generated = self._generated_positions(tokens.device)[:window]
        return not _masks_in_live_rows((tokens[:, :window] == self.mask_token_id) & generated, frozen)

    def _generation_slice(self) -> slice:
        return slice(self.layout.prompt_length, self.layout.prompt_length + self.layout.gen_length)

    def _generated_positions(self, device: torch.device) -> torch.Tensor:
        """(total_length,) True on the generation region."""
        generated = torch.zeros(self.layout.total_length, dtype=torch.bool, device=device)
        generated[self._generation_slice()] = True
        return generated

    def _window(self, step: int) -> int:
        """Positions the model sees at ``step``: the whole sequence, or up to the end of the active block."""
        if self.context == "full" or step >= self.steps:
            return self.layout.total_length
        block, _ = self.layout.block_of_step(step)
        return (block + 1) * self.layout.block_length

    def _logits(self, tokens: torch.Tensor, window: int) -> torch.Tensor:
        """The model's logits on ``tokens[:, :window]`` (charged one NFE per row), in chunks of max_batch."""
        n = tokens.shape[0]
        self.budget.charge_nfe(n)
        attention = self.layout.attention_mask(n, tokens.device)[:, :window]
        positions = torch.arange(window, device=tokens.device).expand(n, -1)
        size = n if self.max_batch is None else self.max_batch
        with torch.no_grad():
            parts = [
                self.logits_fn(
                    tokens[s : s + size, :window], attention[s : s + size], positions[s : s + size]
                )
                for s in range(0, n, size)
            ]
        return torch.cat(parts).float()

    def _fill(self, tokens: torch.Tensor, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Masked positions within the model's view filled with its argmax or a (state-seeded) draw."""
        window = logits.shape[1]
        generator = None
        temperature = 0.0
        if self.lookahead == "sample":
            digest = hashlib.sha256(tokens.cpu().numpy().tobytes() + step.to_bytes(8, "little")).digest()
            generator = torch.Generator(device=logits.device).manual_seed(
                int.from_bytes(digest[:8], "little") >> 1
            )
            temperature = max(self.temperature, 1.0)
        fill, _ = sample_candidates(logits, temperature, generator)
        out = tokens.clone()
        view = out[:, :window]
        masked = view == self.mask_token_id
        view[masked] = fill[masked]
        return out


def _masks_in_live_rows(masked: torch.Tensor, frozen: torch.Tensor | None) -> bool:
    """Whether a row not in ``frozen`` (B,) has a True in ``masked`` (B, L)."""
    if frozen is not None:
        masked = masked & ~frozen.unsqueeze(-1)
    return bool(masked.any())


def _masks_left(size: int, steps: int, done: int) -> int:
    """Masks a block of ``size`` positions has after ``done`` of its ``steps`` low-confidence steps."""
    left = size
    for s in range(done):
        left -= -(-left // (steps - s))
    return left
