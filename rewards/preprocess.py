"""CLIP-style image preprocessing in torch, so rewards built on it stay differentiable in the pixels.

The reference pipelines (OpenAI CLIP, open_clip, transformers' ``CLIPImageProcessor``) resize the shorter
side to ``size`` with bicubic interpolation, centre-crop ``size`` x ``size`` and normalise by the channel
mean and std. Here the same is done on float tensors: torchvision's antialiased bicubic resize (built to
match PIL's), clamped to [0, 1] as PIL's uint8 output is. Grey images are repeated to three channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "PIL_RESAMPLE", "clip_preprocess", "resize_center_crop"]

#: PIL resampling filter numbers, as transformers image processors store them -> torchvision mode names.
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_center_crop(
    images: torch.Tensor,
    size: int | tuple[int, int],
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> torch.Tensor:
    """Resize (B, C, H, W) so the shorter side fits ``size`` (antialiased), then centre-crop it."""
    height, width = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        new = (max(height, round(h * scale)), max(width, round(w * scale)))
        images = TF.resize(images, list(new), interpolation=interpolation, antialias=True)
        images = images.clamp(0, 1)
        images = TF.center_crop(images, [height, width])
    return images


def clip_preprocess(
    images: torch.Tensor,
    size: int | tuple[int, int],
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> normalised (B, 3, size, size), as CLIP's image encoders expect."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = resize_center_crop(images, size)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
