"""benchmarks/efficacy_regime.py: the pilot's budget ladder, the strongest baseline, the methods of each pass,
and the table and figure of finished regimes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "efficacy_regime.py"
spec = importlib.util.spec_from_file_location("efficacy_regime", SCRIPT)
regime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regime)


def test_the_budget_is_the_rung_no_longer_budget_beats():
    assert regime.choose_budget({25: 0.5, 50: 0.7, 100: 0.6}) == 50
    assert regime.choose_budget({25: 0.5, 50: 0.7, 100: 0.7}) == 50  # a tie: the shorter budget
    assert regime.choose_budget({25: 0.5, 50: 0.6, 100: 0.7}) is None  # still rising


@pytest.mark.parametrize(
    ("scores", "rungs", "total", "peaked"),
    [
        ({10: 0.5, 20: 0.8, 40: 0.7}, [10, 20, 40], 20, True),  # three rungs at least, even when the second peaks
        ({10: 0.5, 20: 0.6, 40: 0.7, 80: 0.65}, [10, 20, 40, 80], 40, True),  # grows while the longest is best
        ({10: 0.1, 20: 0.2, 40: 0.3, 80: 0.4, 160: 0.5}, [10, 20, 40, 80, 160], 160, False),  # at most MAX_RUNGS
    ],
)
def test_the_pilot_doubles_its_budget_until_plain_peaks(tmp_path, monkeypatch, scores, rungs, total, peaked):
    trained = []

    def fake_run(folder, source, size, epochs, seed, wait):  # a finished run folder with its val score
        trained.append((epochs, seed))
        folder.mkdir(parents=True)
        score = scores[epochs] + (seed - 1) * 0.3  # seeds swing around the rung's mean
        (folder / "metrics.json").write_text(json.dumps({"val": {"macro_f1": score}}))
        return True

    monkeypatch.setattr(regime, "_pilot_run", fake_run)
    monkeypatch.setitem(regime.PILOT_EPOCHS["pair"], 10, 10)
    plan = regime.pilot(tmp_path, "pair", 10)
    assert trained == [(e, s) for e in rungs for s in range(regime.PILOT_SEEDS)]
    assert plan["rungs"] == pytest.approx(scores)  # the mean over seeds
    assert plan["total_epochs"] == total and plan["peaked"] is peaked
    assert plan["epochs"] + plan["finetune_epochs"] == total and plan["finetune_epochs"] == total // 5


def test_a_pilot_another_process_holds_is_left_for_later(tmp_path):
    held = regime._lock(tmp_path / "pilot" / ".pair-n10-e25-s0.lock", wait=True)
    assert regime.pilot(tmp_path, "pair", 10, wait=False) is None
    held.close()


def _finished(folder: Path, val: float, test: float | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"val": {"macro_f1": val}, "test": {"macro_f1": test or val}}))


def test_the_strongest_baseline_is_chosen_on_validation_over_every_seed(tmp_path):
    for seed, (mixup, cutmix) in enumerate([(0.6, 0.5), (0.6, 0.5), (0.6, 0.9)]):
        _finished(tmp_path / "mixup" / f"seed{seed}" / "finetune", mixup, test=0.1)  # its test is the worst
        _finished(tmp_path / "cutmix" / f"seed{seed}" / "finetune", cutmix, test=0.9)
    _finished(tmp_path / "cutout" / "seed0" / "finetune", 0.99)  # one seed only: not a candidate
    assert regime.strongest_baseline(tmp_path) == "cutmix"  # 0.633 > 0.6
    methods, options = regime.methods_of(tmp_path, 3)
    assert methods[: 1 + len(regime.AGENTS) + len(regime.BASELINES)] == ["plain", *regime.AGENTS, *regime.BASELINES]
    assert "apga.cutmix=apga" in methods and "apga.cosine=apga" in methods
    assert "apga.cutmix:augment=cutmix" in options and "apga.cosine:mask_schedule=cosine" in options
    assert "context-dqn.cutmix:optimizer=adam" in options and "context-dqn.cosine:lr=0.001" in options
    methods, options = regime.methods_of(tmp_path, 1)
    assert methods == ["plain", *regime.AGENTS]
    assert options == [f"context-dqn:{o}" for o in ("optimizer=adam", "lr=0.001", "finetune_optimizer=adam")]


def test_pass_three_before_the_baselines_finished_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no baseline finished on every seed"):
        regime.strongest_baseline(tmp_path)


def test_every_regime_has_at_least_one_full_batch():
    for source, classes in (("pair", 4), ("pool", 34)):
        for size in regime.SIZES:
            assert regime.batch_size(source, size) <= size * classes


def test_the_pool_validates_about_ten_times_a_run_and_the_pair_every_four_epochs():
    plan = {"total_epochs": 240, "epochs": 192, "finetune_epochs": 48}
    assert regime.validation_every("pool", plan) == 24
    assert regime.validation_every("pool", {"total_epochs": 16}) == 4  # never more often
    assert regime.validation_every("pair", plan) == 4


def test_each_method_has_its_panel():
    assert [regime.panel_of(m) for m in ("apga", "mixup", "apga.mixup", "apga.cosine")] == list(regime.PANELS)


def _comparison(folder: Path, total: int, plain: float, gaps: dict[str, tuple], seeds: int = 3) -> None:
    folder.mkdir(parents=True)
    paired = {
        m: {"macro_f1": {"mean": mean, "low": low, "high": high, "verdict": verdict}}
        for m, (mean, low, high, verdict) in gaps.items()
    }
    paired["random-mask (reference view)"] = paired["random-mask"]  # only equal compute enters the table
    (folder / "comparison.json").write_text(
        json.dumps(
            {
                "config": {"seeds": seeds},
                "equal_compute_epochs": total,
                "methods": {f"plain ({total} ep)": {"macro_f1": {"mean": plain}}},
                "paired": paired,
            }
        )
    )


def test_table_and_figure_of_the_finished_regimes(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    _comparison(out / "pair-n10", 40, 0.61, {"random-mask": (-0.05, -0.09, -0.01, "worse")})
    _comparison(
        out / "pair-n25",
        20,
        0.70,
        {"random-mask": (0.02, -0.03, 0.07, "no detectable difference"), "mixup": (0.04, 0.01, 0.07, "better")},
        seeds=2,  # a regime assembled before its last seed finished says so
    )
    (out / "pilots.json").write_text(
        json.dumps(
            {
                "pair-n10": {"rungs": {"25": 0.5, "50": 0.6, "100": 0.55}, "peaked": True, "total_epochs": 50},
                "pair-n50": {"rungs": {"10": 0.5, "20": 0.6}, "peaked": False, "total_epochs": 20},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "table", str(out), str(results)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    table = (results / "regime.md").read_text()
    assert "| random-mask | -0.050 [-0.090, -0.010] behind | +0.020 [-0.030, +0.070] no diff. |" in table
    assert "| mixup |  | +0.040 [+0.010, +0.070] ahead |" in table
    assert "reference view" not in table
    assert "40 ep (25: 0.50, 50: 0.60, 100: 0.55)" in table
    assert "| plain macro-F1 | 0.610 | 0.700 |" in table
    assert "| seeds | 3 | 2 |" in table
    assert "| pair-n10 | 25: 0.500, 50: 0.600, 100: 0.550 | 50 |" in table  # every pilot, with or without study
    assert "| pair-n50 | 10: 0.500, 20: 0.600 | 20 (the longest: still rising) |" in table
    assert "| random-mask | 10 | - | not detectably behind from 25/class on |" in table
    assert "| mixup | - | 25 | behind at no size measured (25/class) |" in table
    assert (results / "regime.png").stat().st_size > 0
    assert (results / "pair-n25" / "comparison.json").is_file()
    assert json.loads((results / "regime.json").read_text())["pair"]["25"]["equal_compute_epochs"] == 20


@pytest.mark.parametrize(
    "verdicts, said",
    [
        ({10: "worse", 25: "worse", 50: "no detectable difference"}, "not detectably behind from 50/class on"),
        ({10: "worse", 25: "no detectable difference", 50: "worse"}, "still behind at 50/class, the largest measured"),
        ({10: "better", 25: "no detectable difference"}, "behind at no size measured (10-25/class)"),
        ({10: "no detectable difference"}, "behind at no size measured (10/class)"),
    ],
)
def test_the_size_where_a_gap_closes_is_the_first_after_its_last_behind(verdicts, said):
    assert regime.gap_closes(verdicts) == said


def test_table_without_a_finished_regime_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "table", str(tmp_path), str(tmp_path / "r")], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.strip().endswith("no finished regime comparison")
