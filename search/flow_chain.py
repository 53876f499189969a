"""Flow models as stochastic chains: the flow -> SDE conversion, on the linear or the VP interpolant.

A flow-matching model (x_t = (1 - t) x0 + t eps, velocity prediction) is sampled by a deterministic ODE,
so particle methods have nothing to choose between. Kim et al. 2025 ("Inference-Time Scaling for Flow
Models via Stochastic Generation and Rollover Budget Forcing", Sec. 4) make it stochastic in two moves:

* SDE conversion: the reverse SDE with the same marginals as the flow's ODE (Song et al. 2021, eq. 6 and
  its probability-flow ODE, eq. 13). Here that is any stochastic exponential-integrator solver of
  :mod:`samplers.solvers` (``eta = 1``: the reverse SDE; 0 < eta < 1 interpolates towards the ODE);
* interpolant conversion: the model re-parametrised onto a variance-preserving schedule
  (:class:`samplers.interpolant.InterpolantConversion`), which keeps the ODE but changes the SDE's noise
  and the grid, and widens what particles explore (their Fig. 3 and Tab. 1: VP-SDE beats linear-SDE).

:func:`flow_sde_chain` builds that chain; any search method then runs on it (:func:`rollover_budget_forcing`
is the one the paper proposes with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from samplers.denoiser import Denoiser
from samplers.grids import make_grid
from samplers.interpolant import InterpolantConversion
from samplers.schedules import ContinuousVPSchedule, FlowMatchingSchedule, NoiseSchedule
from samplers.solvers import SDEDPMSolverPP, Solver

from .chain import SolverChain

__all__ = ["INTERPOLANTS", "flow_sde_chain"]

INTERPOLANTS = ("linear", "vp")


def flow_sde_chain(
    denoiser: Denoiser,
    shape: Sequence[int],
    steps: int,
    *,
    interpolant: Literal["linear", "vp"] = "vp",
    source: NoiseSchedule | None = None,
    vp_schedule: NoiseSchedule | None = None,
    solver: Solver | None = None,
    eta: float = 1.0,
    grid_kind: str = "uniform_t",
    **chain_kwargs: Any,
) -> SolverChain:
    """A stochastic chain over a flow model.

    Args:
        denoiser: the flow model (``prediction_type="flow"``, or any denoiser trained on ``source``).
        shape: of one sample.
        steps: grid steps.
        interpolant: ``"linear"`` runs the SDE on the model's own schedule; ``"vp"`` (default) on
            ``vp_schedule`` through the interpolant conversion.
        source: the schedule the model was trained on (default: flow matching, alpha = 1 - t, sigma = t;
            pass ``FlowMatchingSchedule(shift=...)`` for SD3/Flux-style shifted grids).
        vp_schedule: the VP schedule of ``"vp"`` (default: Song et al.'s linear-beta VP-SDE,
            beta in [0.1, 20], the one Kim et al. use).
        solver: a stochastic solver (default: ``SDEDPMSolverPP(2, eta=eta)``).
        grid_kind: time grid on the schedule the chain runs on (``make_grid`` kinds; ``uniform_t`` handles
            the flow's alpha = 0 start).
        chain_kwargs: passed to :class:`SolverChain` (``cond``, ``decode``, ``prior``, ``budget``,
            ``dtype``, ``device``).
    """
    if interpolant not in INTERPOLANTS:
        raise ValueError(f"interpolant must be one of {INTERPOLANTS}, got {interpolant!r}")
    source = source if source is not None else FlowMatchingSchedule()
    solver = solver if solver is not None else SDEDPMSolverPP(2, eta=eta)
    if not solver.is_stochastic:
        raise ValueError(f"{solver.name} is deterministic; the flow -> SDE conversion needs eta > 0")
    if interpolant == "linear":
        schedule, model = source, denoiser
    else:
        schedule = vp_schedule if vp_schedule is not None else ContinuousVPSchedule()
        model = InterpolantConversion(denoiser, source)
    grid = make_grid(schedule, steps, grid_kind, final="zero")
    return SolverChain(model, grid, solver, shape, **chain_kwargs)
