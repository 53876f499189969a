"""Gaussian draws for search methods, from a generator on any device.

diffusers' convention (``randn_tensor``) is to draw on the generator's device and move the result: a CPU
generator then gives the same noise whether the model runs on the CPU or a GPU, and a CUDA chain accepts the
CPU generators pipelines are usually called with (``torch.randn`` itself refuses a generator on another
device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["randn"]


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> torch.Tensor:
    """Standard normal samples of ``shape`` in ``dtype`` on ``device``, drawn on the generator's device."""
    source = generator.device if generator is not None else torch.device(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=source).to(device)
