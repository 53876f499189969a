"""Denoiser adapter: any network ``net(x, t, **cond)`` -> data prediction x0 and noise prediction eps.

With x = alpha x0 + sigma eps, the four parametrisations in use convert as
  epsilon:       eps = out,                   x0 = (x - sigma eps) / alpha
  sample:        x0 = out,                    eps = (x - alpha x0) / sigma
  v_prediction:  v = alpha eps - sigma x0     (Salimans & Ho 2022, eq. for v),
                 x0 = (alpha x - sigma v)/(alpha^2 + sigma^2),  eps = (sigma x + alpha v)/(alpha^2 + sigma^2)
  flow:          v = eps - x0                 (velocity dx/dt for alpha = 1 - t, sigma = t),
                 x0 = (x - sigma v)/(alpha + sigma),            eps = (x + alpha v)/(alpha + sigma)
so every solver can work with whichever of x0/eps its formula integrates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Denoiser", "DenoiserOutput", "DynamicThreshold", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


@dataclass
class DenoiserOutput:
    x0: torch.Tensor
    eps: torch.Tensor


@dataclass(frozen=True)
class DynamicThreshold:
    """Dynamic thresholding of x0 (Saharia et al. 2022, Sec. 2.3; DPM-Solver++, Lu et al. 2022b, Sec. 5):
    s = clamp(quantile(|x0|, ratio), 1, max_value) per sample, then x0 <- clamp(x0, -s, s) / s."""

    ratio: float = 0.995
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.ratio <= 1):
            raise ValueError("threshold ratio must be in (0, 1]")
        if self.max_value < 1:
            raise ValueError("threshold max_value must be >= 1")

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        flat = x0.reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs().float(), self.ratio, dim=1).to(x0.dtype)
        s = s.clamp(min=1, max=self.max_value).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.clamp(x0, -s, s) / s


def _expand_rows(value: torch.Tensor, batch: int) -> torch.Tensor:
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"conditioning tensor has batch {value.shape[0]}, expected 1 or {batch}")


class Denoiser:
    """Wraps ``net(x, t, **cond)`` of any prediction type into x0/eps predictions.

    Args:
        net: the model; called as ``net(x, time_fn(t), **cond)`` with ``t`` a (B,) tensor.
        prediction_type: one of ``epsilon``, ``sample``, ``v_prediction``, ``flow``.
        guidance_scale: classifier-free guidance weight w (Ho & Salimans 2022): out = u + w (c - u),
            applied to the raw network output; cond and uncond run in one batched call.
        uncond: keyword inputs of the unconditional branch (rows of batch 1 are broadcast).
        threshold: optional :class:`DynamicThreshold` applied to x0 (eps is recomputed from it).
        time_fn: maps solver time to the network's time input (e.g. ``lambda t: 1000 * t`` for
            diffusers flow transformers); identity by default.

    ``nfe`` counts network evaluations: one per call, whether or not CFG doubles the batch.
    """

    def __init__(
        self,
        net: Callable[..., Any],
        prediction_type: str = "epsilon",
        *,
        guidance_scale: float | None = None,
        uncond: Mapping[str, torch.Tensor] | None = None,
        threshold: DynamicThreshold | None = None,
        time_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}"
            )
        if guidance_scale is not None and uncond is None:
            raise ValueError("classifier-free guidance needs `uncond` inputs")
        self.net = net
        self.prediction_type = prediction_type
        self.guidance_scale = guidance_scale
        self.uncond = dict(uncond or {})
        self.threshold = threshold
        self.time_fn = time_fn or (lambda t: t)
        self.nfe = 0

    def _raw(self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        time_in = self.time_fn(t)
        if self.guidance_scale is None:
            out = self.net(x, time_in, **cond)
        else:
            b = x.shape[0]
            keys = set(cond) | set(self.uncond)
            both = {}
            for k in keys:
                if k not in cond or k not in self.uncond:
                    raise ValueError(f"conditioning input {k!r} must be given for both cond and uncond")
                both[k] = torch.cat([_expand_rows(self.uncond[k], b), _expand_rows(cond[k], b)])
            out = self.net(torch.cat([x, x]), torch.cat([time_in, time_in]), **both)
            out = _as_tensor_output(out)
            u, c = out.chunk(2)
            out = u + self.guidance_scale * (c - u)
        return _as_tensor_output(out)

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
        cond: Mapping[str, torch.Tensor] | None = None,
    ) -> DenoiserOutput:
        t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t_vec = torch.as_tensor(t, dtype=t_dtype, device=x.device).reshape(-1).expand(x.shape[0])
        out = self._raw(x, t_vec, cond or {}).to(x.dtype)
        self.nfe += 1
        a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        x0, eps = convert_prediction(out, x, a, s, self.prediction_type, x0_limit=self.threshold)
        return DenoiserOutput(x0=x0, eps=eps)


def convert_prediction(
    out: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
    prediction_type: str,
    *,
    x0_limit: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a network output of the given prediction type; see the module docstring.
    ``x0_limit`` (thresholding, clipping) is applied to x0 and eps is recomputed from the limited x0."""
    x0, eps = _parametrisation_to_x0_eps(out, x, alpha, sigma, prediction_type)
    if x0_limit is not None:
        x0 = x0_limit(x0)
        eps = (x - alpha * x0) / sigma
    return x0, eps


def _parametrisation_to_x0_eps(out, x, alpha, sigma, prediction_type) -> tuple[torch.Tensor, torch.Tensor]:
    if prediction_type == "epsilon":
        return (x - sigma * out) / alpha, out
    if prediction_type == "sample":
        return out, (x - alpha * out) / sigma
    if prediction_type == "v_prediction":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
    if prediction_type == "flow":
        norm = alpha + sigma
        return (x - sigma * out) / norm, (x + alpha * out) / norm
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def _as_tensor_output(out: Any) -> torch.Tensor:
    """Accept plain tensors, diffusers ``*Output`` objects (``.sample``) and tuples."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"network returned {type(out).__name__}; expected a tensor or an object with .sample")
