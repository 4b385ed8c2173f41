"""benchmarks/efficacy_budget.py: the change of the gap to plain between two budgets, paired by seed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "efficacy_budget.py"


def _comparison(folder: Path, epochs: int, gaps: dict[str, float], plain: float) -> Path:
    stat = {"mean": sum(gaps.values()) / len(gaps), "low": -0.5, "high": 0.5, "verdict": "no detectable difference"}
    paired = {k: {**stat, "per_seed": gaps} for k in ("macro_f1", "balanced_accuracy", "auroc")}
    folder.mkdir()
    (folder / "comparison.json").write_text(
        json.dumps(
            {
                "config": {"epochs": epochs, "finetune_epochs": 1},
                "methods": {f"plain ({epochs + 1} ep)": {"macro_f1": {"mean": plain, "n": len(gaps)}}},
                "paired": {"masking": paired},
            }
        )
    )
    return folder


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def test_change_of_the_gap_is_paired_by_seed_over_the_seeds_both_finished(tmp_path):
    short = _comparison(tmp_path / "short", 4, {"0": -0.10, "1": -0.20, "2": -0.30}, 0.5)
    long = _comparison(tmp_path / "long", 12, {"0": -0.05, "1": -0.16}, 0.6)  # seed 2 not finished
    proc = _run(str(short), str(long), "--figure", str(tmp_path / "budget.png"))
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| masking |"))
    # Per seed: +0.05 and +0.04, mean +0.045, over seeds 0 and 1 only.
    assert "| +0.045 [" in row and "(0, 1) |" in row
    assert "plain macro_f1: 4+1 ep 0.500 (n=3), 12+1 ep 0.600 (n=2)" in proc.stdout
    assert (tmp_path / "budget.png").stat().st_size > 0


def test_identical_budgets_change_nothing(tmp_path):
    gaps = {"0": -0.1, "1": -0.2, "2": -0.15}
    short = _comparison(tmp_path / "short", 4, gaps, 0.5)
    proc = _run(str(short), str(short))
    assert proc.returncode == 0, proc.stderr
    assert "+0.000 [+0.000, +0.000] no detectable difference (0, 1, 2)" in proc.stdout


@pytest.mark.parametrize("broken", ["missing", "not json"])
def test_an_unreadable_comparison_is_one_line(tmp_path, broken):
    folder = tmp_path / "x"
    folder.mkdir()
    if broken == "not json":
        (folder / "comparison.json").write_text("{")
    proc = _run(str(folder), str(folder))
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "comparison.json: cannot read a comparison" in proc.stderr
