"""Max reward found vs NFE for every search method on the analytic Gaussian mixture.

Writes ``docs/benchmarks/search.md`` (a table: mean and standard deviation of the best reward over seeds at
each budget) and ``docs/benchmarks/search.png`` (the curves). NFE is what each method's chain was charged,
per particle, the same way for every method; the budget is a hard cap (``Budget.max_nfe``).

Targets: 2- and 16-dimensional mixtures of three Gaussians (the 2-D one is the mixture of the exactness
tests); reward r(x) = -|x - b|^2 with b between two modes, where the model puts little mass, so finding high
reward needs search. ODE methods (best-of-N, zero-order, paths) use DPM-Solver++(2M); particle methods
(beam, FK steering) the SDE variant (eta = 1); 20 steps each; every method with its default settings (FK
steering: temperature 0.1, returning its best particle).

Run: ``.venv/bin/pip install -e '.[bench]' && .venv/bin/python scripts/bench_search.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewards import least_squares_reward  # noqa: E402
from samplers import DiscreteVPSchedule  # noqa: E402
from samplers.analytic import GaussianMixture  # noqa: E402
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP  # noqa: E402
from search import (  # noqa: E402
    beam_search,
    best_of_n,
    fk_steering,
    gaussian_mixture_chain,
    path_search,
    zero_order_search,
)

STEPS = 20
DIMS = (2, 16)
BUDGETS = (200, 400, 800, 1600, 3200, 6400)
F64 = torch.float64


def problem(dim: int = 16):
    gmm = GaussianMixture.random(dim=dim, n_components=3, n_classes=1, seed=1)
    schedule = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    target = 0.5 * (gmm.means[0] + gmm.means[1])  # between two modes
    reward = least_squares_reward(torch.eye(dim, dtype=F64), target)
    ode = gaussian_mixture_chain(gmm, schedule, STEPS, DPMSolverPP(2))
    sde = gaussian_mixture_chain(gmm, schedule, STEPS, SDEDPMSolverPP(2, eta=1.0))
    return reward, ode, sde


def methods(ode, sde) -> dict[str, Callable]:
    """name -> run(reward, max_nfe, generator) returning a SearchResult."""
    return {
        "best-of-N": lambda r, nfe, g: best_of_n(ode, r, max_nfe=nfe, generator=g),
        "zero-order (sphere)": lambda r, nfe, g: zero_order_search(ode, r, max_nfe=nfe, generator=g),
        "zero-order (pCN)": lambda r, nfe, g: zero_order_search(
            ode, r, max_nfe=nfe, neighbourhood="pcn", generator=g
        ),
        "search over paths": lambda r, nfe, g: path_search(ode, r, max_nfe=nfe, generator=g),
        "beam search": lambda r, nfe, g: beam_search(sde, r, max_nfe=nfe, generator=g),
        "FK steering (difference, max)": lambda r, nfe, g: fk_steering(
            sde, r, max_nfe=nfe, temperature=0.1, select="max", k=1, generator=g
        ),
        "FK steering + entropic annealing": lambda r, nfe, g: fk_steering(
            sde, r, max_nfe=nfe, temperature=0.1, select="max", k=1, entropy_floor=0.5, generator=g
        ),
    }


def run(
    seeds: int, budgets: tuple[int, ...] = BUDGETS, dim: int = 16
) -> tuple[dict[str, dict[int, list[float]]], dict[str, int]]:
    reward, ode, sde = problem(dim)
    results: dict[str, dict[int, list[float]]] = {}
    spent: dict[str, int] = {}
    for name, method in methods(ode, sde).items():
        results[name] = {}
        for budget in budgets:
            best = []
            for seed in range(seeds):
                try:
                    result = method(reward, budget, torch.Generator().manual_seed(seed))
                except ValueError as error:  # the budget pays for less than one of this method's units
                    if "smaller than" not in str(error):
                        raise
                    break
                assert result.nfe <= budget, (name, result.nfe, budget)
                spent[name] = max(spent.get(name, 0), result.nfe)
                best.append(float(result.all_scores.max()))
            results[name][budget] = best
    return results, spent


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if values else "—"


def table(results: dict[str, dict[int, list[float]]]) -> str:
    budgets = list(next(iter(results.values())))
    header = "| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
    rows = [header, "|---" * (len(budgets) + 1) + "|"]
    for name, by_budget in results.items():
        cells = [_cell(v) for v in by_budget.values()]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(by_dim: dict[int, dict[str, dict[int, list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_dim), figsize=(6.5 * len(by_dim), 4.5), squeeze=False)
    for ax, (dim, results) in zip(axes[0], by_dim.items()):
        for name, by_budget in results.items():
            points = {b: v for b, v in by_budget.items() if v}
            means = [statistics.mean(v) for v in points.values()]
            errs = [statistics.stdev(v) for v in points.values()]
            ax.errorbar(list(points), means, yerr=errs, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        budgets = sorted({b for by_budget in results.values() for b in by_budget})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("NFE (model calls, per particle, summed)")
        ax.set_ylabel("best reward found  (-|x - b|^2)")
        ax.set_title(f"{dim}-dimensional Gaussian mixture")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    start = time.perf_counter()
    by_dim = {dim: run(args.seeds, dim=dim)[0] for dim in DIMS}
    out = ROOT / "docs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    plot(by_dim, out / "search.png")
    lines = [
        "# Search: best reward found vs NFE",
        "",
        f"Written by `scripts/bench_search.py` ({args.seeds} seeds, {time.perf_counter() - start:.0f} s). "
        + __doc__.split("\n\n")[2].replace("\n", " "),
        "",
        "Mean ± standard deviation over seeds of the best reward among the samples each method scored at the "
        "end (0 is the maximum, reached at x = b); — where the budget pays for less than one of the method's "
        "units (a path of search over paths).",
        "",
    ]
    for dim, results in by_dim.items():
        text = table(results)
        print(f"{dim}-dimensional mixture\n{text}")
        lines += [f"## {dim}-dimensional mixture", "", text, ""]
    lines += ["![best reward vs NFE](search.png)", ""]
    (out / "search.md").write_text("\n".join(lines))
    print(f"wrote {out / 'search.md'} and {out / 'search.png'}")


if __name__ == "__main__":
    main()
