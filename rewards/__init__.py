"""Reward models that score samples."""

from .digit_classifier import DigitClassifier

__all__ = ["DigitClassifier"]
