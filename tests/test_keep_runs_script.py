"""benchmarks/keep_runs.py: a study kept as its small files, restored elsewhere, tables at once and resumes to
the same comparison."""

import json
import subprocess
import sys
from pathlib import Path

from rlmask.cli import main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "keep_runs.py"
TINY = ["--data", "synthetic:n=16,size=16", "--model", "resnet10t", "--batch-size", "16", "--no-progress"]


def _compare(out: Path) -> list[str]:
    args = ["compare", *TINY, "--methods", "plain", "random-mask", "--epochs", "1", "--finetune-epochs", "1"]
    return [*args, "--seeds", "1", "--bootstrap-resamples", "100", "--out", str(out)]


def test_a_kept_study_restored_elsewhere_tables_and_resumes_to_the_same_comparison(tmp_path, capsys):
    study, kept, restored = tmp_path / "study", tmp_path / "kept", tmp_path / "elsewhere" / "study"
    assert main(_compare(study)) == 0, capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(study), str(kept), "--as", str(restored)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "kept 4 finished runs and 1 comparisons" in proc.stdout  # plain, plain-short, pretrain, finetune
    assert not list(kept.rglob("*.pt"))  # checkpoints are not kept
    assert not (kept / "random-mask" / "seed0" / "pretrain" / "predictions.npz").exists()  # nothing pairs it
    assert (kept / "random-mask" / "seed0" / "finetune" / "predictions.npz").is_file()
    first = (study / "comparison.json").read_text()
    assert str(study) in first  # the paths the study recorded ...
    assert (kept / "comparison.json").read_text() == first.replace(str(study), str(restored))  # ... now the restore's
    assert str(study) not in (kept / "command.txt").read_text()
    assert str(study) not in (kept / "plain" / "seed0" / "config.json").read_text()

    restored.parent.mkdir()
    subprocess.run(["cp", "-r", str(kept), str(restored)], check=True)
    assert main(_compare(restored)) == 0, capsys.readouterr().err  # the pretraining trained again for heated.pt
    again = json.loads((restored / "comparison.json").read_text())
    assert again["paired"] == json.loads(first)["paired"]
    assert again["methods"] == json.loads(first)["methods"]
