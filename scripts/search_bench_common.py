"""What the search benchmarks share: run every method at every budget and seed, tabulate, plot.

A method is ``run(max_nfe, generator) -> SearchResult``; its score at a budget is the best reward it found
(``result.all_scores.max()``), one value per seed. A method whose budget pays for less than one of its
units (``ValueError: ... smaller than ...``) has no value there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

Results = dict[str, dict[int, list[float]]]


def run_methods(
    methods: Mapping[str, Callable], budgets: Sequence[int], seeds: int, log: Callable[[str], None] = print
) -> tuple[Results, dict[str, int]]:
    """(best reward per method, budget and seed; the most NFE each method spent). Seed s uses
    ``torch.Generator().manual_seed(s)``; every result is checked to stay within its budget."""
    results: Results = {}
    spent: dict[str, int] = {}
    for name, method in methods.items():
        results[name] = {}
        for budget in budgets:
            best, started = [], time.perf_counter()
            for seed in range(seeds):
                try:
                    result = method(budget, torch.Generator().manual_seed(seed))
                except ValueError as error:  # the budget pays for less than one of this method's units
                    if "smaller than" not in str(error):
                        raise
                    break
                if result.nfe > budget:
                    raise AssertionError(f"{name} spent {result.nfe} NFE of a {budget} budget")
                spent[name] = max(spent.get(name, 0), result.nfe)
                best.append(float(result.all_scores.max()))
            results[name][budget] = best
            log(f"{name:<34} NFE {budget:>5}: {cell(best):>18}  ({time.perf_counter() - started:.1f} s)")
    return results, spent


def cell(values: list[float]) -> str:
    """mean ± standard deviation (or the single value, or a dash)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: Results) -> str:
    """A markdown table: one row per method, one column per budget."""
    budgets = list(next(iter(results.values())))
    header = "| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
    rows = [header, "|---" * (len(budgets) + 1) + "|"]
    for name, by_budget in results.items():
        rows.append(f"| {name} | " + " | ".join(cell(v) for v in by_budget.values()) + " |")
    return "\n".join(rows)


def plot(panels: Mapping[str, Results], path: Path, ylabel: str) -> None:
    """One panel per entry (title -> results): mean best reward vs NFE (log axis), standard deviation bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, results) in zip(axes[0], panels.items(), strict=True):
        for name, by_budget in results.items():
            points = {b: v for b, v in by_budget.items() if v}
            means = [statistics.mean(v) for v in points.values()]
            errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in points.values()]
            ax.errorbar(list(points), means, yerr=errs, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        budgets = sorted({b for by_budget in results.values() for b in by_budget})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("NFE (model calls, per particle, summed)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def nfe_to_reach(by_budget: Mapping[int, list[float]], target: float) -> int | None:
    """The smallest budget at which the mean best reward is at least ``target`` (None: never)."""
    for budget in sorted(by_budget):
        values = by_budget[budget]
        if values and statistics.mean(values) >= target:
            return budget
    return None
