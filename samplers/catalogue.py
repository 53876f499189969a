"""Named solver presets with their theoretical convergence order (used by tests, benchmarks and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from .solvers import DDIM, DEIS, DPMSolver, DPMSolverPP, SDEDPMSolverPP, Solver, UniPC

__all__ = ["Preset", "ODE_PRESETS", "SDE_PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    solver: Solver
    #: global order of convergence to the exact ODE solution, in the step size (and so in NFE)
    order: int


def _ode_presets() -> dict[str, Preset]:
    presets = {"ddim": Preset(DDIM(), 1)}
    for p in (1, 2, 3):
        presets[f"dpmsolver-{p}"] = Preset(DPMSolver(p), p)
        presets[f"dpmsolver++{p}s"] = Preset(DPMSolverPP(p, multistep=False), p)
        for basis, label in (("t", "tab"), ("rho", "rhoab"), ("lambda", "logrhoab")):
            presets[f"deis-{label}{p}"] = Preset(DEIS(p, basis=basis), p)
        for variant in ("bh1", "bh2"):
            presets[f"unipc-{variant}-{p}"] = Preset(UniPC(p, variant=variant), p + 1)  # UniC adds one order
    for p in (2, 3):
        presets[f"dpmsolver++{p}m"] = Preset(DPMSolverPP(p), p)
    presets["dpmsolver++2m-heun"] = Preset(DPMSolverPP(2, rule="exact"), 2)
    # diffusers' / the reference code's 3M coefficients: second order (see samplers.coefficients)
    presets["dpmsolver++3m-ref"] = Preset(DPMSolverPP(3, rule="dpmsolver_ref"), 2)
    return presets


ODE_PRESETS: dict[str, Preset] = _ode_presets()
SDE_PRESETS: dict[str, Solver] = {
    "ddim-eta1": DDIM(eta=1.0),
    "sde-dpmsolver++2m": SDEDPMSolverPP(2),
    "sde-dpmsolver++3m": SDEDPMSolverPP(3),
    "sde-dpmsolver++2m-eta0.5": SDEDPMSolverPP(2, eta=0.5),
}


def get_preset(name: str) -> Solver:
    """A solver by preset name (see ``ODE_PRESETS`` and ``SDE_PRESETS``)."""
    key = name.lower()
    if key in ODE_PRESETS:
        return ODE_PRESETS[key].solver
    if key in SDE_PRESETS:
        return SDE_PRESETS[key]
    raise ValueError(f"unknown solver {name!r}; available: {sorted(ODE_PRESETS) + sorted(SDE_PRESETS)}")
