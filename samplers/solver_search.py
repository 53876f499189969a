"""Solver-schedule search: per-step rules and time points fitted to a many-step teacher.

The Unified Sampling Framework (Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of
Diffusion Probabilistic Models", Sec. 3-4) views a solver as a *schedule* of per-step decisions -- the
order (number of history points), the prediction type, the polynomial basis / coefficient rule, whether a
corrector runs, and the time points -- and searches them for a given model and budget. S³ (Frankel et al.
2024) and USF both search against a reference (a many-step teacher). Here:

* :class:`RuleSchedule` runs one rule per grid step (a :class:`~samplers.solvers.Solver` each, sharing the
  prediction type and the multistep history), as one solver object for :func:`~samplers.solvers.sample`,
  :func:`~samplers.calibrate.fit_grid` and the schedulers;
* :func:`search_rules` picks the rule of every step by coordinate descent on the teacher-matching error
  RMS(solve(x_T) - x_ref) / RMS(x_ref) over a candidate set (each candidate differs from the current
  schedule in one step only, so each sweep costs ``steps x candidates`` solver runs);
* :func:`search_solver_schedule` alternates that with :func:`~samplers.calibrate.fit_grid` (the time
  points) for each prediction type and keeps the best, returning a
  :class:`~samplers.calibrate.CalibratedGrid` whose ``scheduler_config()``
  loads into :class:`~samplers.schedulers.ExponentialIntegratorScheduler`.

The search replaces USF's predictor-guided evolutionary search by exhaustive coordinate descent, which is
affordable because each candidate costs only one N-step run on a few calibration samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .calibrate import CalibratedGrid, fit_grid, relative_rms
from .denoiser import Denoiser
from .grids import TimeGrid
from .solvers import Solver, sample

__all__ = ["RuleSchedule", "RULE_CANDIDATES", "search_rules", "search_solver_schedule"]

#: The per-step choices searched by default (the prediction type is searched per run): order 1-3 with the
#: exact, midpoint and UniPC coefficient rules, with and without the UniC corrector on the step, and the
#: exact rule with a polynomial in t or in rho = sigma/alpha instead of log-SNR (DEIS's tAB / rhoAB bases).
RULE_CANDIDATES: tuple[dict[str, Any], ...] = tuple(
    {"order": order, "rule": rule, "corrector": corrector}
    for order, rule in [(1, "exact"), (2, "exact"), (2, "midpoint"), (3, "exact"),
                        (2, "unipc_bh1"), (2, "unipc_bh2"), (3, "unipc_bh1"), (3, "unipc_bh2")]
    for corrector in (None, "unipc_bh1", "unipc_bh2")
) + tuple(
    {"order": order, "rule": "exact", "basis": basis} for order in (2, 3) for basis in ("t", "rho")
)  # fmt: skip


@dataclass(frozen=True)
class RuleSchedule:
    """One solver rule per grid step: step i uses ``rules[min(i, len(rules) - 1)]``.

    Every rule must be a multistep ODE rule with the same prediction type (they share one history of
    model outputs). A rule's ``lower_order_final`` is its own; searched schedules set it to False, since
    the order of each step is explicit."""

    rules: tuple[Solver, ...]
    name: str = "rule-schedule"

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("a rule schedule needs at least one rule")
        if len({r.prediction for r in self.rules}) > 1:
            raise ValueError("all rules of a run must use the same prediction (data or noise)")
        if len(self.rules) > 1 and not all(r.multistep for r in self.rules):
            raise ValueError("per-step rules must be multistep (singlestep stages cannot be mixed)")
        if any(r.is_stochastic for r in self.rules):
            raise ValueError("per-step rules must be ODE rules (eta = 0)")

    @classmethod
    def from_dicts(cls, rules: Sequence[Mapping[str, Any]], **common: Any) -> RuleSchedule:
        """Rules from :class:`Solver` keyword dicts (``common`` fills keys a dict does not set)."""
        return cls(tuple(Solver(**{"name": f"rule-{i}", **common, **dict(r)}) for i, r in enumerate(rules)))

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rules as the keyword dicts of ``ExponentialIntegratorScheduler(rules=...)``."""
        return [
            {"order": r.order, "prediction": r.prediction, "rule": r.rule, "basis": r.basis,
             "corrector": r.corrector, "lower_order_final": r.lower_order_final}
            for r in self.rules
        ]  # fmt: skip

    def rule_at(self, step: int) -> Solver:
        return self.rules[min(step, len(self.rules) - 1)]

    # the Solver interface, delegated to the rule of the step
    @property
    def order(self) -> int:
        return max(r.order for r in self.rules)

    @property
    def prediction(self) -> str:
        return self.rules[0].prediction

    @property
    def multistep(self) -> bool:
        return True

    @property
    def is_stochastic(self) -> bool:
        return False

    def init(self, x: torch.Tensor, grid: TimeGrid, cond=None):
        return self.rules[0].init(x, grid, cond)

    def step(self, denoiser, state, grid: TimeGrid, noise=None):
        return self.rule_at(state.step).step(denoiser, state, grid, noise)

    def advance(self, state, grid: TimeGrid, noise=None):
        return self.rule_at(state.step).advance(state, grid, noise)

    def evaluations(self, grid: TimeGrid) -> int:
        return grid.steps

    def step_evaluations(self, i: int, grid: TimeGrid):
        return self.rule_at(i).step_evaluations(i, grid)


def _error(denoiser, solver, x, reference, grid, cond) -> float:
    try:
        return relative_rms(sample(denoiser, x, grid, solver, cond=cond), reference)
    except ValueError:  # a rule that produced NaN/Inf model inputs: the candidate diverged
        return math.inf


def search_rules(
    denoiser: Denoiser,
    x: torch.Tensor,
    reference: torch.Tensor,
    grid: TimeGrid,
    *,
    start: RuleSchedule,
    cond: Mapping[str, torch.Tensor] | None = None,
    candidates: Sequence[Mapping[str, Any]] = RULE_CANDIDATES,
    sweeps: int = 2,
) -> tuple[RuleSchedule, float, int]:
    """Coordinate descent over the rule of each step on a fixed ``grid``, from ``start`` (expanded to one
    rule per step). Each sweep visits the steps in order and, at each, keeps the candidate (same prediction
    as ``start``) with the lowest teacher-matching error given the other steps' rules; it stops after
    ``sweeps`` sweeps or one without improvement. Returns (schedule, its error, solver runs made)."""
    prediction = start.prediction
    rules = [replace(start.rule_at(i), lower_order_final=False, name=f"rule-{i}") for i in range(grid.steps)]
    options = [Solver(**{"prediction": prediction, **dict(c)}) for c in candidates]
    best = _error(denoiser, RuleSchedule(tuple(rules)), x, reference, grid, cond)
    runs = 1
    for _ in range(sweeps):
        improved = False
        for i in range(grid.steps):
            for option in options:
                trial = list(rules)
                trial[i] = replace(option, lower_order_final=False, name=f"rule-{i}")
                if trial[i] == rules[i]:
                    continue
                error = _error(denoiser, RuleSchedule(tuple(trial)), x, reference, grid, cond)
                runs += 1
                if error < best * (1 - 1e-6):
                    rules, best, improved = trial, error, True
        if not improved:
            break
    return RuleSchedule(tuple(rules)), best, runs


def search_solver_schedule(
    denoiser: Denoiser,
    x: torch.Tensor,
    reference: torch.Tensor,
    init: TimeGrid,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    starts: Sequence[Solver] = (),
    candidates: Sequence[Mapping[str, Any]] = RULE_CANDIDATES,
    rounds: int = 2,
    sweeps: int = 2,
    grid_evaluations: int = 150,
) -> CalibratedGrid:
    """Search the per-step rules and the time points of an N-step schedule against a teacher.

    For each starting solver in ``starts`` (by default DPM-Solver++(2M) exact and UniPC-bh2 on data
    predictions, and their noise-prediction versions): ``rounds`` times, search the rules on the current
    grid (:func:`search_rules`), then refit the grid for those rules (:func:`fit_grid`, at most
    ``grid_evaluations`` runs). The schedule with the lowest calibration error is returned with its grid,
    its rules and the total cost (all starts, all runs). ``init`` fixes the step count and end points."""
    if not starts:
        starts = [
            Solver(order=2, prediction=p, rule=r, corrector=c)
            for p in ("data", "noise")
            for r, c in (("exact", None), ("unipc_bh2", "unipc_bh2"))
        ]
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    nfe_before, clock = denoiser.nfe, time.perf_counter()
    initial = _error(denoiser, starts[0], x, reference, init, cond)
    runs = 1
    best: tuple[float, RuleSchedule, CalibratedGrid] | None = None
    for start in starts:
        schedule, grid = RuleSchedule((start,)), init
        fit = None
        for _ in range(rounds):
            schedule, error, made = search_rules(
                denoiser, x, reference, grid, start=schedule, cond=cond, candidates=candidates, sweeps=sweeps
            )
            runs += made
            fit = fit_grid(
                denoiser, schedule, x, reference, grid, cond=cond, max_evaluations=grid_evaluations
            )
            runs += fit.evaluations
            grid = fit.grid(init.schedule)
        if best is None or fit.error < best[0]:
            best = (fit.error, schedule, fit)
    error, schedule, fit = best
    return CalibratedGrid(
        sigmas=fit.sigmas,
        solver=f"rules({schedule.prediction})",
        initial_error=initial,
        error=error,
        nfe=denoiser.nfe - nfe_before,
        seconds=time.perf_counter() - clock,
        evaluations=runs,
        rules=tuple(schedule.as_dicts()),
    )
