"""benchmarks/distill_gain.py's report: statistics over seeds, paired per-seed gains, the full-recipe
row picked on validation (never on test), and its command line. (The experiment itself is a
benchmark, not a test.)"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_gain  # noqa: E402


def scores_for(abs_rel: dict) -> dict:
    """abs_rel[row] = (val, test seed 0, test seed 1); source test 0.2 everywhere, d1 = 1 - AbsRel."""
    out = {}
    for row, (val, *tests) in abs_rel.items():
        for seed, test in enumerate(tests):
            out.setdefault(row, {})[seed] = {
                ds: {"abs_rel": v, "d1": 1 - v} for ds, v in (("target-val", val), ("target-test", test), ("source-test", 0.2))}
    return out


def test_summary_statistics_and_paired_gains():
    rows = {r: (0.3, 0.3, 0.3) for r in ("2", "3", "4", "5", "6", "9a", "9")}
    rows.update({"1": (0.4, 0.4, 0.5), "7": (0.25, 0.2, 0.45), "8": (0.26, 0.1, 0.1), "9": (0.3, 0.2, 0.3)})
    s = distill_gain.summarise(scores_for(rows))
    assert s["full_recipe_row"] == "7"  # the better validation score, though row 8 is better on test
    assert s["full_recipe_vs_teacher"] == pytest.approx([1 - 0.2 / 0.4, 1 - 0.45 / 0.5])
    assert s["nano_student_vs_nano_source"] == pytest.approx([1 - 0.2 / 0.3, 0.0])
    mean, std = s["stats"]["1"]["target-test"]["abs_rel"]
    assert mean == pytest.approx(0.45) and std == pytest.approx(0.05 * 2 ** 0.5)  # sample std (ddof 1)
    assert s["teacher_domain_gap"] == pytest.approx(0.45 / 0.2)
    assert s["step_gains"]["7"] == pytest.approx([1 - 0.2 / 0.3, 1 - 0.45 / 0.3])
    text = distill_gain.table(s)
    assert "| 7 | + labeled source 1 : pseudo 2 (full recipe) | 0.325 ± 0.177 |" in text
    assert "+50.0%, +10.0%" in text and "2.25x" in text


@pytest.mark.parametrize("argv", [["--batch-size", "8"], ["--steps", "0"], ["--seeds", "two"]])
def test_bad_arguments_exit_2(argv, capsys):
    assert distill_gain.main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and err.count("\n") == 1
