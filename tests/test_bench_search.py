"""scripts/bench_search.py runs every method within its budget (small budgets, two seeds)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_search  # noqa: E402


def test_bench_runs_every_method_within_budget():
    results, spent = bench_search.run(seeds=2, budgets=(100, 400))
    assert set(results) == set(bench_search.methods(*bench_search.problem()))
    assert {"DTS* (tree search)", "EvoSearch", "RBF (rollover budget forcing)"} <= set(results)
    assert set(spent) == set(results) and all(0 < nfe <= 400 for nfe in spent.values())
    assert results["search over paths"][100] == []  # one path costs more than 100 NFE: reported as "—"
    assert results["EvoSearch"][100] == []  # so does its generation 0 (8 trajectories, 160 NFE)
    assert len(results["DTS* (tree search)"][100]) == len(results["EvoSearch"][400]) == 2
    table = bench_search.table(results)
    assert table.count("\n") == len(results) + 1 and "NFE 400" in table and "—" in table
