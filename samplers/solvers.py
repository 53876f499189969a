"""One exponential-integrator engine; DDIM, DPM-Solver, DPM-Solver++, SDE-DPM-Solver++, DEIS and UniPC
are presets of it (the view of the Unified Sampling Framework, Liu et al. 2023: a solver is a
per-step choice of order, prediction type, polynomial basis, corrector and stochasticity).

Usage::

    solver = DPMSolverPP(order=2)
    x0 = sample(denoiser, x_T, grid, solver)             # functional loop
    state = solver.init(x_T, grid)                       # or step by step
    while state.step < grid.steps:
        state = solver.step(denoiser, state, grid)
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from .coefficients import BASES, RULES, StepCoefficients, step_coefficients
from .denoiser import Denoiser, DenoiserOutput
from .grids import TimeGrid, make_grid
from .noise import NoiseSource, as_noise_source
from .state import SolverState

__all__ = [
    "Solver",
    "Evaluation",
    "sample",
    "finest_grid",
    "DDIM",
    "DPMSolver",
    "DPMSolverPP",
    "SDEDPMSolverPP",
    "DEIS",
    "UniPC",
]

_DEFAULT_R = {
    2: (0.5,),
    3: (1.0 / 3.0, 2.0 / 3.0),
}  # DPM-Solver-2/-3 intermediate points (Lu et al. 2022, Alg. 1, 2)
_AUTO_LOWER_ORDER_FINAL_BELOW = 15  # diffusers' threshold for lower_order_final=True


@dataclass(frozen=True)
class Solver:
    """A solver = the rule used at every step of the exponential-integrator engine.

    Args:
        order: 1-3. Multistep solvers warm up with lower orders while history accumulates.
        prediction: ``"data"`` integrates x0 (DPM-Solver++), ``"noise"`` integrates eps (DPM-Solver, DEIS).
        rule: how the integral of the interpolating polynomial is taken (see :mod:`.coefficients`).
        basis: variable of the interpolating polynomial: ``lambda`` (log-SNR), ``t`` or ``rho`` = sigma/alpha.
        multistep: reuse past model outputs (Adams-Bashforth type) or take intermediate stages (singlestep).
        corrector: ``None`` or a UniC variant (``"unipc_bh1"``/``"unipc_bh2"``), Zhao et al. 2023, Alg. 2.
        eta: stochasticity; 0 is the probability-flow ODE, 1 the reverse SDE (SA-Solver's tau, eq. 14).
        lower_order_final: reduce the order of the last steps; ``None`` = only with fewer than 15 steps.
        stages: singlestep intermediate points r_k in (0, 1) (defaults: 1/2; 1/3 and 2/3).
    """

    order: int = 2
    prediction: Literal["data", "noise"] = "data"
    rule: str = "midpoint"
    basis: str = "lambda"
    multistep: bool = True
    corrector: str | None = None
    eta: float = 0.0
    lower_order_final: bool | None = None
    stages: tuple[float, ...] | None = None
    name: str = "solver"

    def __post_init__(self) -> None:
        if not isinstance(self.order, int) or not 1 <= self.order <= 3:
            raise ValueError(f"{self.name}: order must be 1, 2 or 3, got {self.order!r}")
        if self.prediction not in ("data", "noise"):
            raise ValueError(f"{self.name}: prediction must be 'data' or 'noise', got {self.prediction!r}")
        if self.rule not in RULES:
            raise ValueError(f"{self.name}: unknown rule {self.rule!r}; expected one of {RULES}")
        if self.basis not in BASES:
            raise ValueError(f"{self.name}: unknown basis {self.basis!r}; expected one of {BASES}")
        if self.basis != "lambda" and self.rule != "exact":
            raise ValueError(f"{self.name}: basis {self.basis!r} needs rule='exact'")
        if self.corrector not in (None, "unipc_bh1", "unipc_bh2"):
            raise ValueError(f"{self.name}: corrector must be None, 'unipc_bh1' or 'unipc_bh2'")
        if not (self.eta >= 0 and math.isfinite(self.eta)):
            raise ValueError(f"{self.name}: eta must be a finite number >= 0, got {self.eta!r}")
        if self.eta > 0 and (self.rule.startswith("unipc") or self.corrector or not self.multistep):
            raise ValueError(
                f"{self.name}: eta > 0 is supported for multistep DPM-Solver/DEIS rules without corrector"
            )
        if self.corrector and not self.multistep:
            raise ValueError(f"{self.name}: the UniC corrector needs a multistep solver")
        if self.rule.startswith("unipc") and not self.multistep:
            raise ValueError(f"{self.name}: UniPC rules are multistep")
        if self.stages is not None:
            if self.multistep or len(self.stages) != self.order - 1:
                raise ValueError(f"{self.name}: stages needs a singlestep solver and order-1 values")
            if not all(0 < r < 1 for r in self.stages) or list(self.stages) != sorted(set(self.stages)):
                raise ValueError(f"{self.name}: stages must be increasing values in (0, 1)")

    # ------------------------------------------------------------------ public API
    @property
    def is_stochastic(self) -> bool:
        return self.eta > 0

    def init(
        self, x: torch.Tensor, grid: TimeGrid, cond: Mapping[str, torch.Tensor] | None = None
    ) -> SolverState:
        """Validate the grid and wrap the starting sample x (at grid index 0). Grids with fewer steps than
        ``order`` are fine: a multistep run then never gathers enough history to reach its full order."""
        if self.prediction == "noise" and grid.alpha_values[0] == 0:
            raise ValueError(f"{self.name}: noise prediction cannot start at alpha = 0; start at t < t_max")
        if not self.multistep and not math.isfinite(grid.lambdas[0]):
            raise ValueError(
                f"{self.name}: singlestep stages need a finite start log-SNR; start at t < t_max"
            )
        return SolverState(x=x, cond=dict(cond or {}))

    def step(
        self,
        denoiser: Denoiser,
        state: SolverState,
        grid: TimeGrid,
        noise: NoiseSource | torch.Generator | int | None = None,
    ) -> SolverState:
        """Advance ``state`` from grid index ``state.step`` to ``state.step + 1``, calling ``denoiser``."""
        return drive(self.advance(state, grid, noise), denoiser, state.cond)

    def advance(
        self,
        state: SolverState,
        grid: TimeGrid,
        noise: NoiseSource | torch.Generator | int | None = None,
    ) -> Generator[Evaluation, DenoiserOutput, SolverState]:
        """One step as a coroutine: yields each :class:`Evaluation` the step needs, receives the model's
        :class:`DenoiserOutput` for it, and returns the new state. :meth:`step` drives it with a
        denoiser; the diffusers-API schedulers drive it with the model outputs a pipeline hands them."""
        i = state.step
        if not 0 <= i < grid.steps:
            raise ValueError(f"state is at step {i}; the grid has steps 0..{grid.steps - 1}")
        out = yield Evaluation(state.x, grid.t[i], grid.alpha_values[i], grid.sigma_values[i], i)
        m = out.x0 if self.prediction == "data" else out.eps
        if self.multistep:
            return self._multistep(state, grid, m, noise)
        return (yield from self._singlestep(state, grid, m))

    def evaluations(self, grid: TimeGrid) -> int:
        """Model evaluations (NFE) a full run over ``grid`` costs."""
        if self.multistep:
            return grid.steps
        return sum(self._order_at(i, grid, self.order) for i in range(grid.steps))

    def step_evaluations(self, i: int, grid: TimeGrid) -> list[tuple[float, float, float]]:
        """(t, alpha, sigma) of the model evaluations of grid step i: the grid point, then any stages."""
        points = [(float(grid.t[i]), grid.alpha_values[i], grid.sigma_values[i])]
        if not self.multistep:
            p = self._order_at(i, grid, self.order)
            points += [(t, a, s) for t, a, s, _ in self._stage_points(i, grid, p)]
        return points

    # ------------------------------------------------------------------ internals
    def _order_at(self, i: int, grid: TimeGrid, available: int) -> int:
        return order_at(self.order, self.lower_order_final, i, grid, available)

    def _coefs(self, rule, lams, i_from, lam_to, a_to, s_to, grid, corrector=False) -> StepCoefficients:
        """Step coefficients, memoised on the grid (they depend on the grid points and the rule only)."""
        key = (
            rule,
            tuple(lams),
            i_from,
            lam_to,
            a_to,
            s_to,
            corrector,
            self.prediction,
            self.eta,
            self.basis,
        )
        cached = grid.step_cache.get(key)
        if cached is None:
            cached = step_coefficients(
                rule,
                lams,
                lam_to,
                grid.alpha_values[i_from],
                grid.sigma_values[i_from],
                a_to,
                s_to,
                data=self.prediction == "data",
                eta=self.eta,
                basis=self.basis,
                basis_of_lambda=_basis_function(self.basis, grid),
                corrector=corrector,
            )
            grid.step_cache[key] = cached
        return cached

    def _multistep(self, state, grid, m, noise) -> SolverState:
        i, lam = state.step, grid.lambdas
        x = state.x
        if self.corrector and state.x_prev is not None and state.prev_order > 0 and math.isfinite(lam[i - 1]):
            # UniC (Zhao et al. 2023, Alg. 2): re-solve the last step with m_i as an extra node.
            p = state.prev_order
            hist = list(zip(state.history_steps, state.history, strict=True))[::-1][:p]
            lams = [lam[j] for j, _ in hist] + [lam[i]]
            c = self._coefs(
                self.corrector, lams, i - 1, lam[i], grid.alpha_values[i], grid.sigma_values[i], grid, True
            )
            x = _combine(c, state.x_prev, [h for _, h in hist] + [m])
        steps = (*state.history_steps, i)[-self.order :]
        history = (*state.history, m)[-self.order :]
        # newest first; nodes at lambda = -inf (flow start, alpha = 0) carry no polynomial information
        nodes = [
            (j, h) for j, h in zip(steps[::-1], history[::-1], strict=True) if math.isfinite(lam[j])
        ] or [(i, m)]
        p = self._order_at(i, grid, len(nodes))
        nodes = nodes[:p]
        c = self._coefs(
            self.rule,
            [lam[j] for j, _ in nodes],
            i,
            lam[i + 1],
            grid.alpha_values[i + 1],
            grid.sigma_values[i + 1],
            grid,
        )
        x_next = _combine(c, x, [h for _, h in nodes])
        if c.noise_coef > 0:
            x_next = x_next + c.noise_coef * as_noise_source(noise)(x, lam[i], lam[i + 1])
        return replace(
            state, x=x_next, step=i + 1, history=history, history_steps=steps, x_prev=x, prev_order=p
        )

    def _stage_points(self, i: int, grid: TimeGrid, p: int) -> list[tuple[float, float, float, float]]:
        """(t, alpha, sigma, lambda) of the intermediate stages of singlestep step i at order p (memoised on
        the grid: the schedulers list them in set_timesteps and the step uses them again)."""
        if p == 1:
            return []
        lam_s, lam_t = grid.lambdas[i], grid.lambdas[i + 1]
        rs = self.stages if (self.stages and p == self.order) else _DEFAULT_R[p]
        key = ("stages", lam_s, lam_t, rs)  # by value, like the coefficients: valid on any grid
        if key in grid.step_cache:
            return grid.step_cache[key]
        if grid.schedule is None:
            raise ValueError(
                f"{self.name}: singlestep stages need grid.schedule (build the grid with make_grid)"
            )
        points = []
        for r in rs:
            t_k = grid.schedule.t_of_lambda(torch.tensor(lam_s + r * (lam_t - lam_s), dtype=torch.float64))
            a_k, s_k = float(grid.schedule.alpha(t_k)), float(grid.schedule.sigma(t_k))
            points.append((float(t_k), a_k, s_k, math.log(a_k) - math.log(s_k)))
        grid.step_cache[key] = points
        return points

    def _singlestep(self, state, grid, m) -> Generator[Evaluation, DenoiserOutput, SolverState]:
        """DPM-Solver-2/-3 (Lu et al. 2022, Alg. 1 and 2; data-prediction form Lu et al. 2022b, Alg. 1):
        intermediate stages at lambda_s + r_k h, each solved exactly from the stages before it; the final
        update uses s and the last stage (with r = 2/3 that is third order)."""
        i = state.step
        p = self._order_at(i, grid, self.order)
        lams, outs = [grid.lambdas[i]], [m]
        if p > 1:
            for k, (t_k, a_k, s_k, lam_k) in enumerate(self._stage_points(i, grid, p), start=1):
                c = self._coefs("exact", lams, i, lam_k, a_k, s_k, grid)
                o = yield Evaluation(_combine(c, state.x, outs), t_k, a_k, s_k, i, k)
                lams.append(lam_k)
                outs.append(o.x0 if self.prediction == "data" else o.eps)
            lams, outs = [lams[0], lams[-1]], [outs[0], outs[-1]]
        rule = self.rule if p == 2 else "exact"  # the midpoint approximation is only second order
        c = self._coefs(
            rule, lams, i, grid.lambdas[i + 1], grid.alpha_values[i + 1], grid.sigma_values[i + 1], grid
        )
        return replace(state, x=_combine(c, state.x, outs), step=i + 1, prev_order=p)


@dataclass(frozen=True)
class Evaluation:
    """A model evaluation a step asks for: the network at sample ``x`` and time ``t`` (with the schedule's
    ``alpha``/``sigma`` there), for grid step ``step`` (``stage`` 0 is the grid point itself)."""

    x: torch.Tensor
    t: torch.Tensor | float
    alpha: float
    sigma: float
    step: int
    stage: int = 0

    @property
    def where(self) -> str:
        t = f"t={float(self.t):.6g}"
        return f"step {self.step} ({t})" if self.stage == 0 else f"step {self.step}, stage {self.stage} ({t})"


def finest_grid(
    solver: Solver, schedule, max_nfe: int, kind: str = "uniform_lambda", **grid_kwargs
) -> TimeGrid:
    """The grid with the most steps whose full run with ``solver`` costs at most ``max_nfe`` evaluations.

    Multistep solvers get ``max_nfe`` steps; singlestep solvers fewer (their last steps may drop order).
    ``grid_kwargs`` go to :func:`make_grid`. Raises ValueError if even ``solver.order`` steps cost more.
    """
    for steps in range(max_nfe, solver.order - 1, -1):
        grid = make_grid(schedule, steps, kind, **grid_kwargs)
        if solver.evaluations(grid) <= max_nfe:
            return grid
    raise ValueError(f"{solver.name} needs more than {max_nfe} model evaluations on any grid")


def _combine(c: StepCoefficients, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """x_coef * x + sum_j model_coefs[j] * outputs[j] (fused multiply-adds, no noise term)."""
    total = torch.mul(outputs[0], c.model_coefs[0])
    for coef, out in zip(c.model_coefs[1:], outputs[1:], strict=True):
        total = total.add_(out, alpha=coef)
    return total.add_(x, alpha=c.x_coef) if c.x_coef != 0 else total


def _basis_function(basis: str, grid: TimeGrid):
    if basis == "lambda":
        return None
    if basis == "rho":
        return lambda lam: np.exp(-np.asarray(lam))
    if grid.schedule is None:
        raise ValueError("the t basis needs grid.schedule (build the grid with make_grid)")
    schedule = grid.schedule
    return lambda lam: schedule.t_of_lambda(torch.as_tensor(lam, dtype=torch.float64)).numpy()


def order_at(order: int, lower_order_final: bool | None, i: int, grid: TimeGrid, available: int) -> int:
    """The order of grid step i: at most ``order`` and the ``available`` history points; 1 into sigma = 0
    (a lambda-polynomial cannot be evaluated at lambda = +inf); with ``lower_order_final`` (None: only with
    fewer than 15 steps, diffusers' rule) at most the number of steps left."""
    order = min(order, available)
    if grid.sigma_values[i + 1] == 0:
        return 1
    lof = grid.steps < _AUTO_LOWER_ORDER_FINAL_BELOW if lower_order_final is None else lower_order_final
    return min(order, grid.steps - i) if lof else order


def drive(plan: Generator[Evaluation, DenoiserOutput, SolverState], denoiser: Denoiser, cond) -> SolverState:
    """Run a step coroutine (``solver.advance(...)``) to its end; ``denoiser`` answers its evaluations."""
    request = next(plan)
    while True:
        try:
            request = plan.send(_evaluate(denoiser, request, cond))
        except StopIteration as done:
            return done.value


def _evaluate(denoiser, request: Evaluation, cond) -> DenoiserOutput:
    out = denoiser(request.x, request.t, request.alpha, request.sigma, cond)
    for name, value in (("x0", out.x0), ("eps", out.eps)):
        if not torch.isfinite(value).all():
            raise ValueError(f"model output ({name}) contains NaN or Inf at {request.where}")
    return out


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    solver: Solver,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    noise: NoiseSource | torch.Generator | int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``solver`` over the whole ``grid`` from x (at grid index 0) and return the final sample."""
    state = solver.init(x, grid, cond)
    source = as_noise_source(noise) if solver.is_stochastic else None
    steps = range(grid.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=solver.name, leave=False)
    for _ in steps:
        state = solver.step(denoiser, state, grid, source)
    return state.x


# ---------------------------------------------------------------------- presets
def DDIM(eta: float = 0.0) -> Solver:
    """DDIM (Song et al. 2021): the first-order exponential integrator (DPM-Solver-1 = DPM-Solver++1).
    eta follows SA-Solver's tau; eta = 0 and eta = 1 coincide with DDIM's eta = 0 and 1."""
    return Solver(order=1, prediction="data", rule="exact", eta=eta, name="DDIM")


def DPMSolver(order: int = 3, *, multistep: bool = False, rule: str = "midpoint", **kw) -> Solver:
    """DPM-Solver-1/2/3 with noise prediction (Lu et al. 2022): singlestep by default (Alg. 1, 2)."""
    return Solver(
        order=order, prediction="noise", rule=rule, multistep=multistep, name=f"DPMSolver-{order}", **kw
    )


def DPMSolverPP(order: int = 2, *, multistep: bool = True, rule: str = "midpoint", **kw) -> Solver:
    """DPM-Solver++ (Lu et al. 2022b) with data prediction: 2M/3M multistep (Alg. 2 and its third-order
    extension), 1S/2S/3S singlestep (Alg. 1). ``rule="exact"`` replaces the midpoint approximation by
    the exact phi_2 integral (diffusers' ``solver_type="heun"``)."""
    kind = "M" if multistep else "S"
    return Solver(
        order=order, prediction="data", rule=rule, multistep=multistep, name=f"DPMSolver++{order}{kind}", **kw
    )


def SDEDPMSolverPP(order: int = 2, *, eta: float = 1.0, rule: str = "midpoint", **kw) -> Solver:
    """SDE-DPM-Solver++ 2M/3M (Lu et al. 2022b, App. B; eta-generalised as in SA-Solver, Xue et al. 2023)."""
    if eta <= 0:
        raise ValueError("SDEDPMSolverPP needs eta > 0 (use DPMSolverPP for the ODE)")
    return Solver(order=order, prediction="data", rule=rule, eta=eta, name=f"SDE-DPMSolver++{order}M", **kw)


def DEIS(order: int = 3, *, basis: str = "t", **kw) -> Solver:
    """DEIS (Zhang & Chen 2023): noise prediction, Lagrange polynomial integrated exactly.
    ``basis="t"`` is tAB, ``"rho"`` is rhoAB, ``"lambda"`` is diffusers' ``logrho`` variant."""
    return Solver(
        order=order, prediction="noise", rule="exact", basis=basis, name=f"DEIS-{basis}AB{order}", **kw
    )


def UniPC(
    order: int = 2,
    *,
    variant: str = "bh2",
    prediction: Literal["data", "noise"] = "data",
    corrector: bool = True,
    **kw,
) -> Solver:
    """UniPC (Zhao et al. 2023): UniP-p predictor plus the UniC corrector, which raises the order to p+1
    at no extra model evaluation. ``variant`` is B(h) = h (``bh1``) or e^h - 1 (``bh2``)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    rule = f"unipc_{variant}"
    return Solver(
        order=order,
        prediction=prediction,
        rule=rule,
        corrector=rule if corrector else None,
        name=f"UniPC-{variant}-{order}",
        **kw,
    )
