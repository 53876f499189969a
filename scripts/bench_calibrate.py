"""Calibrated solver configurations against diffusers' schedulers at 5 and 6 evaluations (section 4 of
``docs/benchmarks/solvers.md``; ``scripts/bench_solvers.py`` runs it beside the diffusers comparison).

1. **Gaussian mixture.** The setting of section 1 of ``scripts/bench_solvers.py``: Stable Diffusion's DDPM
   schedule, an epsilon network that is the exact denoiser of a 32-d class-conditional Gaussian mixture,
   error = relative RMS to the exact probability-flow endpoint, every scheduler in the same diffusers loop.
   Its 256 x_T (seed 0) are the held-out set; the calibration set is 256 other x_T (seed 1) with their exact
   endpoints.
2. **The bundled digits model** (``pipelines/assets/digits``: cosine schedule, epsilon UNet, classifier-free
   guidance 2 over a null class, and its config's ``clip_sample``: the x0 prediction clamped to [-1, 1],
   folded into the epsilon every scheduler sees, so that all integrate one ODE). The reference is a
   1000-step DPM-Solver++(2M) run (uniform log-SNR) of that ODE; held-out: 64 x_T (seed 0, digits 0-9 in
   turn), calibration: 32 other x_T (seed 1).

Calibration methods (each fitted on the calibration set only):

* **grid fit** (GITS-style teacher matching, ``samplers.calibrate.fit_grid``) for several of our solvers;
* **DM-NonUniform** (``samplers.analytic_steps.optimise_steps``): model-free optimised steps, no fitting;
* **solver search** (USF / S³, ``samplers.solver_search.search_solver_schedule``): per-step rules + grid;
* **DPM-Solver-v3** (``samplers.ems.compute_ems`` on the calibration x_T, then the best hand-made grid by
  calibration error, then a grid fit);
* **bespoke** (``samplers.bespoke``): a linear multistep solver whose per-step weights are fitted to the
  teacher's trajectory on the grid of the best grid fit, then refined on the end-point error.

The configuration with the lowest *calibration* error is selected (held-out data never chooses anything); it
then runs as a diffusers scheduler (``from_config(..., **fit.scheduler_config())``, ``set_timesteps(nfe)``)
on the held-out set beside every diffusers scheduler of ``bench_solvers.DIFFUSERS``. Calibration cost is
reported in model calls (each on the calibration batch; DPM-Solver-v3's statistics add their teacher and
Jacobian-probe calls) and seconds; the teacher's own cost is reported apart (none for the analytic mixture).
Across guidance: the configuration selected at one guidance is also run at others against diffusers there.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from samplers import (
    Denoiser,
    DiscreteVPSchedule,
    DPMSolverPP,
    DPMSolverPPScheduler,
    DPMSolverV3,
    DPMSolverV3Scheduler,
    ExponentialIntegratorScheduler,
    UniPC,
    UniPCScheduler,
    make_grid,
    sample,
)
from samplers.analytic import GaussianMixture
from samplers.analytic_steps import optimise_steps
from samplers.bespoke import calibrate_linear_multistep
from samplers.calibrate import CalibratedGrid, fit_grid, relative_rms
from samplers.denoiser import convert_prediction
from samplers.ems import compute_ems
from samplers.solver_search import search_solver_schedule

from bench_solvers import DIFFUSERS, F64, SCHEDULE, SD, Problem  # isort: skip

NFES = (5, 6)
DIGITS_CONFIG = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000)
DIGITS_SCHEDULE = DiscreteVPSchedule.from_betas("squaredcos_cap_v2")
#: grid-fit candidates: (scheduler class, its config, initial grid kind, final level)
UNIPC_BH1_3_EPS = dict(solver_order=3, solver_type="bh1", predict_x0=False)
GRID_FITS = {
    "UniPC-bh1-3 eps": (UniPCScheduler, UNIPC_BH1_3_EPS, "karras", "zero"),
    "UniPC-bh2-3 eps": (UniPCScheduler, dict(solver_order=3, predict_x0=False), "karras", "zero"),
    "UniPC-bh2-2 x0": (UniPCScheduler, {}, "quadratic", "min"),
    "UniPC-bh2-3 x0": (UniPCScheduler, dict(solver_order=3), "quadratic", "min"),
    "DPM-Solver++ 2M": (DPMSolverPPScheduler, {}, "quadratic", "min"),
    "DPM-Solver++ 3M": (DPMSolverPPScheduler, dict(solver_order=3), "karras", "zero"),
}  # fmt: skip
#: DM-NonUniform candidates: solvers whose optimised steps helped on a held-out mixture (the module's tests)
NON_UNIFORM = {
    "UniPC-bh2-3 x0": (UniPCScheduler, dict(solver_order=3)),
    "DPM-Solver++ 3M": (DPMSolverPPScheduler, dict(solver_order=3, solver_type="exact")),
}
V3_GRIDS = ("uniform_t", "quadratic", "uniform_lambda", "karras")


@dataclass
class Candidate:
    """A calibrated configuration: what it is, its fit, the cost of calibrating it, and its scheduler."""

    method: str
    label: str
    fit: CalibratedGrid
    nfe: int
    seconds: float
    scheduler: Callable[[dict], object]  # diffusers config of the model -> scheduler running this config

    def run(self, problem: Problem) -> float:
        return problem.run(self.scheduler(problem_config(problem)), self.fit.steps)


def problem_config(problem: Problem) -> dict:
    return DIGITS_CONFIG if isinstance(problem, DigitsProblem) else SD


class DigitsProblem(Problem):
    """:class:`bench_solvers.Problem` on the bundled digits UNet: guided epsilon network, x_T, labels and a
    1000-step reference endpoint."""

    def __init__(self, unet, guidance: float, n: int, seed: int, teacher_steps: int = 1000):
        self.guidance = guidance
        self.labels = torch.arange(n) % 10

        @torch.no_grad()
        def net(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
            rows, null = torch.cat([x, x]).float(), torch.full_like(class_labels, 10)
            out = unet(rows, torch.cat([t, t]).float(), class_labels=torch.cat([class_labels, null])).sample
            cond, uncond = out.double().chunk(2)
            eps = uncond + guidance * (cond - uncond)
            # the model's clip_sample: its x0 prediction clamped to [-1, 1], folded into the epsilon every
            # scheduler sees (so all of them integrate one ODE; near t = 999, alpha ~ 1e-4 would otherwise
            # amplify the epsilon error ten-thousandfold in x0)
            alpha = DIGITS_SCHEDULE.alpha(t.double()).view(-1, 1, 1, 1)
            sigma = DIGITS_SCHEDULE.sigma(t.double()).view(-1, 1, 1, 1)
            return convert_prediction(eps, x, alpha, sigma, "epsilon", x0_limit=lambda x0: x0.clamp(-1, 1))[1]

        self._net = net
        self.x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)
        start = time.perf_counter()
        grid = make_grid(DIGITS_SCHEDULE, teacher_steps, "uniform_lambda")
        cond = {"class_labels": self.labels}
        self.exact = sample(Denoiser(net, "epsilon"), self.x_T, grid, DPMSolverPP(2), cond=cond)
        self.teacher_seconds = time.perf_counter() - start


def _with_grid(cls, kw: dict, fit: CalibratedGrid) -> Callable[[dict], object]:
    return lambda config: cls(**config, **kw, **fit.scheduler_config())


def _denoiser(problem: Problem) -> tuple[Denoiser, dict]:
    return Denoiser(problem._net, "epsilon"), {"class_labels": problem.labels}


def grid_fits(problem, nfe, schedule, config, labels, budget) -> list[Candidate]:
    out = []
    for label in labels:
        cls, kw, kind, final = GRID_FITS[label]
        solver = cls(**config, **kw, final_sigmas_type="zero" if final == "zero" else "sigma_min").solvers[0]
        denoiser, cond = _denoiser(problem)
        init = make_grid(schedule, nfe, kind, final=final)
        fit = fit_grid(denoiser, solver, problem.x_T, problem.exact, init, cond=cond, max_evaluations=budget)
        out.append(Candidate("grid fit", label, fit, fit.nfe, fit.seconds, _with_grid(cls, kw, fit)))
    return out


def non_uniform(problem, nfe, schedule, config) -> list[Candidate]:
    """DM-NonUniform steps for each solver (model-free; one run on the calibration set to score it)."""
    out = []
    for label, (cls, kw) in NON_UNIFORM.items():
        start = time.perf_counter()
        solver = cls(**config, **kw, final_sigmas_type="zero").solvers[0]
        grid = optimise_steps(schedule, nfe, solver=solver, final="zero")  # the objective of the solver run
        denoiser, cond = _denoiser(problem)
        error = relative_rms(sample(denoiser, problem.x_T, grid, solver, cond=cond), problem.exact)
        levels = tuple((grid.sigma / grid.alpha).tolist())
        fit = CalibratedGrid(levels, solver.name, error, error, 0, time.perf_counter() - start, 1)
        out.append(Candidate("DM-NonUniform", label, fit, 0, fit.seconds, _with_grid(cls, kw, fit)))
    return out


def solver_search(problem, nfe, schedule, budget: dict) -> list[Candidate]:
    denoiser, cond = _denoiser(problem)
    init = make_grid(schedule, nfe, "quadratic", final="min")
    fit = search_solver_schedule(denoiser, problem.x_T, problem.exact, init, cond=cond, **budget)
    return [Candidate("solver search", fit.solver, fit, fit.nfe, fit.seconds,
                      _with_grid(ExponentialIntegratorScheduler, {}, fit))]  # fmt: skip


def dpm_solver_v3(problem, nfe, schedule, ems_path: Path, ems_cost, budget) -> list[Candidate]:
    """DPM-Solver-v3 with the statistics of ``ems_path``: the best hand-made grid, then a grid fit."""
    denoiser, cond = _denoiser(problem)
    solver = DPMSolverV3(str(ems_path), order=2)
    start = time.perf_counter()
    inits = [make_grid(schedule, nfe, kind, final="min") for kind in V3_GRIDS]
    errors = [relative_rms(sample(denoiser, problem.x_T, g, solver, cond=cond), problem.exact) for g in inits]
    init = inits[min(range(len(inits)), key=errors.__getitem__)]
    fit = fit_grid(denoiser, solver, problem.x_T, problem.exact, init, cond=cond, max_evaluations=budget)
    nfe_used, seconds = denoiser.nfe + ems_cost[0], time.perf_counter() - start + ems_cost[1]
    fit = replace(fit, nfe=nfe_used, seconds=seconds)
    kw = dict(ems=str(ems_path), solver_order=2)
    return [
        Candidate("DPM-Solver-v3", "EMS", fit, nfe_used, seconds, _with_grid(DPMSolverV3Scheduler, kw, fit))
    ]


def bespoke(problem, schedule, fits: list[Candidate], substeps: int, refine: int) -> list[Candidate]:
    """A bespoke linear multistep solver on the grid of the best grid fit: weights fitted step by step to the
    teacher's states, then refined on the end point (cost: teacher states + fit + refinement)."""
    denoiser, cond = _denoiser(problem)
    grid = min(fits, key=lambda c: c.fit.error).fit.grid(schedule)
    fit = calibrate_linear_multistep(
        denoiser, problem.x_T, problem.exact, grid, cond=cond, substeps=substeps, refine_evaluations=refine
    )
    return [Candidate("bespoke", "on the best fitted grid", fit, fit.nfe, fit.seconds,
                      _with_grid(ExponentialIntegratorScheduler, {}, fit))]  # fmt: skip


def best_diffusers(problem: Problem, nfe: int) -> tuple[str, float]:
    """The most accurate diffusers configuration (one that fails on this schedule counts as diverged)."""
    errors = {}
    for label, (cls, kw) in DIFFUSERS.items():
        try:
            errors[label] = problem.run(cls(**problem_config(problem), **kw), nfe)
        except (IndexError, RuntimeError, ValueError) as error:
            print(f"  diffusers {label} fails at NFE {nfe}: {type(error).__name__}: {error}", flush=True)
            errors[label] = math.inf
    label = min(errors, key=errors.get)
    return label, errors[label]


def compare(name, make_problem, guidances, transfers, methods) -> list[str]:
    """The tables of one model: held-out comparison, transfer across guidance, every candidate.

    ``methods(problem, nfe, guidance)`` returns the candidates calibrated on ``problem``."""
    summary = [
        "| guidance | NFE | best diffusers | its error | selected (by calibration error) | held-out error "
        "| calibrated / diffusers | calibration model calls | calibration s |",
        "|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    detail = [
        "| guidance | NFE | method | configuration | calibration error: initial -> fitted | held-out "
        "| model calls | s |",
        "|---:|---:|---|---|---|---:|---:|---:|",
    ]
    transfer = [
        "| fitted at | run at | NFE | best diffusers | its error | calibrated configuration | error "
        "| ratio |",
        "|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    teacher = 0.0
    for guidance in guidances:
        calibration, test = make_problem(guidance, "calibration"), make_problem(guidance, "held-out")
        teacher += getattr(calibration, "teacher_seconds", 0.0)
        for nfe in NFES:
            print(f"{name}: guidance {guidance}, NFE {nfe}", flush=True)
            candidates = methods(calibration, nfe, guidance)
            chosen = min(candidates, key=lambda c: c.fit.error)
            d_label, d_error = best_diffusers(test, nfe)
            errors = [c.run(test) for c in candidates]
            error = errors[candidates.index(chosen)]
            summary.append(
                f"| {guidance} | {nfe} | {d_label} | {d_error:.4f} | {chosen.method}: {chosen.label} "
                f"| {error:.4f} | {error / d_error:.2f} | {sum(c.nfe for c in candidates)} "
                f"| {sum(c.seconds for c in candidates):.1f} |"
            )
            for c, held in zip(candidates, errors, strict=True):
                mark = " (selected)" if c is chosen else ""
                detail.append(
                    f"| {guidance} | {nfe} | {c.method}{mark} | {c.label} | {c.fit.initial_error:.4f} -> "
                    f"{c.fit.error:.4f} | {held:.4f} | {c.nfe} | {c.seconds:.1f} |"
                )
            for other in transfers.get(guidance, ()):
                moved = make_problem(other, "held-out")
                o_label, o_error = best_diffusers(moved, nfe)
                error = chosen.run(moved)
                transfer.append(
                    f"| {guidance} | {other} | {nfe} | {o_label} | {o_error:.4f} | {chosen.method}: "
                    f"{chosen.label} | {error:.4f} | {error / o_error:.2f} |"
                )
    note = [f"Teacher runs on the calibration sets: {teacher:.0f} s.", ""] if teacher else []
    return [
        "#### Held-out error: the best diffusers configuration vs the selected calibrated one",
        "",
        *summary,
        "",
        *note,
        "#### Across guidance: the selected configuration run at another guidance",
        "",
        *transfer,
        "",
        "#### Every candidate",
        "",
        *detail,
        "",
    ]


def ems_for(problem: Problem, schedule, path: Path, steps: int, probes: int) -> tuple[int, float]:
    """Compute the EMS on the calibration x_T, save them to ``path``; returns (model calls, seconds)."""
    denoiser, cond = _denoiser(problem)
    start = time.perf_counter()
    compute_ems(denoiser, schedule, problem.x_T, cond=cond, steps=steps, probes=probes).save(path)
    return denoiser.nfe, time.perf_counter() - start


def calibration_section(*, quick: bool = False) -> list[str]:
    """Section 4 of solvers.md: both models, NFE 5 and 6."""
    gmm = GaussianMixture.random(dim=32, n_components=4, n_classes=2, seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="ems-"))

    @functools.cache
    def gmm_problem(guidance: float, split: str) -> Problem:
        return Problem(gmm, guidance, seed=1 if split == "calibration" else 0)

    @functools.cache
    def ems_of(problem: Problem, schedule, tag: str, steps: int, probes: int):
        path = workdir / f"{tag}.safetensors"
        return path, ems_for(problem, schedule, path, steps, probes)

    def gmm_methods(problem, nfe, guidance):
        path, cost = ems_of(problem, SCHEDULE, f"gmm-{guidance}", 200, 4)
        search = dict(rounds=1 if quick else 2, grid_evaluations=60 if quick else 150)
        fits = grid_fits(problem, nfe, SCHEDULE, SD, list(GRID_FITS), 60 if quick else 400)
        return [
            *fits,
            *bespoke(problem, SCHEDULE, fits, 100 if quick else 200, 60 if quick else 400),
            *non_uniform(problem, nfe, SCHEDULE, SD),
            *solver_search(problem, nfe, SCHEDULE, search),
            *dpm_solver_v3(problem, nfe, SCHEDULE, path, cost, 60 if quick else 300),
        ]

    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(Path(__file__).resolve().parents[1] / "pipelines/assets/digits/unet")
    unet.eval()

    @functools.cache
    def digits_problem(guidance: float, split: str) -> DigitsProblem:
        teacher = 200 if quick else 1000
        return DigitsProblem(unet, guidance, *((32, 1) if split == "calibration" else (64, 0)), teacher)

    def digits_methods(problem, nfe, guidance):
        path, cost = ems_of(problem, DIGITS_SCHEDULE, f"digits-{guidance}", 50 if quick else 200, 2)
        search = dict(starts=[UniPC(2)], rounds=1, sweeps=1, grid_evaluations=30 if quick else 80)
        budget = 30 if quick else 120
        labels = ["UniPC-bh2-2 x0", "DPM-Solver++ 2M"]
        fits = grid_fits(problem, nfe, DIGITS_SCHEDULE, DIGITS_CONFIG, labels, budget)
        return [
            *fits,
            *bespoke(problem, DIGITS_SCHEDULE, fits, 40 if quick else 200, 30 if quick else 400),
            *non_uniform(problem, nfe, DIGITS_SCHEDULE, DIGITS_CONFIG),
            *solver_search(problem, nfe, DIGITS_SCHEDULE, search),
            *dpm_solver_v3(problem, nfe, DIGITS_SCHEDULE, path, cost, budget),
        ]

    gmm_lines = compare("mixture", gmm_problem, (1.0, 7.5), {7.5: (5.0, 10.0)}, gmm_methods)
    digits_lines = compare("digits", digits_problem, (2.0,), {2.0: (1.0, 4.0)}, digits_methods)
    teacher = "200" if quick else "1000"
    return [
        "Calibration methods, each fitted on a calibration set (see `scripts/bench_calibrate.py`): grid fit "
        "(GITS-style teacher matching of the free grid points, `samplers/calibrate.py`), DM-NonUniform "
        "(model-free optimised steps, `samplers/analytic_steps.py`), solver search (USF/S³ per-step rules + "
        "grid, `samplers/solver_search.py`) and DPM-Solver-v3 (statistics computed from the model on the "
        "calibration x_T, `samplers/ems.py`, then the best hand-made grid and a grid fit), and a bespoke "
        "linear multistep solver (per-step weights fitted to the teacher's trajectory on the best fitted "
        "grid, `samplers/bespoke.py`). The candidate "
        "with the lowest calibration error is selected and run on held-out noise as a diffusers scheduler "
        "built from its exported config. Calibration cost: all candidates of a cell together; the "
        "statistics of DPM-Solver-v3 are computed once per guidance and counted in each NFE's cell.",
        "",
        "### 4a. Gaussian mixture (setting of section 1)",
        "",
        "Calibration: 256 x_T (seed 1) with their exact endpoints. Held-out: the 256 x_T (seed 0) of "
        "section 1.",
        "",
        *gmm_lines,
        f"### 4b. The bundled digits model (reference: {teacher}-step DPM-Solver++(2M))",
        "",
        "Calibration: 32 x_T (seed 1). Held-out: 64 x_T (seed 0). Digits 0-9 in turn; guidance over the "
        "null class 10; the model's clip_sample clamp is part of the ODE.",
        "",
        *digits_lines,
    ]
