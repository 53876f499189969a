"""What every pipeline adapter shares: decoding latents to [0, 1] images for rewards, and the pipeline's
execution device and dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["pipeline_device_dtype", "vae_decoder"]


def pipeline_device_dtype(pipe: Any) -> tuple[torch.device, torch.dtype]:
    """Where and in what dtype the pipeline's denoising network runs."""
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None:
        raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return pipe._execution_device, net.dtype


def vae_decoder(vae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents -> images in [0, 1], (B, C, H, W): ``vae.decode(latents / scaling + shift)``, then
    (x + 1) / 2, as the pipelines' image processors do (``shift_factor`` only where the VAE config has
    one, as SD3 and Flux do). Differentiable (no ``no_grad``), so gradient-based methods can use it."""
    scaling = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(vae.dtype) / scaling
        if shift is not None:
            z = z + float(shift)
        images = vae.decode(z, return_dict=False)[0]
        return ((images.float() + 1) / 2).clamp(0, 1)

    return decode
