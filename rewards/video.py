"""Video rewards on (B, T, C, H, W) clips in [0, 1]: image rewards over frames, temporal consistency, motion.

* :class:`FrameAggregate` scores frames with any image reward and aggregates them per video: the mean, the
  minimum (the worst frame decides), or the mean of the first, middle and last frames (three reward calls
  per video instead of T, as video search papers use to cut the cost of image rewards).
* :class:`TemporalConsistency` is the mean cosine similarity of CLIP image embeddings of adjacent frames,
  the "CLIP consistency" / subject-consistency metric of video benchmarks (VBench, Huang et al. 2024).
* :class:`MotionMagnitude` is the mean absolute pixel change between adjacent frames: a cheap measure of how
  much moves, to reward motion (or, negated in a weighted sum, to penalise it).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .base import Reward

__all__ = ["FrameAggregate", "MotionMagnitude", "TemporalConsistency"]

Aggregation = Literal["mean", "min", "first-middle-last"]


def _need_two_frames(videos: torch.Tensor, what: str) -> None:
    if videos.shape[1] < 2:
        raise ValueError(f"{what} needs at least 2 frames per video, got {videos.shape[1]}")


class FrameAggregate(Reward):
    """An image reward applied to frames and aggregated per video (``how``: mean, min, first-middle-last)."""

    modality = "video"

    def __init__(self, image_reward: Reward, how: Aggregation = "mean"):
        super().__init__()
        if image_reward.modality != "image":
            raise ValueError(f"FrameAggregate needs an image reward, got modality {image_reward.modality!r}")
        if how not in ("mean", "min", "first-middle-last"):
            raise ValueError(f"how must be 'mean', 'min' or 'first-middle-last', got {how!r}")
        self.image_reward, self.how = image_reward, how
        self.differentiable = image_reward.differentiable
        self.needs_prompts = getattr(image_reward, "needs_prompts", False)
        self.scale = f"{how} over frames of: {image_reward.scale}"

    def score_batch(self, batch: torch.Tensor, prompts: list[str] | None, keep_graph: bool) -> torch.Tensor:
        frames = batch.shape[1]
        if self.how == "first-middle-last":
            batch = batch[:, sorted({0, frames // 2, frames - 1})]
        b, t = batch.shape[:2]
        frame_prompts = None if prompts is None else [p for p in prompts for _ in range(t)]
        grad = keep_graph and self.image_reward.differentiable
        scores = self.image_reward(batch.flatten(0, 1), frame_prompts, grad=grad).view(b, t)
        return scores.amin(1) if self.how == "min" else scores.mean(1)


class TemporalConsistency(Reward):
    """Mean over t of cos(E(frame_t), E(frame_t+1)) with E a CLIP image encoder.

    ``encoder`` is anything with ``encode_images(images (n, C, H, W) in [0, 1]) -> (n, D)``, such as
    :class:`rewards.clip.OpenCLIPEncoder`; by default one is built from ``model`` / ``pretrained``.
    """

    modality = "video"
    differentiable = True
    scale = "cosine similarity in [-1, 1], averaged over adjacent frame pairs; 1 is a static video"

    def __init__(
        self,
        encoder: nn.Module | None = None,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        batch_size: int = 8,
        device: str | torch.device | None = None,
    ):
        super().__init__(batch_size=batch_size)
        if encoder is None:
            from .clip import OpenCLIPEncoder

            encoder = OpenCLIPEncoder(model, pretrained)
        self.encoder = encoder
        if device is not None:
            self.to(device)

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        _need_two_frames(samples, "temporal consistency")
        b, t = samples.shape[:2]
        emb = self.encoder.encode_images(samples.flatten(0, 1)).view(b, t, -1)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return (emb[:, 1:] * emb[:, :-1]).sum(-1).mean(1)


class MotionMagnitude(Reward):
    """Mean |frame_t+1 - frame_t| over pixels, channels and adjacent pairs; 0 for a still video."""

    modality = "video"
    differentiable = True
    scale = "mean absolute pixel change between adjacent frames, in [0, 1]"

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        _need_two_frames(samples, "motion magnitude")
        return (samples[:, 1:] - samples[:, :-1]).abs().flatten(1).mean(1)
