"""CLIP-style image preprocessing in torch, so rewards built on it stay differentiable in the pixels.

The reference pipelines (OpenAI CLIP, open_clip, transformers' ``CLIPImageProcessor``) resize the shorter
side to ``size`` with bicubic interpolation, centre-crop ``size`` x ``size`` and normalise by the channel
mean and std. Here the same is done on float tensors: torchvision's antialiased bicubic resize (built to
match PIL's), clamped to [0, 1] as PIL's uint8 output is. Grey images are repeated to three channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PIL_RESAMPLE",
    "as_pair",
    "clip_preprocess",
    "fit_to_model",
    "processor_pixel_config",
    "resize_center_crop",
]

#: PIL resampling filter numbers, as transformers image processors store them -> torchvision mode names.
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``7`` or ``(7, 9)`` as an (height, width) tuple of ints."""
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


def resize_center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W) so the shorter side fits ``size`` (bicubic, antialiased), then centre-crop it."""
    height, width = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        new = (max(height, round(h * scale)), max(width, round(w * scale)))
        images = TF.resize(images, list(new), interpolation=InterpolationMode.BICUBIC, antialias=True)
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


def fit_to_model(
    images: torch.Tensor,
    crop: tuple[int, int],
    resize: tuple[int, int],
    resize_mode: str,
    interpolation: InterpolationMode,
) -> torch.Tensor:
    """Resize and crop (B, C, H, W) as an image processor does: ``"squash"`` resizes to ``crop`` exactly;
    ``"shortest"`` resizes the shorter side to ``min(resize)`` and centre-crops ``crop`` (with bicubic and
    resize == crop, :func:`resize_center_crop`). Antialiased and clamped to [0, 1], as PIL's uint8 output."""
    hw = tuple(images.shape[-2:])
    if resize_mode == "squash":
        if hw != crop:
            images = TF.resize(images, list(crop), interpolation=interpolation, antialias=True).clamp(0, 1)
        return images
    if resize == crop and interpolation == InterpolationMode.BICUBIC:
        return resize_center_crop(images, crop)
    if min(hw) != min(resize):
        images = TF.resize(images, [min(resize)], interpolation=interpolation, antialias=True).clamp(0, 1)
    return TF.center_crop(images, list(crop))


def _size_field(config: Any, key: str) -> Any:
    """A field of a transformers size dict (a plain dict or a ``SizeDict``)."""
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def processor_pixel_config(image_processor: Any, fallback_interpolation: str | None = None) -> dict[str, Any]:
    """What a transformers image processor does to pixels, as keyword arguments of :func:`fit_to_model` plus
    ``mean``/``std``: ``crop``, ``resize``, ``resize_mode``, ``interpolation`` (a torchvision mode name).

    A resampling filter torch lacks (Lanczos, box, Hamming) raises ValueError, or becomes
    ``fallback_interpolation`` when one is given."""
    size, crop = image_processor.size, getattr(image_processor, "crop_size", None)
    shortest = _size_field(size, "shortest_edge")
    if shortest is not None:
        resize, mode = shortest, "shortest"
    else:
        resize, mode = (_size_field(size, "height"), _size_field(size, "width")), "squash"
    if getattr(image_processor, "do_center_crop", True) and crop is not None:
        crop_hw: Any = (_size_field(crop, "height"), _size_field(crop, "width"))
    else:
        crop_hw = resize
    if mode == "squash" and tuple(crop_hw) != tuple(resize):
        raise ValueError("a fixed (height, width) resize followed by a crop is not supported")
    resample = getattr(image_processor, "resample", 3)
    interpolation = PIL_RESAMPLE.get(int(resample if resample is not None else 3), fallback_interpolation)
    if interpolation is None:
        raise ValueError(f"resampling {resample!r} is not supported on tensors")
    normalize = getattr(image_processor, "do_normalize", True)
    return {
        "crop": crop_hw,
        "resize": resize,
        "mean": image_processor.image_mean if normalize else (0.0, 0.0, 0.0),
        "std": image_processor.image_std if normalize else (1.0, 1.0, 1.0),
        "resize_mode": mode,
        "interpolation": interpolation,
    }
