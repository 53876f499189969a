"""scripts/bench_search.py runs every method within its budget (small budgets, two seeds)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_search  # noqa: E402


def test_bench_runs_every_method_within_budget():
    results, spent = bench_search.run(seeds=2, budgets=(100, 200))
    reward, ode, sde = bench_search.problem()
    assert set(results) == set(bench_search.methods(ode, sde))
    assert all(0 < nfe <= 200 for nfe in spent.values())
    table = bench_search.table(results)
    assert table.count("\n") == len(results) + 1 and "NFE 200" in table
