"""Checking and converting what a reward is given: images, videos, texts, vectors, and their prompts.

Accepted forms, all batch-first:

* image: a float tensor (B, C, H, W) in [0, 1] with C in {1, 3}; a list of PIL images; a float NumPy array
  (B, H, W, C) in [0, 1] (what diffusers returns for ``output_type="np"``).
* video: a float tensor (B, T, C, H, W) in [0, 1]; a list of lists of PIL frames; a NumPy array
  (B, T, H, W, C) in [0, 1].
* text: a list of strings (a single string is a batch of one).
* vector: a float tensor (B, d), e.g. samples of the analytic Gaussian mixture.

Every other input is refused with a message that says what was expected and what came instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["MODALITIES", "RANGE_TOLERANCE", "as_batch", "as_prompts", "pil_to_tensor"]

MODALITIES = ("image", "video", "text", "vector")
#: Pixel values may stray this far outside [0, 1] (float rounding) before they are refused; they are clamped.
RANGE_TOLERANCE = 1e-5


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a float32 (C, H, W) tensor in [0, 1]; grey stays one channel, anything else is RGB."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _stack_pils(images: Sequence[Any], what: str) -> torch.Tensor:
    frames = [pil_to_tensor(im) for im in images]
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"{what} must all have one size and mode, got {sorted(shapes)}; resize them first")
    return torch.stack(frames)


def _check_pixels(x: torch.Tensor, modality: str, layout: str) -> torch.Tensor:
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{modality} tensors must be float in [0, 1], got dtype {x.dtype}; "
            "for uint8 pixels pass x.float() / 255"
        )
    ndim = {"image": 4, "video": 5}[modality]
    if x.ndim != ndim:
        hint = " (add a batch dimension with x[None])" if x.ndim == ndim - 1 else ""
        raise ValueError(f"{modality} tensors must be {layout}, got shape {tuple(x.shape)}{hint}")
    channels = x.shape[-3]
    if channels not in (1, 3):
        raise ValueError(f"{modality} tensors must be {layout} with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[-1] == 0 or x.shape[-2] == 0 or (modality == "video" and x.shape[1] == 0):
        raise ValueError(f"empty {modality} batch: shape {tuple(x.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{modality} values must be finite; got NaN or inf")
        low, high = float(x.min()), float(x.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{modality} values must lie in [0, 1], got min {low:.4g}, max {high:.4g}; "
            "map [-1, 1] samples with (x + 1) / 2"
        )
    return x.clamp(0, 1) if (low < 0 or high > 1) else x


def _from_numpy(array: np.ndarray, modality: str) -> torch.Tensor:
    ndim = {"image": 4, "video": 5}[modality]
    if array.ndim != ndim:
        layout = "(B, H, W, C)" if modality == "image" else "(B, T, H, W, C)"
        raise ValueError(f"{modality} arrays must be {layout} (channels last), got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).movedim(-1, -3)


def as_batch(samples: Any, modality: str) -> torch.Tensor | list[str]:
    """Check ``samples`` for ``modality`` and return a tensor batch (images, videos, vectors) or a list of
    strings (text). Raises ``TypeError`` / ``ValueError`` with the reason on bad input."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if modality == "text":
        return _as_texts(samples)
    if modality == "vector":
        return _as_vectors(samples)
    layout = "(B, C, H, W)" if modality == "image" else "(B, T, C, H, W)"
    if isinstance(samples, np.ndarray):
        samples = _from_numpy(samples, modality)
    elif isinstance(samples, (list, tuple)):
        samples = _from_pil_lists(samples, modality)
    elif not isinstance(samples, torch.Tensor):
        raise TypeError(
            f"{modality} samples must be a float tensor {layout} in [0, 1], a NumPy array or PIL images; "
            f"got {type(samples).__name__}"
        )
    return _check_pixels(samples, modality, layout)


def _from_pil_lists(samples: Sequence[Any], modality: str) -> torch.Tensor:
    if len(samples) == 0:
        raise ValueError(f"empty {modality} batch")
    if modality == "image":
        return _stack_pils(samples, "images")
    videos = []
    for i, frames in enumerate(samples):
        if not isinstance(frames, (list, tuple)) or len(frames) == 0:
            raise ValueError(f"video {i} must be a non-empty list of PIL frames")
        videos.append(_stack_pils(frames, f"frames of video {i}"))
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) > 1:
        raise ValueError(f"videos must all have the same frame count and size, got {sorted(shapes)}")
    return torch.stack(videos)


def _as_texts(samples: Any) -> list[str]:
    if isinstance(samples, str):
        return [samples]
    if not isinstance(samples, (list, tuple)):
        raise TypeError(f"text samples must be a list of strings, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("empty text batch")
    bad = [type(s).__name__ for s in samples if not isinstance(s, str)]
    if bad:
        raise TypeError(f"text samples must all be strings, got {bad[0]}")
    return list(samples)


def _as_vectors(samples: Any) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor) or not torch.is_floating_point(samples):
        raise TypeError(f"vector samples must be a float tensor (B, d), got {type(samples).__name__}")
    if samples.ndim != 2:
        raise ValueError(f"vector samples must be (B, d), got shape {tuple(samples.shape)}")
    if samples.shape[0] == 0:
        raise ValueError("empty vector batch")
    return samples


def as_prompts(prompts: Any, batch: int) -> list[str] | None:
    """None, one string for the whole batch, or one string per sample."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return [prompts] * batch
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be None, a string, or a list of strings")
    if len(prompts) != batch:
        raise ValueError(
            f"got {len(prompts)} prompts for {batch} samples; give one per sample or a single string"
        )
    return list(prompts)
