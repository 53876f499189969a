"""Masked (absorbing-state) discrete diffusion: which masked tokens to commit at a step, and with what.

A masked diffusion language model (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025) predicts, for every
masked position, a distribution over the vocabulary. A sampler runs ``steps`` model calls; at each one it

1. draws a candidate token for every masked position of the active block (:func:`sample_candidates`:
   argmax at temperature 0, else the Gumbel-max trick in float64 -- LLaDA's reason: low-precision Gumbel noise
   makes the categorical draw visibly wrong), with the model's probability of that token as its confidence;
2. commits some of the candidates (an :class:`UnmaskingPolicy`) and leaves the others masked.

The number of commits a step owes is the even split of LLaDA's schedule (Nie et al. 2025, App. B.3,
``get_num_transfer_tokens``): a block with m masks and k steps left commits ceil(m / k) -- over the block's
steps, ``m // k`` each plus one more in the first ``m % k`` steps. Policies:

* :class:`LowConfidence` -- LLaDA's low-confidence remasking (Nie et al. 2025, Alg. 5): the owed number of
  most confident candidates;
* :class:`RandomOrder` -- LLaDA's random remasking (Alg. 4): the owed number, uniformly at random;
* :class:`ConfidenceThreshold` -- Fast-dLLM's parallel decoding (Wu et al. 2025, Sec. 3.3): every candidate
  whose confidence exceeds a threshold, and at least the owed number of most confident ones (as diffusers'
  ``BlockRefinementScheduler``);
* :class:`EntropyBounded` -- the EB-sampler (Ben-Hamu et al. 2025): candidates in order of increasing entropy
  of their predictive distribution while the summed entropy stays within a bound, and at least the owed
  number.

:class:`ReMDM` (Wang et al. 2025) adds remasking to any policy: decoded tokens are masked again with a small,
scheduled probability, so that later steps can revise them (more steps than tokens then pay off).

Semi-autoregressive blocks (LLaDA, Sec. 2.4; LLaDA2): the sequence ``prompt + generation`` is cut into blocks
of ``block_length`` positions counted from position 0 (as diffusers' ``LLaDA2Pipeline``), padded with masks
to a whole number of blocks; the blocks are decoded left to right, ``steps_per_block`` steps each.
:class:`AdaBlock` (Lu et al. 2025) sizes each block when it starts instead: up to the most confident
predicted delimiter (a newline, a full stop, ``[EOS]``) near the decoded prefix, so blocks follow the text's
semantic steps.
Everything here is stateless: the state of a run is its token ids, so particle methods can index and copy it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "POLICIES",
    "AdaBlock",
    "BlockLayout",
    "ConfidenceThreshold",
    "EntropyBounded",
    "LowConfidence",
    "RandomOrder",
    "ReMDM",
    "UnmaskingPolicy",
    "commit_block",
    "make_policy",
    "owed_commits",
    "sample_candidates",
]


def sample_candidates(
    logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate token, its probability under the model) at every position of ``logits`` (..., V).

    Temperature 0: the argmax. Otherwise the Gumbel-max trick on ``logits / temperature`` in float64 (an exact
    draw from softmax(logits / T)); LLaDA draws in float64 because float16/bfloat16 Gumbel noise visibly
    biases the draw (Nie et al. 2025, App. B.2). The confidence is softmax(logits) at the candidate (the
    untempered probability, as LLaDA and diffusers use)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.to(torch.float64)
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        tokens = (logits / temperature + gumbel).argmax(-1)
    probs = torch.softmax(logits, -1)
    return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def owed_commits(masks: torch.Tensor, steps_left: int | torch.Tensor) -> torch.Tensor:
    """Tokens a block with ``masks`` masked positions (per row) commits at a step with ``steps_left`` steps
    left (an int, or per row), counting this one: ceil(masks / steps_left) -- LLaDA's even split of a block
    over its steps; everything where ``steps_left < 1``."""
    steps_left = torch.as_tensor(steps_left, device=masks.device)
    owed = torch.div(masks + steps_left.clamp(min=1) - 1, steps_left.clamp(min=1), rounding_mode="floor")
    return torch.where(steps_left < 1, masks, owed)


@dataclass(frozen=True)
class StepInputs:
    """What a policy sees at a step, per row and position of the active block: ``confidence`` (float64,
    -inf where not a candidate), ``candidates`` (masked positions it may commit), ``owed`` (B,) commits the
    schedule asks for, ``entropy`` of the model's predictive distribution, and the step's ``generator``."""

    confidence: torch.Tensor
    candidates: torch.Tensor
    owed: torch.Tensor
    entropy: torch.Tensor
    generator: torch.Generator | None = None


@runtime_checkable
class UnmaskingPolicy(Protocol):
    """Chooses which candidates to commit: a bool mask (B, block) within ``inputs.candidates``."""

    name: str
    stochastic: bool

    def commit(self, inputs: StepInputs) -> torch.Tensor: ...


def _top(scores: torch.Tensor, candidates: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The ``count`` (per row) candidates of highest score (ties: the lower position)."""
    scores = scores.masked_fill(~candidates, -math.inf)
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = order.argsort(-1)
    return candidates & (ranks < count.clamp(max=candidates.shape[-1]).unsqueeze(-1))


@dataclass(frozen=True)
class LowConfidence:
    """LLaDA's low-confidence remasking (Nie et al. 2025, Alg. 5): commit the owed number of most confident
    candidates; the others stay masked."""

    name: str = "low-confidence"
    stochastic: bool = False

    def commit(self, inputs: StepInputs) -> torch.Tensor:
        return _top(inputs.confidence, inputs.candidates, inputs.owed)


@dataclass(frozen=True)
class RandomOrder:
    """LLaDA's random remasking (Nie et al. 2025, Alg. 4): commit the owed number of candidates chosen
    uniformly at random (the reverse process of the absorbing diffusion unmasks positions at random)."""

    name: str = "random"
    stochastic: bool = True

    def commit(self, inputs: StepInputs) -> torch.Tensor:
        c = inputs.candidates
        scores = torch.rand(c.shape, generator=inputs.generator, dtype=torch.float64, device=c.device)
        return _top(scores, c, inputs.owed)


@dataclass(frozen=True)
class ConfidenceThreshold:
    """Fast-dLLM's confidence-aware parallel decoding (Wu et al. 2025, Sec. 3.3, Thm. 1): commit every
    candidate whose confidence exceeds ``threshold``, and at least the owed number of most confident ones, so
    a block still finishes within its steps (diffusers' ``BlockRefinementScheduler`` does the same)."""

    threshold: float = 0.9
    name: str = "threshold"
    stochastic: bool = False

    def commit(self, inputs: StepInputs) -> torch.Tensor:
        confident = inputs.candidates & (inputs.confidence > self.threshold)
        return confident | _top(inputs.confidence, inputs.candidates, inputs.owed)


@dataclass(frozen=True)
class EntropyBounded:
    """The entropy-bounded (EB) sampler (Ben-Hamu et al. 2025, Alg. 1): sort the candidates by the entropy of
    their predictive distribution and commit the longest low-entropy prefix whose entropies sum to at most
    ``gamma`` (an upper bound on the dependence error of decoding them together), and at least the owed
    number (the EB-sampler's at-least-one, raised to the schedule's count)."""

    gamma: float = 0.5
    name: str = "entropy"
    stochastic: bool = False

    def commit(self, inputs: StepInputs) -> torch.Tensor:
        c = inputs.candidates
        entropy = inputs.entropy.masked_fill(~c, math.inf)
        order = entropy.argsort(dim=-1, stable=True)
        sorted_entropy = entropy.gather(-1, order).masked_fill(~c.gather(-1, order), 0.0)
        within = (sorted_entropy.cumsum(-1) <= self.gamma) & c.gather(-1, order)
        bounded = torch.zeros_like(c).scatter(-1, order, within)
        return bounded | _top(-inputs.entropy, c, inputs.owed)


POLICIES: dict[str, type] = {
    "low-confidence": LowConfidence,
    "random": RandomOrder,
    "threshold": ConfidenceThreshold,
    "entropy": EntropyBounded,
}


def make_policy(policy: str | UnmaskingPolicy, **options: float) -> UnmaskingPolicy:
    """A policy by name (:data:`POLICIES`; ``options`` are its parameters, e.g. ``threshold=0.9``), or the
    policy given."""
    if not isinstance(policy, str):
        if options:
            raise ValueError("options are only for a policy given by name")
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown unmasking policy {policy!r}; expected one of {', '.join(POLICIES)}")
    return POLICIES[policy](**options)


@dataclass(frozen=True)
class BlockLayout:
    """Positions of a run: the prompt (``prompt_length`` tokens), the generation region (``gen_length``), cut
    into blocks of ``block_length`` counted from position 0 and padded with masks to ``total_length`` (a whole
    number of blocks), as ``LLaDA2Pipeline``; ``steps_per_block`` model calls per block."""

    prompt_length: int
    gen_length: int
    block_length: int
    steps_per_block: int

    def __post_init__(self) -> None:
        for name in ("gen_length", "block_length", "steps_per_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}")

    @property
    def total_length(self) -> int:
        return self.num_blocks * self.block_length

    @property
    def num_blocks(self) -> int:
        return -(-(self.prompt_length + self.gen_length) // self.block_length)

    @property
    def first_block(self) -> int:
        """The first block with a generated position (blocks before it hold only prompt)."""
        return self.prompt_length // self.block_length

    @property
    def steps(self) -> int:
        """Model calls of a whole run (at most: a step whose block has no masks left makes none)."""
        return (self.num_blocks - self.first_block) * self.steps_per_block

    def block_of_step(self, step: int) -> tuple[int, int]:
        """(block index, step within the block) of the run's step ``step``."""
        block, within = divmod(step, self.steps_per_block)
        return self.first_block + block, within

    def block_slice(self, block: int) -> slice:
        return slice(block * self.block_length, (block + 1) * self.block_length)

    def attention_mask(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """1 on the prompt and the generation region, 0 on the padding masks after it (LLaDA2Pipeline's)."""
        mask = torch.zeros(rows, self.total_length, dtype=torch.long, device=device)
        mask[:, : self.prompt_length + self.gen_length] = 1
        return mask


@dataclass(frozen=True)
class AdaBlock:
    """AdaBlock's adaptive block size (Lu et al. 2025, "AdaBlock-dLLM: Semantic-Aware Diffusion LLM Inference
    via Adaptive Block Size", arXiv:2509.26432; the block-length rule of its reference decoder). When a block
    starts at ``start`` (the first position after the decoded prefix), look at the model's candidates in a
    window of ``window_fraction * gen_length`` positions from ``start`` (the paper's quarter by default,
    capped by the positions left); among those whose candidate is a delimiter (``delimiter_ids``), take the
    most confident. If its confidence is at least ``threshold`` the block ends right after it; otherwise the
    block has the default length (capped by the positions left). Blocks count from the end of the prompt,
    and the decision uses the same model call, candidates and confidence as the block's first commit."""

    delimiter_ids: tuple[int, ...]
    threshold: float = 0.3
    window_fraction: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "delimiter_ids", tuple(int(i) for i in self.delimiter_ids))
        if not self.delimiter_ids:
            raise ValueError("AdaBlock needs at least one delimiter token id")
        if not 0 < self.window_fraction <= 1:
            raise ValueError(f"window_fraction must be in (0, 1], got {self.window_fraction}")

    def block_end(
        self,
        candidates: torch.Tensor,
        confidence: torch.Tensor,
        start: torch.Tensor,
        default_length: int,
    ) -> torch.Tensor:
        """End (exclusive, (B,)) of the blocks starting at ``start`` (B,), positions counted within the
        generation region whose ``candidates`` and ``confidence`` (B, gen_length) are given."""
        gen_length = candidates.shape[-1]
        positions = torch.arange(gen_length, device=candidates.device)
        window = max(1, int(self.window_fraction * gen_length))
        in_window = (positions >= start.unsqueeze(-1)) & (positions < (start + window).unsqueeze(-1))
        delimiters = torch.tensor(self.delimiter_ids, device=candidates.device)
        is_delimiter = in_window & torch.isin(candidates, delimiters)
        scores = confidence.to(torch.float64).masked_fill(~is_delimiter, -math.inf)
        best_score, best = scores.max(-1)
        default = (start + default_length).clamp(max=gen_length)
        return torch.where(best_score >= self.threshold, best + 1, default)


@dataclass(frozen=True)
class ReMDM:
    """ReMDM remasking (Wang et al. 2025, eq. 7 and Sec. 4.1): at a step of the linear schedule
    alpha_t = s / k (s steps of the block's k done), every generated token already decoded is masked again
    with probability sigma_t = min(eta, (1 - alpha_s) / alpha_t) (the "max-capped" schedule; sigma_t is 0 at
    the block's first and last steps), so that later steps can correct it. ``strategy="conf"`` (ReMDM-conf)
    spreads the same expected number of remaskings over the decoded tokens by softmax(-confidence), the
    model's current probability of each token: the least confident ones go first."""

    eta: float = 0.05
    strategy: str = "cap"

    def __post_init__(self) -> None:
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.strategy not in ("cap", "conf"):
            raise ValueError(f"strategy must be 'cap' or 'conf', got {self.strategy!r}")

    def sigma(self, done: int, steps: int) -> float:
        """sigma_t at step ``done`` of the block's ``steps`` (0 before anything is decoded and at the end)."""
        alpha_t, alpha_s = done / steps, (done + 1) / steps
        return 0.0 if alpha_t <= 0 else min(self.eta, max(1 - alpha_s, 0.0) / alpha_t)

    def remask(
        self, decoded: torch.Tensor, confidence: torch.Tensor, sigma: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The decoded positions (B, block) to mask again."""
        if sigma <= 0 or not bool(decoded.any()):
            return torch.zeros_like(decoded)
        p = torch.full(decoded.shape, sigma, dtype=torch.float64, device=decoded.device)
        if self.strategy == "conf":
            weights = torch.softmax((-confidence).masked_fill(~decoded, -math.inf), -1).nan_to_num(0.0)
            p = (sigma * decoded.sum(-1, keepdim=True) * weights).clamp(max=1.0)
        u = torch.rand(decoded.shape, generator=generator, dtype=torch.float64, device=decoded.device)
        return decoded & (u < p)


def commit_block(
    logits: torch.Tensor,
    block_tokens: torch.Tensor,
    *,
    mask_token_id: int,
    policy: UnmaskingPolicy,
    steps_left: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    frozen: torch.Tensor | None = None,
    remasking: ReMDM | None = None,
    steps: int | None = None,
    editable: torch.Tensor | None = None,
    restrict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    tokens_per_step: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step on the active block: (new block tokens, committed positions, candidate tokens, their
    confidence). ``logits`` (B, block, V) are the model's at the block's positions, ``block_tokens``
    (B, block) its current tokens, ``steps_left`` the block's steps left counting this one; rows in
    ``frozen`` (B,) commit nothing (finished rows). Only masked positions change, never to the mask token
    itself. With ``remasking`` (ReMDM; ``steps``: the block's steps, ``editable``: the generated positions of
    the block, (block,) or (B, block)) decoded tokens may first be masked again. A block without masks draws
    no random numbers (so a step the caller skips and a step that finds nothing to do leave the generator
    alike).

    Variable blocks (:class:`AdaBlock`): pass the whole generation region as the block, ``restrict``
    (called with the candidate tokens and their confidence, returning the (B, block) positions that may be
    committed this step) and ``tokens_per_step`` k instead of ``steps_left``: a row whose active positions
    hold m masks then has ceil(m / k) steps left (LLaDA's even split at k tokens per step)."""
    if (steps_left is None) == (tokens_per_step is None):
        raise ValueError("give exactly one of steps_left and tokens_per_step")
    if remasking is not None and steps_left is None:
        raise ValueError("ReMDM remasking follows a block's step schedule: it needs steps_left")
    block_tokens = block_tokens.clone()
    logits = logits.to(torch.float64).index_fill(
        -1, torch.tensor([mask_token_id], device=logits.device), -math.inf
    )
    log_probs = torch.log_softmax(logits, -1)
    entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)
    masked = block_tokens == mask_token_id
    live = torch.ones_like(masked) if frozen is None else ~frozen.unsqueeze(-1).expand_as(masked)
    if remasking is not None and steps is not None and bool((masked & live).any()):
        decoded = ~masked & live & (torch.ones_like(masked) if editable is None else editable.bool())
        current = log_probs.gather(-1, block_tokens.clamp(max=logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        again = remasking.remask(
            decoded, current.exp(), remasking.sigma(steps - steps_left, steps), generator
        )
        block_tokens[again] = mask_token_id
        masked = masked | again
    if not bool(masked.any()):  # nothing to commit: no random draws, so the generator's stream is unchanged
        temperature = 0.0
    candidates_tokens, confidence = sample_candidates(logits, temperature, generator)
    masked = masked & live
    if restrict is not None:
        masked = masked & restrict(candidates_tokens, confidence)
    if tokens_per_step is not None:
        steps_left = torch.div(masked.sum(-1) + tokens_per_step - 1, tokens_per_step, rounding_mode="floor")
    inputs = StepInputs(
        confidence=confidence.masked_fill(~masked, -math.inf),
        candidates=masked,
        owed=owed_commits(masked.sum(-1), steps_left),
        entropy=entropy,
        generator=generator,
    )
    commit = policy.commit(inputs) & masked if bool(masked.any()) else masked
    return torch.where(commit, candidates_tokens, block_tokens), commit, candidates_tokens, confidence
