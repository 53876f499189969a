"""The `dsample` command line (the README's main job)."""

import pytest

from pipelines.cli import main


def parse_table(text):
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit():
            rows[parts[0]] = (int(parts[1]), int(parts[2]), float(parts[3]))
    return rows


def test_demo_prints_errors_and_high_order_beats_ddim(capsys):
    assert main(["demo", "--nfe", "12", "--batch", "16", "--solvers", "ddim,dpmsolver++3m,unipc-bh2-3"]) == 0
    rows = parse_table(capsys.readouterr().out)
    assert set(rows) == {"ddim", "dpmsolver++3m", "unipc-bh2-3"}
    assert all(nfe <= 12 for _, nfe, _ in rows.values())
    assert rows["unipc-bh2-3"][2] < rows["ddim"][2] / 3
    assert rows["dpmsolver++3m"][2] < rows["ddim"][2] / 3


def test_demo_respects_the_nfe_budget_for_singlestep_solvers(capsys):
    assert main(["demo", "--nfe", "10", "--batch", "4", "--solvers", "dpmsolver-3"]) == 0
    steps, nfe, _ = parse_table(capsys.readouterr().out)["dpmsolver-3"]
    assert nfe <= 10 and steps >= 3


def test_unknown_solver_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--solvers", "euler-maruyama-9000"])
    assert info.value.code == 2
    assert "unknown solver 'euler-maruyama-9000'" in capsys.readouterr().err


def test_solvers_lists_presets(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    assert "dpmsolver++3m" in out and "sde-dpmsolver++2m" in out
