"""Teacher-matched time grids (samplers/calibrate.py) against diffusers' schedulers at 5 and 6 evaluations.

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

For each candidate (one of our schedulers' solvers and an initial hand-made grid), ``fit_grid`` fits the
grid on the calibration set. The candidate with the lowest *calibration* error is selected (held-out data
never chooses anything); it then runs as our diffusers scheduler, ``set_timesteps(sigmas=...)``, on the
held-out set beside every diffusers scheduler of ``bench_solvers.DIFFUSERS``. Calibration cost is reported
in model evaluations (one per solver step on the whole calibration batch) and seconds; the teacher's cost is
reported apart (none for the analytic mixture). Across guidance: the grid selected at one guidance is also
run at others against diffusers there.

Writes ``docs/benchmarks/calibrated_grids.md``:  ``.venv/bin/python scripts/bench_calibrate.py``
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_solvers import DIFFUSERS, F64, SCHEDULE, SD, Problem  # noqa: E402

from samplers import (  # noqa: E402
    Denoiser,
    DiscreteVPSchedule,
    DPMSolverPP,
    DPMSolverPPScheduler,
    UniPCScheduler,
    make_grid,
    sample,
)
from samplers.analytic import GaussianMixture  # noqa: E402
from samplers.calibrate import fit_grid  # noqa: E402
from samplers.denoiser import convert_prediction  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "calibrated_grids.md"
#: (scheduler class, its config, initial grid kind, final level) per candidate
UNIPC_BH1_3_EPS = dict(solver_order=3, solver_type="bh1", predict_x0=False)
CANDIDATES = {
    "UniPC-bh1-3 eps": (UniPCScheduler, UNIPC_BH1_3_EPS, "karras", "zero"),
    "UniPC-bh2-3 eps": (UniPCScheduler, dict(solver_order=3, predict_x0=False), "karras", "zero"),
    "UniPC-bh2-2 x0": (UniPCScheduler, {}, "quadratic", "min"),
    "UniPC-bh2-3 x0": (UniPCScheduler, dict(solver_order=3), "quadratic", "min"),
    "DPM-Solver++ 2M": (DPMSolverPPScheduler, {}, "quadratic", "min"),
    "DPM-Solver++ 3M": (DPMSolverPPScheduler, dict(solver_order=3), "karras", "zero"),
}  # fmt: skip
NFES = (5, 6)
DIGITS_CONFIG = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000)
DIGITS_SCHEDULE = DiscreteVPSchedule.from_betas("squaredcos_cap_v2")


class DigitsProblem(Problem):
    """:class:`bench_solvers.Problem` on the bundled digits UNet: guided epsilon network, x_T, labels and a
    1000-step reference endpoint."""

    def __init__(self, unet, guidance: float, n: int, seed: int, teacher_steps: int = 1000):
        self.guidance = guidance
        self.labels = torch.arange(n) % 10
        null = torch.full((n,), 10)

        @torch.no_grad()
        def net(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
            rows = torch.cat([x, x]).float()
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


def scheduler(label: str, final: str, config: dict):
    cls, kw, _, _ = CANDIDATES[label]
    return cls(**config, **kw, final_sigmas_type="zero" if final == "zero" else "sigma_min")


def calibrate(problem: Problem, nfe: int, schedule, config: dict, labels, max_evaluations: int) -> dict:
    """The candidates ``labels`` fitted on ``problem`` (the calibration set): {label: CalibratedGrid}."""
    fits = {}
    for label in labels:
        _, _, kind, final = CANDIDATES[label]
        solver = scheduler(label, final, config).solvers[0]
        init = make_grid(schedule, nfe, kind, final=final)
        denoiser = Denoiser(problem._net, "epsilon")
        cond = {"class_labels": problem.labels}
        fit = fit_grid(
            denoiser, solver, problem.x_T, problem.exact, init, cond=cond, max_evaluations=max_evaluations
        )
        fits[label] = fit
        print(f"  {label}: calibration error {fit.initial_error:.4f} -> {fit.error:.4f}", flush=True)
    return fits


def held_out(problem: Problem, label: str, fit, config: dict) -> float:
    final = "zero" if fit.final_sigmas_type == "zero" else "min"
    return problem.run(scheduler(label, final, config), fit.steps, sigmas=fit.evaluation_sigmas)


def best_diffusers(problem: Problem, nfe: int, config: dict) -> tuple[str, float]:
    """The most accurate diffusers configuration (one that fails on this schedule counts as diverged)."""
    errors = {}
    for label, (cls, kw) in DIFFUSERS.items():
        try:
            errors[label] = problem.run(cls(**config, **kw), nfe)
        except (IndexError, RuntimeError, ValueError) as error:
            print(f"  diffusers {label} fails at NFE {nfe}: {type(error).__name__}: {error}", flush=True)
            errors[label] = math.inf
    label = min(errors, key=errors.get)
    return label, errors[label]


def compare(name, make_problem, guidances, transfers, schedule, config, labels, max_evaluations) -> list[str]:
    """The tables of one model: held-out comparison, transfer across guidance, every candidate."""
    summary = [
        "| guidance | NFE | best diffusers | its error | selected (by calibration error) | held-out error "
        "| calibrated / diffusers | calibration NFE | calibration s |",
        "|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    detail = [
        "| guidance | NFE | candidate | initial grid | calibration error: initial -> fitted | held-out |",
        "|---:|---:|---|---|---|---:|",
    ]
    transfer = [
        "| fitted at | run at | NFE | best diffusers | its error | calibrated grid | error | ratio |",
        "|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    teacher = 0.0
    for guidance in guidances:
        calibration, test = make_problem(guidance, "calibration"), make_problem(guidance, "held-out")
        teacher += getattr(calibration, "teacher_seconds", 0.0)
        for nfe in NFES:
            print(f"{name}: guidance {guidance}, NFE {nfe}", flush=True)
            start = time.perf_counter()
            fits = calibrate(calibration, nfe, schedule, config, labels, max_evaluations)
            seconds = time.perf_counter() - start
            chosen = min(fits, key=lambda k: fits[k].error)
            d_label, d_error = best_diffusers(test, nfe, config)
            errors = {label: held_out(test, label, fit, config) for label, fit in fits.items()}
            cost = sum(f.nfe for f in fits.values())
            summary.append(
                f"| {guidance} | {nfe} | {d_label} | {d_error:.4f} | {chosen} | {errors[chosen]:.4f} "
                f"| {errors[chosen] / d_error:.2f} | {cost} | {seconds:.1f} |"
            )
            for label, fit in fits.items():
                _, _, kind, final = CANDIDATES[label]
                mark = " (selected)" if label == chosen else ""
                detail.append(
                    f"| {guidance} | {nfe} | {label}{mark} | {kind}, to {final} | "
                    f"{fit.initial_error:.4f} -> {fit.error:.4f} | {errors[label]:.4f} |"
                )
            for other in transfers.get(guidance, ()):
                moved = make_problem(other, "held-out")
                o_label, o_error = best_diffusers(moved, nfe, config)
                error = held_out(moved, chosen, fits[chosen], config)
                transfer.append(
                    f"| {guidance} | {other} | {nfe} | {o_label} | {o_error:.4f} | {chosen} | "
                    f"{error:.4f} | {error / o_error:.2f} |"
                )
    note = [f"Teacher runs on the calibration sets: {teacher:.0f} s.", ""] if teacher else []
    return [
        "### Held-out error: the best diffusers configuration vs the selected calibrated one",
        "",
        *summary,
        "",
        *note,
        "### Across guidance: the selected grid run at another guidance",
        "",
        *transfer,
        "",
        "### Every candidate",
        "",
        *detail,
        "",
    ]


def main() -> None:
    torch.set_num_threads(1)
    gmm = GaussianMixture.random(dim=32, n_components=4, n_classes=2, seed=0)

    @functools.cache
    def gmm_problem(guidance: float, split: str) -> Problem:
        return Problem(gmm, guidance, seed=1 if split == "calibration" else 0)

    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(Path(__file__).resolve().parents[1] / "pipelines/assets/digits/unet")
    unet.eval()

    @functools.cache
    def digits_problem(guidance: float, split: str) -> DigitsProblem:
        return DigitsProblem(unet, guidance, *((32, 1) if split == "calibration" else (64, 0)))

    gmm_lines = compare(
        "mixture",
        gmm_problem,
        (1.0, 7.5),
        {7.5: (5.0, 10.0)},
        SCHEDULE,
        SD,
        list(CANDIDATES),
        max_evaluations=400,
    )
    digits_lines = compare(
        "digits",
        digits_problem,
        (2.0,),
        {2.0: (1.0, 4.0)},
        DIGITS_SCHEDULE,
        DIGITS_CONFIG,
        ["UniPC-bh1-3 eps", "UniPC-bh2-2 x0", "DPM-Solver++ 2M"],
        max_evaluations=120,
    )
    lines = [
        "# Teacher-matched time grids against diffusers at 5 and 6 evaluations",
        "",
        f"`scripts/bench_calibrate.py` (torch {torch.__version__}); one run. Candidates are fitted by "
        "Nelder-Mead over the free grid points (`samplers/calibrate.py`); the one with the lowest "
        "calibration error is selected and run on held-out noise. Calibration cost: all candidates together.",
        "",
        "## 1. Gaussian mixture (setting of `docs/benchmarks/solvers.md`, section 1)",
        "",
        "Calibration: 256 x_T (seed 1), exact endpoints, at most 400 solver runs per candidate. Held-out: "
        "the 256 x_T (seed 0) of `solvers.md`.",
        "",
        *gmm_lines,
        "## 2. The bundled digits model (reference: 1000-step DPM-Solver++(2M))",
        "",
        "Calibration: 32 x_T (seed 1), at most 120 solver runs per candidate. Held-out: 64 x_T (seed 0). "
        "Digits 0-9 in turn; guidance over the null class 10.",
        "",
        *digits_lines,
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
