"""Run a diffusers scheduler's own code in float64 (diffusers builds betas, sigmas and steps in float32)."""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any

import numpy as np
import torch


class _Float64Alias(types.ModuleType):
    """A view of ``torch``/``numpy`` whose ``float32`` attribute is the float64 dtype."""

    def __init__(self, module: types.ModuleType, float64: Any):
        super().__init__(module.__name__)
        self._module, self._float64 = module, float64

    def __getattr__(self, name: str) -> Any:
        return self._float64 if name == "float32" else getattr(self._module, name)


@contextlib.contextmanager
def diffusers_float64(scheduler_cls: type):
    """Run a diffusers scheduler's own code in float64 by redirecting its module's ``torch.float32`` and
    ``np.float32`` to float64 (construction, ``set_timesteps`` and ``step`` must all happen inside)."""
    module = sys.modules[scheduler_cls.__module__]
    saved = module.torch, module.np
    module.torch, module.np = _Float64Alias(torch, torch.float64), _Float64Alias(np, np.float64)
    try:
        yield
    finally:
        module.torch, module.np = saved
