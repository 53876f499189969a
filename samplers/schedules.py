"""Noise schedules: alpha(t), sigma(t), log-SNR lambda(t) = log(alpha/sigma) and its inverse.

A diffusion state is x_t = alpha(t) x_0 + sigma(t) eps. Every solver in this package works in
lambda-time (DPM-Solver, Lu et al. 2022, Sec. 3.1), so every schedule must invert lambda -> t.
All computations are float64; times are tensors of any shape.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

__all__ = [
    "NoiseSchedule",
    "DiscreteVPSchedule",
    "ContinuousVPSchedule",
    "EDMSchedule",
    "FlowMatchingSchedule",
    "flux_time_shift_mu",
    "schedule_from_diffusers_config",
]

_F64 = torch.float64


def _as_f64(t: Any) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64)


class NoiseSchedule(ABC):
    """A forward process x_t = alpha(t) x_0 + sigma(t) eps on t in [t_min, t_max].

    Sampling runs from ``t_max`` (noise) to ``t_min`` (data); ``lambda_`` is strictly decreasing in t.
    """

    #: Largest time (pure-noise end) and smallest time the model was trained on.
    t_max: float
    t_min: float

    @abstractmethod
    def alpha(self, t: Any) -> torch.Tensor: ...

    @abstractmethod
    def sigma(self, t: Any) -> torch.Tensor: ...

    def lambda_(self, t: Any) -> torch.Tensor:
        """Half log-SNR, lambda(t) = log alpha(t) - log sigma(t)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    @abstractmethod
    def t_of_lambda(self, lam: Any) -> torch.Tensor:
        """The inverse of :meth:`lambda_` on [t_min, t_max]."""

    def warp(self, t: torch.Tensor) -> torch.Tensor:
        """Map a uniformly spaced time to the time actually visited (identity except for shifted flows)."""
        return t

    def is_variance_preserving(self) -> bool:
        return False


class DiscreteVPSchedule(NoiseSchedule):
    """DDPM with N discrete betas (Ho et al. 2020), extended to continuous t in [0, N-1].

    Follows diffusers' convention: the VE-sigma sqrt((1 - abar)/abar) is linearly interpolated between
    integer timesteps, and alpha = 1/sqrt(1 + sigma_ve^2), sigma = sigma_ve * alpha. With that
    convention lambda = -log sigma_ve is inverted exactly, interval by interval.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = _as_f64(alphas_cumprod).flatten()
        if abar.numel() < 2 or not torch.all((abar > 0) & (abar < 1)):
            raise ValueError("alphas_cumprod must have >= 2 entries, all strictly between 0 and 1")
        if not torch.all(abar[1:] < abar[:-1]):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = abar
        self.sigmas_ve = torch.sqrt((1 - abar) / abar)
        self.num_train_timesteps = abar.numel()
        self.t_min = 0.0
        self.t_max = float(abar.numel() - 1)

    @classmethod
    def from_betas(
        cls,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: Any = None,
    ) -> DiscreteVPSchedule:
        """Build from the beta schedules diffusers knows (``linear``, ``scaled_linear``,
        ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021, eq. 17) or explicit ``trained_betas``)."""
        n = num_train_timesteps
        if trained_betas is not None:
            betas = _as_f64(trained_betas)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=_F64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=_F64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":

            def abar(u: float) -> float:
                return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = _as_f64([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)])
        else:
            raise ValueError(
                f"unknown beta_schedule {beta_schedule!r}; expected linear, scaled_linear, "
                "squaredcos_cap_v2 or trained_betas"
            )
        if betas.ndim != 1 or not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a 1-D sequence in (0, 1)")
        return cls(torch.cumprod(1 - betas, dim=0))

    def _sigma_ve(self, t: Any) -> torch.Tensor:
        t = _as_f64(t)
        if torch.any((t < self.t_min - 1e-9) | (t > self.t_max + 1e-9)):
            raise ValueError(f"time outside [{self.t_min}, {self.t_max}]")
        t = t.clamp(self.t_min, self.t_max)
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        frac = t - lo
        s = self.sigmas_ve
        return s[lo] + frac * (s[lo + 1] - s[lo])

    def alpha(self, t: Any) -> torch.Tensor:
        return 1 / torch.sqrt(1 + self._sigma_ve(t) ** 2)

    def sigma(self, t: Any) -> torch.Tensor:
        s = self._sigma_ve(t)
        return s / torch.sqrt(1 + s**2)

    def lambda_(self, t: Any) -> torch.Tensor:
        return -torch.log(self._sigma_ve(t))

    def t_of_lambda(self, lam: Any) -> torch.Tensor:
        target = torch.exp(-_as_f64(lam))
        s = self.sigmas_ve
        if torch.any((target < s[0] * (1 - 1e-12)) | (target > s[-1] * (1 + 1e-12))):
            raise ValueError("lambda outside the schedule's range")
        idx = torch.searchsorted(s, target.clamp(s[0], s[-1])).clamp(1, s.numel() - 1)
        lo, hi = s[idx - 1], s[idx]
        return (idx - 1).to(_F64) + (target - lo) / (hi - lo)

    def is_variance_preserving(self) -> bool:
        return True


class ContinuousVPSchedule(NoiseSchedule):
    """Continuous VP-SDE with linear beta(t) = beta_0 + t (beta_1 - beta_0) (Song et al. 2021),
    log alpha(t) = -t^2 (beta_1 - beta_0)/4 - t beta_0/2; inverse from DPM-Solver, Lu et al. 2022, App. D."""

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0
    ):
        if not (0 < beta_min < beta_max):
            raise ValueError("need 0 < beta_min < beta_max")
        if not (0 < t_min < t_max):
            raise ValueError("need 0 < t_min < t_max")
        self.beta_0, self.beta_1 = beta_min, beta_max
        self.t_min, self.t_max = t_min, t_max

    def _log_alpha(self, t: Any) -> torch.Tensor:
        t = _as_f64(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha(self, t: Any) -> torch.Tensor:
        return torch.exp(self._log_alpha(t))

    def sigma(self, t: Any) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def lambda_(self, t: Any) -> torch.Tensor:
        la = self._log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_of_lambda(self, lam: Any) -> torch.Tensor:
        lam = _as_f64(lam)
        # log(1 + e^{-2 lambda}) = -2 log alpha; solve the quadratic in t.
        tmp = 2 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2 * lam, torch.zeros_like(lam))
        delta = self.beta_0**2 + tmp
        return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)

    def is_variance_preserving(self) -> bool:
        return True


class EDMSchedule(NoiseSchedule):
    """Variance exploding in the EDM parametrisation (Karras et al. 2022): alpha = 1, sigma(t) = t."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError("need 0 < sigma_min < sigma_max")
        self.t_min, self.t_max = sigma_min, sigma_max

    def alpha(self, t: Any) -> torch.Tensor:
        return torch.ones_like(_as_f64(t))

    def sigma(self, t: Any) -> torch.Tensor:
        return _as_f64(t).clone()

    def lambda_(self, t: Any) -> torch.Tensor:
        return -torch.log(_as_f64(t))

    def t_of_lambda(self, lam: Any) -> torch.Tensor:
        return torch.exp(-_as_f64(lam))


class FlowMatchingSchedule(NoiseSchedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t on t in [0, 1] (Lipman et al. 2023).

    ``shift`` (SD3, Esser et al. 2024, eq. 23) or ``mu`` (Flux's resolution-dependent shift, shift = e^mu)
    warps uniformly spaced times: t' = s t / (1 + (s - 1) t). The warp changes which times a grid
    visits, not alpha/sigma themselves.
    """

    def __init__(self, shift: float = 1.0, mu: float | None = None, t_min: float = 0.0, t_max: float = 1.0):
        if mu is not None:
            shift = math.exp(mu)
        if shift <= 0:
            raise ValueError("shift must be positive")
        if not (0 <= t_min < t_max <= 1):
            raise ValueError("need 0 <= t_min < t_max <= 1")
        self.shift = float(shift)
        self.t_min, self.t_max = t_min, t_max

    def alpha(self, t: Any) -> torch.Tensor:
        return 1 - _as_f64(t)

    def sigma(self, t: Any) -> torch.Tensor:
        return _as_f64(t).clone()

    def t_of_lambda(self, lam: Any) -> torch.Tensor:
        return torch.sigmoid(-_as_f64(lam))

    def warp(self, t: torch.Tensor) -> torch.Tensor:
        s = self.shift
        return s * t / (1 + (s - 1) * t)


def flux_time_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's dynamic shift: mu linear in the number of image tokens (diffusers' ``calculate_shift``)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def schedule_from_diffusers_config(config: Any) -> NoiseSchedule:
    """Build a schedule from a diffusers scheduler config (dict or FrozenDict).

    Flow-matching configs (``use_flow_sigmas``/``shift`` in FlowMatch* schedulers, or
    ``prediction_type == "flow_prediction"``) give :class:`FlowMatchingSchedule`; everything else is
    read as DDPM betas.
    """
    cfg = dict(config)
    class_name = str(cfg.get("_class_name", ""))
    flow = (
        "FlowMatch" in class_name
        or cfg.get("use_flow_sigmas")
        or cfg.get("prediction_type") == "flow_prediction"
        # a FlowMatch* config built in code carries no _class_name, but has a shift and no betas
        or ("beta_start" not in cfg and ("shift" in cfg or "use_dynamic_shifting" in cfg))
    )
    if flow:
        shift = cfg.get("shift") if "shift" in cfg else cfg.get("flow_shift")
        return FlowMatchingSchedule(shift=float(shift or 1.0))
    return DiscreteVPSchedule.from_betas(
        beta_schedule=cfg.get("beta_schedule", "linear"),
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        beta_start=float(cfg.get("beta_start", 0.0001)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        trained_betas=cfg.get("trained_betas"),
    )
