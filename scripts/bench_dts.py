"""Diffusion Tree Sampling converges to the tilted target as rollouts grow: sliced Wasserstein vs rollouts.

On the 2-D Gaussian mixture of the search tests, the target is p(x) exp(r(x) / T) / Z with r linear and
T = 0.5, known in closed form (``GaussianMixture.tilted``). DTS (Jain et al. 2025; ``greedy=False``) runs on
the SDE chain (SDE-DPM-Solver++(2M), 8 steps) with progressive widening (children <= 2 (N + 1)^0.5), and
500 samples are drawn from its tree by the Boltzmann descent; the table gives their sliced Wasserstein
distance to 4000 exact target samples, per seed and on average, as the number of rollouts grows. For scale:
the untilted model's samples are at the distance printed below, and two independent sets of 500 exact
samples at the one printed as the floor. Writes ``docs/benchmarks/dts.md``.

Run: ``.venv/bin/python scripts/bench_dts.py`` (a few minutes).
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

from rewards import linear_reward  # noqa: E402
from samplers import DiscreteVPSchedule  # noqa: E402
from samplers.analytic import GaussianMixture  # noqa: E402
from samplers.solvers import SDEDPMSolverPP  # noqa: E402
from search import diffusion_tree_sampling, gaussian_mixture_chain, sliced_wasserstein  # noqa: E402

ROLLOUTS = (100, 200, 400, 800, 1600)
TEMPERATURE = 0.5
SAMPLES = 500


def distances(
    seeds: int, rollouts: tuple[int, ...] = ROLLOUTS
) -> tuple[dict[int, list[float]], float, float]:
    """(sliced W of DTS samples to the target per rollout count and seed, untilted distance, floor)."""
    gmm = GaussianMixture.random(dim=2, n_components=3, n_classes=1, seed=1)
    schedule = DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    reward = linear_reward(torch.tensor([0.8, -0.6], dtype=torch.float64))
    tilted, _ = gmm.tilted(reward.precision, reward.shift, temperature=TEMPERATURE)
    exact = tilted.sample(4000, generator=torch.Generator().manual_seed(9))
    chain = gaussian_mixture_chain(gmm, schedule, 8, SDEDPMSolverPP(2, eta=1.0))

    def to_target(x: torch.Tensor) -> float:
        return sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(0))

    result: dict[int, list[float]] = {}
    for n in rollouts:
        result[n] = []
        for seed in range(seeds):
            run = diffusion_tree_sampling(chain, reward, rollouts=n, temperature=TEMPERATURE, k=SAMPLES,
                                          max_children=None, widening=(2.0, 0.5),
                                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
            result[n].append(to_target(run.x))
    untilted = to_target(gmm.sample(4000, generator=torch.Generator().manual_seed(9)))
    floor = to_target(tilted.sample(SAMPLES, generator=torch.Generator().manual_seed(10)))
    return result, untilted, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    start = time.perf_counter()
    result, untilted, floor = distances(args.seeds)
    header = "| rollouts | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean |"
    rows = [header, "|---" * (args.seeds + 2) + "|"]
    for n, values in result.items():
        cells = " | ".join(f"{v:.3f}" for v in values)
        rows.append(f"| {n} | {cells} | **{statistics.mean(values):.3f}** |")
    means = [statistics.mean(v) for v in result.values()]
    trend = (
        "decreases at every doubling"
        if all(b < a for a, b in zip(means, means[1:]))
        else "does not decrease monotonically"
    )
    table = "\n".join(rows)
    setting = " ".join(__doc__.split("\n\n")[1].split())
    doc = f"""# Diffusion Tree Sampling: convergence to the tilted target

Written by `scripts/bench_dts.py` ({args.seeds} seeds, {time.perf_counter() - start:.0f} s). {setting}

{table}

Untilted model samples: {untilted:.3f}. Floor (500 exact target samples): {floor:.3f}. The mean distance
{trend} of the rollouts, from {means[0]:.3f} at {ROLLOUTS[0]} rollouts to {means[-1]:.3f} at {ROLLOUTS[-1]}.
"""
    out = ROOT / "docs" / "benchmarks" / "dts.md"
    out.write_text(doc)
    print(doc)


if __name__ == "__main__":
    main()
