"""Rewards by short name, for command lines and configs: ``load_reward("aesthetic")``.

Names map to a constructor (a class or factory) imported on first use, so naming a reward costs nothing
until it is loaded. Keyword arguments go to the constructor unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Reward

__all__ = ["REWARD_ALIASES", "REWARD_NAMES", "canonical_reward_name", "load_reward", "reward_constructor"]

#: name -> (module, attribute, one-line description)
REWARD_NAMES: dict[str, tuple[str, str, str]] = {
    "clip": ("rewards.clip", "CLIPScore", "100 x cosine of CLIP image and prompt embeddings (open_clip)"),
    "aesthetic": ("rewards.clip", "AestheticScore", "LAION aesthetic predictor on CLIP ViT-L/14, about 1-10"),
    "hpsv2": ("rewards.clip", "HPSv2", "Human Preference Score v2 / v2.1 (open_clip ViT-H-14)"),
    "pickscore": ("rewards.pickscore", "PickScore", "PickScore (transformers CLIP ViT-H-14)"),
    "imagereward": ("rewards.image_reward", "ImageReward", "ImageReward (BLIP), z-scored human preference"),
    "jpeg-compressibility": ("rewards.compressibility", "JPEGCompressibility", "minus JPEG kB (DDPO)"),
    "jpeg-incompressibility": ("rewards.compressibility", "JPEGIncompressibility", "JPEG kB (DDPO)"),
    "classifier": ("rewards.classifier", "ClassifierReward", "log p(class | image) of any image classifier"),
    "digits": ("rewards.classifier", "digits_reward", "log p(digit | image), the bundled digits classifier"),
    "sentence-similarity": ("rewards.text", "SentenceSimilarity", "MiniLM cosine to a target (offline)"),
    "regex": ("rewards.text", "RegexVerifier", "1 if the text matches a pattern, else 0"),
    "exact-match": ("rewards.text", "ExactMatch", "1 if the (extracted) answer equals the reference"),
    "list-task": ("rewards.list_tasks", "ListTaskVerifier", "1 if the list-task answer is exact"),
    "text-classifier": ("rewards.text", "SequenceClassifierReward", "log p(label | text), transformers"),
    "temporal-consistency": ("rewards.video", "TemporalConsistency", "CLIP cosine of adjacent frames"),
    "motion": ("rewards.video", "MotionMagnitude", "mean absolute pixel change between frames"),
}

#: other spellings -> registered name
REWARD_ALIASES: dict[str, str] = {"digits-classifier": "digits"}


def canonical_reward_name(name: str) -> str:
    """The registered spelling of ``name`` (case-insensitive; '_' and '-' alike; an alias of
    :data:`REWARD_ALIASES` gives its reward's name), or an importable
    ``module:attribute`` path as given; ValueError if neither."""
    if ":" in name:
        return name.strip()
    key = name.strip().lower().replace("_", "-")
    key = REWARD_ALIASES.get(key, key)
    if key not in REWARD_NAMES:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARD_NAMES))}")
    return key


def reward_constructor(name: str) -> Any:
    """The class or factory registered under ``name``, or imported from a ``module:attribute`` path (see
    :func:`canonical_reward_name`); ValueError if it cannot be imported."""
    key = canonical_reward_name(name)
    if ":" in key:
        module, _, attribute = key.partition(":")
    else:
        module, attribute, _ = REWARD_NAMES[key]
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import reward {name!r}: {err}") from None


def load_reward(name: str, **kwargs: Any) -> Reward:
    """The reward registered under ``name``, built with ``kwargs``: ``load_reward("digits", target=3)``."""
    return reward_constructor(name)(**kwargs)
