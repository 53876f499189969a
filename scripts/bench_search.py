"""Max reward found vs NFE for every search method on the analytic Gaussian mixture.

Writes ``docs/benchmarks/search.md`` (a table: mean and standard deviation of the best reward over seeds at
each budget) and ``docs/benchmarks/search.png`` (the curves). NFE is what each method's chain was charged,
per particle, the same way for every method; the budget is a hard cap (``Budget.max_nfe``).

Targets: 2- and 16-dimensional mixtures of three Gaussians (the 2-D one is the mixture of the exactness
tests); reward r(x) = -|x - b|^2 with b between two modes, where the model puts little mass, so finding high
reward needs search. ODE methods (best-of-N, zero-order, paths, EvoSearch) use DPM-Solver++(2M); particle and
tree methods (beam, FK steering, DTS*, RBF) the SDE variant (eta = 1); 20 steps each; every method with its
default settings except: FK steering at temperature 0.1, returning its best particle; DTS* (greedy Diffusion
Tree Search) at temperature 0.1 as FK steering, with its default 4 children per node, no progressive widening
and no node cap; EvoSearch with its default population 8, elite 1, tournament 2, beta 0.5 and schedule up to
half the steps (until 0.5), running as many generations as the budget pays for; RBF (rollover budget forcing)
on the SDE chain, children scored 4 at a time.

Run: ``.venv/bin/pip install -e '.[bench]' && .venv/bin/python scripts/bench_search.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from search_bench_common import Results, plot, run_methods, table  # noqa: E402

from rewards import least_squares_reward  # noqa: E402
from samplers import DiscreteVPSchedule  # noqa: E402
from samplers.analytic import GaussianMixture  # noqa: E402
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP  # noqa: E402
from search import (  # noqa: E402
    beam_search,
    best_of_n,
    diffusion_tree_sampling,
    evo_search,
    fk_steering,
    gaussian_mixture_chain,
    path_search,
    rollover_budget_forcing,
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


def methods(reward, ode, sde) -> dict[str, Callable]:
    """name -> run(max_nfe, generator) returning a SearchResult."""
    r = reward
    return {
        "best-of-N": lambda nfe, g: best_of_n(ode, r, max_nfe=nfe, generator=g),
        "zero-order (sphere)": lambda nfe, g: zero_order_search(ode, r, max_nfe=nfe, generator=g),
        "zero-order (pCN)": lambda nfe, g: zero_order_search(
            ode, r, max_nfe=nfe, neighbourhood="pcn", generator=g
        ),
        "search over paths": lambda nfe, g: path_search(ode, r, max_nfe=nfe, generator=g),
        "beam search": lambda nfe, g: beam_search(sde, r, max_nfe=nfe, generator=g),
        "FK steering (difference, max)": lambda nfe, g: fk_steering(
            sde, r, max_nfe=nfe, temperature=0.1, select="max", k=1, generator=g
        ),
        "FK steering + entropic annealing": lambda nfe, g: fk_steering(
            sde, r, max_nfe=nfe, temperature=0.1, select="max", k=1, entropy_floor=0.5, generator=g
        ),
        "DTS* (tree search)": lambda nfe, g: diffusion_tree_sampling(
            sde, r, max_nfe=nfe, greedy=True, temperature=0.1, generator=g
        ),
        "EvoSearch": lambda nfe, g: evo_search(ode, r, max_nfe=nfe, population=8, generator=g),
        "RBF (rollover budget forcing)": lambda nfe, g: rollover_budget_forcing(
            sde, r, max_nfe=nfe, batch=4, generator=g
        ),
    }


def run(
    seeds: int, budgets: tuple[int, ...] = BUDGETS, dim: int = 16, log=None
) -> tuple[Results, dict[str, int]]:
    """(best reward per method, budget and seed; the most NFE each method spent) on the dim-D problem."""
    return run_methods(methods(*problem(dim)), budgets, seeds, log=log or (lambda line: None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    start = time.perf_counter()
    by_dim = {dim: run(args.seeds, dim=dim, log=print)[0] for dim in DIMS}
    out = ROOT / "docs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    plot({f"{dim}-dimensional Gaussian mixture": results for dim, results in by_dim.items()},
         out / "search.png", "best reward found  (-|x - b|^2)")  # fmt: skip
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
