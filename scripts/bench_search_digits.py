"""Reward vs NFE for the search methods on the bundled digits model: steer the *unconditional* model to a 3.

The bundled diffusion model (``pipelines/assets/digits``) is sampled with its null class (no prompt, no
guidance), so only about one draw in ten is a 3. The reward is the bundled digits classifier's log-odds that
the image is a 3, log p / (1 - p) (``digits_reward(3, output="log_odds")``): it does not saturate at
certainty, so it keeps ranking clear 3s. Every method gets the same budgets; NFE is what its chain was
charged, per particle, the same way for every method (``Budget.max_nfe`` is a hard cap). 20 steps each:

* best-of-N: DPM-Solver++(2M), the ODE, n = NFE / 20 trajectories (BoN@256 = 5120 NFE);
* FK steering (SMC): SDE-DPM-Solver++(2M) (eta = 1), the difference potential on Tweedie look-aheads,
  temperature 0.3, resampling at every step, returning its best particle;
* DTS*: the greedy Diffusion Tree Search on the SDE chain (defaults: 4 children per node);
* EvoSearch: on the ODE chain, population 16, elite 1, tournaments of 2, beta 0.5, as many generations
  as the budget pays for (evolution points spread over the first half of the grid);
* RBF: rollover budget forcing on the SDE chain, children scored 4 at a time.

Settings were fixed once from a two-seed pilot at 640 NFE (SMC temperature 1 vs 0.3; EvoSearch population
8 vs 16; RBF one vs four children at a time), never per budget. The headline number is the NFE at which
a method's mean best reward first reaches best-of-N's at 256 trajectories (5120 NFE): the ratio 5120 / NFE
says how much cheaper it got there. Writes ``docs/benchmarks/search_digits.md`` and ``search_digits.png``.

Run: ``.venv/bin/pip install -e '.[bench]' && .venv/bin/python scripts/bench_search_digits.py``
(about half an hour on two CPU cores; ``--seeds`` and ``--budgets`` for a shorter run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from search_bench_common import nfe_to_reach, plot, run_methods, table  # noqa: E402

from pipelines.digits import DIGITS_MODEL, digits_chain  # noqa: E402
from rewards import digits_reward  # noqa: E402
from samplers.solvers import DPMSolverPP, SDEDPMSolverPP  # noqa: E402
from search import (  # noqa: E402
    best_of_n,
    diffusion_tree_sampling,
    evo_search,
    fk_steering,
    rollover_budget_forcing,
)

STEPS = 20
DIGIT = 3
BUDGETS = (160, 320, 640, 1280, 2560, 5120)
REFERENCE = ("best-of-N", 5120)  # BoN@256


def methods(unet=None) -> dict:
    """name -> run(max_nfe, generator), all on the unconditional digits model with the log-odds reward."""
    from diffusers import UNet2DModel

    unet = unet if unet is not None else UNet2DModel.from_pretrained(DIGITS_MODEL / "unet").eval()
    ode = digits_chain(None, steps=STEPS, solver=DPMSolverPP(2), unet=unet)
    sde = digits_chain(None, steps=STEPS, solver=SDEDPMSolverPP(2), unet=unet)
    reward = digits_reward(DIGIT, output="log_odds")
    return {
        "best-of-N": lambda nfe, g: best_of_n(ode, reward, max_nfe=nfe, generator=g),
        "FK steering (SMC)": lambda nfe, g: fk_steering(
            sde, reward, max_nfe=nfe, temperature=0.3, select="max", k=1, generator=g
        ),
        "DTS*": lambda nfe, g: diffusion_tree_sampling(sde, reward, max_nfe=nfe, greedy=True, generator=g),
        "EvoSearch": lambda nfe, g: evo_search(ode, reward, max_nfe=nfe, population=16, generator=g),
        "RBF": lambda nfe, g: rollover_budget_forcing(sde, reward, max_nfe=nfe, batch=4, generator=g),
    }


def reach_table(results, reference: float, reference_nfe: int) -> str:
    rows = [
        "| method | NFE to reach BoN@256's best | fraction of BoN@256's NFE | speed-up |",
        "|---|---|---|---|",
    ]
    for name, by_budget in results.items():
        nfe = nfe_to_reach(by_budget, reference)
        if nfe is None:
            rows.append(f"| {name} | not reached within {max(by_budget)} | — | — |")
        else:
            rows.append(f"| {name} | {nfe} | 1/{reference_nfe / nfe:g} | {reference_nfe / nfe:g}x |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if REFERENCE[1] not in args.budgets:
        parser.error(f"the budgets must include {REFERENCE[1]} (best-of-N at 256 trajectories)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results, spent = run_methods(methods(), args.budgets, args.seeds)
    reference = statistics.mean(results[REFERENCE[0]][REFERENCE[1]])
    reached = {name: nfe_to_reach(by_budget, reference) for name, by_budget in results.items()}
    best_ratio = max((REFERENCE[1] / n for n in reached.values() if n), default=None)
    minutes = (time.perf_counter() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    plot({f"unconditional digits model, reward: log-odds of a {DIGIT}": results},
         args.out / "search_digits.png", f"best reward found  (log-odds of a {DIGIT})")  # fmt: skip
    if best_ratio is None:
        outcome = "no method gets there."
    else:
        verdict = "meeting" if best_ratio >= 8 else "missing"
        outcome = f"the best method gets there with 1/{best_ratio:g} of the NFE, {verdict} the goal."
        if REFERENCE[1] / best_ratio == min(args.budgets):
            outcome += " That is the smallest budget run, so the true ratio may be larger."
    goal = "**Goal (issue 7): some method reaches BoN@256's best reward with at most 1/8 of its NFE.** "
    goal += outcome
    doc = f"""# Search on the bundled digits model: reward vs NFE

Generated by `scripts/bench_search_digits.py` ({args.seeds} seeds, {minutes:.0f} min on
{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}). The unconditional bundled model
(`pipelines/assets/digits`, null class, no guidance) is steered towards a {DIGIT}: the reward is the
bundled classifier's log-odds log p / (1 - p) that the image is a {DIGIT} (0 is even odds; 10 is
p = 0.99995). Each cell is the best reward the method found within the budget, mean ± standard deviation
over seeds. 20 steps for every method; settings in the script's docstring (fixed once, not per budget).

{table(results)}

BoN@256 (best-of-N with 256 trajectories, 5120 NFE) finds a best reward of {reference:.3f} on average.
How many NFE each method needs to match it (smallest budget whose mean reaches it):

{reach_table(results, reference, REFERENCE[1])}

{goal}

Most NFE any run of each method spent: {", ".join(f"{k} {v}" for k, v in spent.items())}.

![reward vs NFE](search_digits.png)
"""
    (args.out / "search_digits.md").write_text(doc)
    print(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
