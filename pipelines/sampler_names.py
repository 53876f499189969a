"""Sampler names as users type them, from A1111 / ComfyUI or our solver presets, to diffusers-API schedulers.

``resolve_sampler("DPM++ 2M Karras")`` -> ``SamplerSpec`` building ``DPMSolverPPScheduler(solver_order=2,
use_karras_sigmas=True)`` from a pipeline's scheduler config. Names are matched after normalisation
(lower case, ``++`` -> ``pp``, spaces and dashes -> ``_``), so "DPM++ 2M Karras", "dpmpp_2m_karras" and
"dpmpp-2m karras" are one sampler. A trailing ``karras`` / ``exponential`` picks that sigma grid.

Equivalences used (exact, not approximate): A1111's "Euler" is DDIM (Karras et al. 2022, sec. 3: DDIM is
Euler's method on the probability-flow ODE in x/alpha and sigma/alpha), and "Euler a" is DDIM with eta = 1
(the k-diffusion ancestral step to sigma_down plus sigma_up noise is the DDPM posterior step). The steps
are identical; the timesteps are the model config's grid (diffusers' Euler spaces them slightly
differently: ``linspace(0, T-1, N)`` rather than ``linspace(0, T-1, N+1)[1:]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from samplers import (
    DDIMSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    ExponentialIntegratorScheduler,
    UniPCScheduler,
)
from samplers.catalogue import ODE_PRESETS, SDE_PRESETS

__all__ = ["SamplerSpec", "resolve_sampler", "known_sampler_names", "DEFAULT_SAMPLER"]

DEFAULT_SAMPLER = "DPM++ 2M"


@dataclass(frozen=True)
class SamplerSpec:
    label: str  # A1111-style display name, written to the PNG parameters
    scheduler_class: type
    options: dict[str, Any] = field(default_factory=dict)
    schedule_type: str = ""  # "Karras" / "Exponential" when a sigma grid is forced

    @property
    def a1111_name(self) -> str:
        """The sampler as A1111 (1.9+) writes it, with the schedule type in its own field."""
        suffix = f" {self.schedule_type}"
        if self.schedule_type and self.label.endswith(suffix):
            return self.label[: -len(suffix)]
        return self.label

    def make_scheduler(self, base_config: dict, **overrides: Any):
        """A scheduler of this sampler built from a pipeline's own scheduler config (``overrides`` win)."""
        return self.scheduler_class.from_config(dict(base_config), **{**self.options, **overrides})


_FAMILIES: dict[str, tuple[str, type, dict[str, Any]]] = {
    "dpmpp_2m": ("DPM++ 2M", DPMSolverPPScheduler, {"solver_order": 2}),
    "dpmpp_3m": ("DPM++ 3M", DPMSolverPPScheduler, {"solver_order": 3}),
    "dpmpp_2m_sde": (
        "DPM++ 2M SDE",
        DPMSolverPPScheduler,
        {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
    ),
    "dpmpp_2s": ("DPM++ 2S", DPMSolverPPScheduler, {"solver_order": 2, "singlestep": True}),
    "dpmpp_3s": ("DPM++ 3S", DPMSolverPPScheduler, {"solver_order": 3, "singlestep": True}),
    "uni_pc": ("UniPC", UniPCScheduler, {"solver_order": 2, "solver_type": "bh1"}),
    "uni_pc_bh2": ("UniPC bh2", UniPCScheduler, {"solver_order": 2, "solver_type": "bh2"}),
    "deis": ("DEIS", DEISScheduler, {}),
    "ddim": ("DDIM", DDIMSolverScheduler, {}),
    "euler": ("Euler", ExponentialIntegratorScheduler, {"solver": "ddim"}),
    "euler_a": ("Euler a", DDIMSolverScheduler, {"eta": 1.0, "timestep_spacing": "linspace"}),
}
_ALIASES = {
    "dpmpp2m": "dpmpp_2m",
    "dpm_solver_pp_2m": "dpmpp_2m",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "unipc": "uni_pc",
    "uni_pc_bh1": "uni_pc",
    "unipc_bh2": "uni_pc_bh2",
    "euler_ancestral": "euler_a",
}
_GRIDS = {
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
}


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("++", "pp").replace("+", "p")
    for sep in (" ", "-", "."):
        key = key.replace(sep, "_")
    while "__" in key:
        key = key.replace("__", "_")
    return key.strip("_")


def resolve_sampler(name: str) -> SamplerSpec:
    """The sampler ``name`` names; ``ValueError`` listing the known names otherwise."""
    key = _normalise(name)
    grid_label, grid_options = "", {}
    for suffix, (label, options) in _GRIDS.items():
        if key.endswith("_" + suffix):
            key, grid_label, grid_options = key[: -len(suffix) - 1], label, options
            break
    key = _ALIASES.get(key, key)
    preset = name.strip().lower()
    if key not in _FAMILIES and (preset in ODE_PRESETS or preset in SDE_PRESETS):
        return SamplerSpec(preset, ExponentialIntegratorScheduler, {"solver": preset})
    if key not in _FAMILIES:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(known_sampler_names())}")
    label, cls, options = _FAMILIES[key]
    full_label = f"{label} {grid_label}".strip()
    return SamplerSpec(full_label, cls, {**options, **grid_options}, grid_label)


def known_sampler_names() -> list[str]:
    """Every accepted name: A1111 labels, ComfyUI names (each may end in Karras / Exponential), presets."""
    familiar = [label for label, _, _ in _FAMILIES.values()] + list(_FAMILIES)
    return familiar + sorted(ODE_PRESETS) + sorted(SDE_PRESETS)
