"""Rewards made of rewards: weighted sums, batch normalisation (z-score, rank), category-aware weights.

Each combinator is itself a :class:`~rewards.base.Reward`, so they nest: ``WeightedSum({"clip":
ZScore(clip), "aes": ZScore(aesthetic)}, {"clip": 1.0, "aes": 0.5})`` puts two rewards on one scale before
mixing them. Inner rewards see the whole batch (they still batch their own model calls), and gradients flow
through exactly when every inner reward is differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from scipy.stats import rankdata
from torch import nn

from .base import Reward

__all__ = ["CategoryWeighted", "Rank", "WeightedSum", "ZScore"]


def _named(rewards: Mapping[str, Reward] | Sequence[Reward]) -> dict[str, Reward]:
    named = dict(rewards) if isinstance(rewards, Mapping) else {str(i): r for i, r in enumerate(rewards)}
    if not named:
        raise ValueError("give at least one reward")
    modalities = {r.modality for r in named.values()}
    if len(modalities) > 1:
        raise ValueError(f"rewards of different modalities cannot be combined: {sorted(modalities)}")
    return named


class _Combination(Reward):
    """Shared wiring: inner rewards as submodules; modality, differentiability and prompt needs inherited."""

    def __init__(self, rewards: Mapping[str, Reward] | Sequence[Reward]):
        super().__init__()
        named = _named(rewards)
        self.rewards = nn.ModuleDict(named)
        self.modality = next(iter(named.values())).modality
        self.differentiable = all(r.differentiable for r in named.values())
        self.needs_prompts = any(getattr(r, "needs_prompts", False) for r in named.values())

    def inner_scores(self, batch, prompts: list[str] | None, keep_graph: bool) -> dict[str, torch.Tensor]:
        """Each inner reward's (B,) scores on the whole batch, float64 on the batch's device."""
        return {
            name: reward(batch, prompts, grad=keep_graph and reward.differentiable).to(torch.float64)
            for name, reward in self.rewards.items()
        }


class WeightedSum(_Combination):
    """sum_j w_j r_j(x). ``weights`` matches ``rewards`` (a dict by name, or a list); default all 1."""

    def __init__(
        self,
        rewards: Mapping[str, Reward] | Sequence[Reward],
        weights: Mapping[str, float] | Sequence[float] | None = None,
    ):
        super().__init__(rewards)
        names = list(self.rewards.keys())
        if weights is None:
            weights = {n: 1.0 for n in names}
        elif not isinstance(weights, Mapping):
            if len(weights) != len(names):
                raise ValueError(f"got {len(weights)} weights for {len(names)} rewards")
            weights = dict(zip(names, weights))
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"weights name unknown rewards {sorted(unknown)}; rewards are {names}")
        self.weights = {n: float(weights.get(n, 0.0)) for n in names}
        self.scale = "weighted sum of: " + "; ".join(
            f"{w:g} x [{self.rewards[n].scale}]" for n, w in self.weights.items()
        )

    def score_batch(self, batch, prompts: list[str] | None, keep_graph: bool) -> torch.Tensor:
        scores = self.inner_scores(batch, prompts, keep_graph)
        return sum(self.weights[n] * s for n, s in scores.items())


class ZScore(_Combination):
    """(r - mean_batch r) / (std_batch r + eps), population std; all zeros for a batch of one.

    Puts rewards of different units on one scale within a batch (as GRPO-style advantages do)."""

    scale = "z-score within the batch: mean 0, standard deviation 1"

    def __init__(self, reward: Reward, eps: float = 1e-8):
        super().__init__([reward])
        self.eps = eps

    def score_batch(self, batch, prompts: list[str] | None, keep_graph: bool) -> torch.Tensor:
        (r,) = self.inner_scores(batch, prompts, keep_graph).values()
        if r.numel() == 1:
            return torch.zeros_like(r)
        return (r - r.mean()) / (r.std(correction=0) + self.eps)


class Rank(_Combination):
    """The batch rank of r, scaled to [0, 1] (0 = worst, 1 = best; ties share their average rank; 0.5 for a
    batch of one). Robust to outliers and to the reward's units; not differentiable."""

    scale = "rank within the batch scaled to [0, 1]; 1 is the best sample"

    def __init__(self, reward: Reward):
        super().__init__([reward])
        self.differentiable = False

    def score_batch(self, batch, prompts: list[str] | None, keep_graph: bool) -> torch.Tensor:
        (r,) = self.inner_scores(batch, prompts, False).values()
        if r.numel() == 1:
            return torch.full_like(r, 0.5)
        ranks = rankdata(r.detach().cpu().numpy(), method="average") - 1.0
        return torch.as_tensor(ranks / (r.numel() - 1), dtype=torch.float64, device=r.device)


class CategoryWeighted(_Combination):
    """Per-prompt weights by prompt category: r(x, p) = sum_j W[category(p), j] r_j(x, p).

    CARINOX (Kasaei et al. 2025, "Inference-time Scaling with Category-Aware Reward-based Initial Noise
    Optimization and Exploration") mixes reward models with weights chosen per prompt category (counting,
    spatial relations, attributes, ...), because each reward judges some categories better than others.

    Args:
        rewards: the rewards by name.
        weights: ``{category: {reward name: weight}}``; names left out weigh 0.
        category: a prompt's category, as a callable or a ``{prompt: category}`` dict.
        default: the category of prompts the mapping lacks (None: such prompts are an error).
    """

    def __init__(
        self,
        rewards: Mapping[str, Reward],
        weights: Mapping[str, Mapping[str, float]],
        category: Callable[[str], str] | Mapping[str, str],
        default: str | None = None,
    ):
        super().__init__(rewards)
        names = list(self.rewards.keys())
        for cat, row in weights.items():
            unknown = set(row) - set(names)
            if unknown:
                raise ValueError(
                    f"category {cat!r} weighs unknown rewards {sorted(unknown)}; rewards are {names}"
                )
        if default is not None and default not in weights:
            raise ValueError(f"default category {default!r} has no weights")
        self.weights = {cat: {n: float(row.get(n, 0.0)) for n in names} for cat, row in weights.items()}
        self.category, self.default = category, default
        self.needs_prompts = True
        self.scale = "per-category weighted sum of: " + "; ".join(
            f"{n} [{r.scale}]" for n, r in self.rewards.items()
        )

    def category_of(self, prompt: str) -> str:
        if isinstance(self.category, Mapping):
            cat = self.category.get(prompt, self.default)
        else:
            cat = self.category(prompt)
        if cat is None:
            raise ValueError(f"prompt {prompt!r} has no category and no default category is set")
        if cat not in self.weights:
            if self.default is None:
                raise ValueError(f"category {cat!r} of prompt {prompt!r} has no weights")
            cat = self.default
        return cat

    def score_batch(self, batch, prompts: list[str] | None, keep_graph: bool) -> torch.Tensor:
        scores = self.inner_scores(batch, prompts, keep_graph)
        rows = [self.weights[self.category_of(p)] for p in prompts]
        device = next(iter(scores.values())).device
        total = 0.0
        for name, s in scores.items():
            w = torch.tensor([row[name] for row in rows], dtype=torch.float64, device=device)
            total = total + w * s
        return total
