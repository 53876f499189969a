"""Reward models that score samples: ``reward(samples, prompts=None) -> Tensor[B]``, higher is better.

Names are imported on first use (``from rewards import CLIPScore`` loads only what CLIPScore needs), so
``import rewards`` stays cheap. :func:`load_reward` builds a reward from its short name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Reward, RewardProtocol
from .registry import REWARD_NAMES, load_reward

_LAZY = {
    "rewards.analytic": ["QuadraticReward", "least_squares_reward", "linear_reward"],
    "rewards.classifier": ["ClassifierReward", "ImagePreprocess", "digits_reward"],
    "rewards.clip": ["AestheticScore", "CLIPScore", "HPSv2", "OpenCLIPEncoder"],
    "rewards.combine": ["CategoryWeighted", "Rank", "WeightedSum", "ZScore"],
    "rewards.compressibility": ["JPEGCompressibility", "JPEGIncompressibility"],
    "rewards.digit_classifier": ["DIGITS_CLASSIFIER", "DigitClassifier", "parse_digit"],
    "rewards.image_reward": ["ImageReward"],
    "rewards.pickscore": ["HFCLIPEncoder", "PickScore"],
    "rewards.text": ["ExactMatch", "RegexVerifier", "SentenceSimilarity", "SequenceClassifierReward"],
    "rewards.video": ["FrameAggregate", "MotionMagnitude", "TemporalConsistency"],
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["REWARD_NAMES", "Reward", "RewardProtocol", "load_reward", *sorted(_MODULE_OF)]


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
