"""JPEG (in)compressibility: the file size of the image saved as a JPEG, the DDPO toy rewards.

Black et al. 2023, "Training Diffusion Models with Reinforcement Learning", Sec. 6.1: an image is rounded to
8-bit RGB, encoded as JPEG at quality 95, and its size in kilobytes (1000 bytes) is the reward,
negated for compressibility. Not differentiable.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from .base import Reward

__all__ = ["JPEGCompressibility", "JPEGIncompressibility", "jpeg_kilobytes"]


def jpeg_kilobytes(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Size in kB of each (C, H, W) image in [0, 1], rounded to uint8 RGB and saved as JPEG."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    sizes = []
    for image in pixels.permute(0, 2, 3, 1).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class JPEGCompressibility(Reward):
    """``-kB`` of the JPEG: flat, simple images score higher (DDPO's compressibility reward)."""

    modality = "image"
    differentiable = False
    scale = "minus the JPEG file size in kilobytes at quality 95: near 0 for flat images, lower for detail"
    sign = -1.0

    def __init__(self, quality: int = 95, batch_size: int = 64):
        super().__init__(batch_size=batch_size)
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = quality

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.sign * jpeg_kilobytes(samples, self.quality)


class JPEGIncompressibility(JPEGCompressibility):
    """``+kB`` of the JPEG: detailed, noisy images score higher (DDPO's incompressibility reward)."""

    scale = "the JPEG file size in kilobytes at quality 95: near 0 for flat images, higher for detail"
    sign = 1.0
