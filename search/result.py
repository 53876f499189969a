"""What every search method returns, and the one way they all score samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .chain import Chain
from .trace import record_scores

__all__ = ["SearchResult", "score_samples"]


@dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        x: the returned clean samples (k, ...), best first (for sampling methods: the resampled particles).
        samples: ``x`` decoded (what the reward scored).
        scores: the reward of each returned sample (k,).
        all_scores: the final reward of every particle the method scored at the end (n,).
        history: one dict per step of the method (e.g. ``{"step": i, "ess": ..., "resampled": bool,
            "max_reward": ...}``).
        nfe: model calls spent, counted per particle; reward_calls: samples scored; seconds: wall time.
    """

    x: torch.Tensor
    samples: Any
    scores: torch.Tensor
    all_scores: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    nfe: int = 0
    reward_calls: int = 0
    seconds: float = 0.0

    @classmethod
    def finish(
        cls,
        chain: Chain,
        x: torch.Tensor,
        scores: torch.Tensor,
        all_scores: torch.Tensor,
        history: list[dict[str, Any]],
    ) -> SearchResult:
        """The result of a method run on ``chain``: ``x`` decoded, the counts read from the chain's budget."""
        budget = chain.budget
        return cls(
            x=x,
            samples=chain.decode(x),
            scores=scores,
            all_scores=all_scores,
            history=history,
            nfe=budget.nfe,
            reward_calls=budget.reward_calls,
            seconds=budget.seconds,
        )


def score_samples(chain: Chain, reward, x0: torch.Tensor, prompts: Any = None) -> torch.Tensor:
    """reward(decode(x0), prompts) as float64 on x0's device, charged to the chain's budget.

    NaN scores are an error (a broken reward must not steer a search); -inf is allowed and means "never
    select" (zero weight)."""
    samples = chain.decode(x0)
    scores = reward(samples, prompts).detach().to(device=x0.device, dtype=torch.float64).reshape(-1)
    chain.budget.charge_rewards(scores.shape[0])
    if scores.shape[0] != x0.shape[0]:
        raise ValueError(f"the reward returned {scores.shape[0]} scores for {x0.shape[0]} samples")
    nan = int(torch.isnan(scores).sum())
    if nan:
        raise ValueError(f"the reward returned NaN for {nan} of {scores.shape[0]} samples")
    if bool((scores == float("inf")).any()):
        raise ValueError("the reward returned +inf; rewards must be finite or -inf")
    record_scores(chain.budget.nfe, scores)
    return scores
