"""A small CNN that classifies 8x8 digits in [-1, 1]; its class log-probability is the digits reward.

Trained by ``scripts/train_digits.py`` on scikit-learn's digits (held-out accuracy is reported in
``docs/benchmarks/digits.md``). It is a diffusers ``ModelMixin``, so ``save_pretrained`` /
``from_pretrained`` read and write ``config.json`` + ``diffusion_pytorch_model.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["DIGITS_CLASSIFIER", "DIGIT_NAMES", "DigitClassifier", "parse_digit"]

#: The bundled classifier (``scripts/train_digits.py``), shipped with the package.
DIGITS_CLASSIFIER = Path(__file__).resolve().parent / "assets" / "digits-classifier"

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def parse_digit(prompt: str | int) -> int:
    """The class a prompt names: ``7``, ``"7"``, ``"seven"`` or ``"Seven"`` -> 7."""
    if isinstance(prompt, int) and not isinstance(prompt, bool) and 0 <= prompt <= 9:
        return prompt
    text = str(prompt).strip().lower()
    if text.isdigit() and len(text) == 1:
        return int(text)
    if text in DIGIT_NAMES:
        return DIGIT_NAMES.index(text)
    raise ValueError(
        f"the digits model draws 0-9: prompt {prompt!r} is not a digit ('7') or its name ('seven')"
    )


class DigitClassifier(ModelMixin, ConfigMixin):
    """conv(32) - conv(32) - pool - conv(64) - pool - linear(128) - linear(classes), SiLU activations."""

    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * w * (sample_size // 4) ** 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 4 * w), nn.SiLU(), nn.Linear(4 * w, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of images (B, C, H, W) in [-1, 1]."""
        return self.head(self.features(images.to(self.dtype)))

    @torch.no_grad()
    def log_prob(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(label | image) per image."""
        logp = self(images).log_softmax(-1)
        return logp.gather(1, labels.to(logp.device).long().view(-1, 1)).squeeze(1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).argmax(-1)
