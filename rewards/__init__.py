"""Reward models that score samples: ``reward(samples, prompts=None) -> Tensor[B]``, higher is better."""

from .base import Reward, RewardProtocol
from .digit_classifier import DIGITS_CLASSIFIER, DigitClassifier

__all__ = ["DIGITS_CLASSIFIER", "DigitClassifier", "Reward", "RewardProtocol"]
