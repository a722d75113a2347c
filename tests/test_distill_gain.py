"""benchmarks/distill_gain.py (v2)'s report: statistics over seeds, rows picked on validation (never
on test), paired per-seed gains, and its command line. (The experiment itself is a benchmark.)"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_gain  # noqa: E402


def scores_for(abs_rel: dict) -> dict:
    """abs_rel[row] = (val, (test render, test photo) seed 0, ... seed 1); val the same for both styles."""
    out = {}
    for row, (val, *tests) in abs_rel.items():
        for seed, (render, photo) in enumerate(tests):
            out.setdefault(row, {})[seed] = {
                ds: {"abs_rel": v, "d1": 1 - v} for ds, v in (("val-render", val), ("val-photo", val),
                                                              ("test-render", render), ("test-photo", photo))}
    return out


def test_rows_picked_on_validation_and_paired_gains():
    rows = {r: (0.3, (0.3, 0.3), (0.3, 0.3)) for r in ("L1", "L2", "L3", "L4", "L6", "L7m", "L7r", "nano-labels")}
    rows.update({
        "teacher": (0.40, (0.4, 0.4), (0.5, 0.5)),
        "teacher+": (0.45, (0.1, 0.1), (0.1, 0.1)),  # better on test, worse on val: never picked
        "L5": (0.20, (0.2, 0.4), (0.4, 0.5)),
        "nano-pseudo": (0.3, (0.2, 0.2), (0.3, 0.3)),
    })
    s = distill_gain.summarise(scores_for(rows))
    assert s["baseline_rows"] == {0: "teacher", 1: "teacher"} and s["full_recipe_rows"] == {0: "L5", 1: "L5"}
    assert s["full_recipe_vs_baseline"] == pytest.approx([1 - 0.3 / 0.4, 1 - 0.45 / 0.5])
    assert s["full_recipe_vs_baseline_per_style"]["render"] == pytest.approx([0.5, 0.2])
    assert s["gains"]["da_v2_nano_pseudo_vs_labels"] == pytest.approx([1 - 0.2 / 0.3, 0.0])
    assert s["gains"]["L5_vs_L4"] == pytest.approx([0.0, 1 - 0.45 / 0.3])
    mean, std = s["stats"]["teacher"]["test-broad"]
    assert mean == pytest.approx(0.45) and std == pytest.approx(0.05 * 2 ** 0.5)  # sample std (ddof 1)
    assert "H-L5_vs_H" not in s["gains"]  # rows that did not run are left out
    text = distill_gain.table(s, 40)
    assert "| L5 | + confidence (full recipe) | 0.375 ± 0.106 |" in text and "+25.0%, +10.0%" in text


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "8"], "multiple of 3"), (["--steps", "0"], ">= 1"), (["--seeds", "two"], "seeds"),
    (["--corpus", "1000", "--budgets", "40", "200"], "at least 20x the largest budget (4000)"),
    (["--budgets", "4"], "at least 6 scenes"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert distill_gain.main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and err.count("\n") == 1 and message in err
