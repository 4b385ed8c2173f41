"""``rlmask report``: a self-contained HTML page of run, compare and transfer folders, checked as text and
in a real headless browser (Debian chromium through selenium)."""

import base64
import json
import os
import re
from pathlib import Path

import pytest

from rlmask.cli import main
from rlmask.errors import UserError
from rlmask.report.figures import plot_transfer
from rlmask.report.html import build_report

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian chromium, chromium-driver
DATA = "synthetic:n=4,size=16,modalities=1,organs=2"  # 2 classes, 8 training images
IMG = '<img src="data:image/png;base64,'


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A finished pretrain run and a finished comparison, made by the real command line with tiny budgets."""
    root = tmp_path_factory.mktemp("report")
    common = ["--data", DATA, "--model", "resnet10t", "--batch-size", "4", "--no-progress"]
    assert main(["pretrain", *common, "--epochs", "2", "--out", str(root / "run")]) == 0
    assert (
        main(
            [
                "compare",
                *common,
                "--epochs",
                "1",
                "--finetune-epochs",
                "1",
                "--seeds",
                "1",
                "--methods",
                "plain",
                "random-mask",
                "--out",
                str(root / "cmp"),
            ]
        )
        == 0
    )
    return {"run": root / "run", "compare": root / "cmp"}


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_of_run_and_compare_is_self_contained(folders, tmp_path):
    out = build_report([folders["run"], folders["compare"]], tmp_path / "sub" / "report.html", title="Tiny <report>")
    page = out.read_text()
    assert "<title>Tiny &lt;report&gt;</title>" in page
    # run: training curves + test confusion matrix; compare: every PNG the comparison wrote (curves, masks).
    compare_pngs = sorted(p.name for p in folders["compare"].glob("*.png"))
    assert compare_pngs == ["curves.png", "differences.png", "masks.png"]
    images = _images(page)
    # run: curves, the policy panel and the confusion matrix
    assert page.count(IMG) == len(images) == 3 + len(compare_pngs)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    assert (folders["compare"] / "masks.png").read_bytes() in images
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page  # inline CSS only, nothing to fetch
    anchors = re.findall(r'href="#([^"]+)"', page)
    assert len(anchors) == 2 and all(f'id="{a}"' in page for a in anchors)
    metrics = json.loads((folders["run"] / "metrics.json").read_text())
    assert all(name in page for name in metrics["test"]["per_class"])  # per-class table
    assert "Equal compute" in page and "Heated models" in page


def test_default_title_and_unknown_folder(folders, tmp_path):
    page = build_report([folders["run"]], tmp_path / "r.html").read_text()
    assert "<title>rlmask report</title>" in page and page.count(IMG) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: not an rlmask run, compare or transfer folder"):
        build_report([folders["run"], tmp_path / "empty"], tmp_path / "bad.html")
    with pytest.raises(UserError, match=r"missing: folder not found"):
        build_report([tmp_path / "missing"], tmp_path / "bad.html")
    (tmp_path / "empty" / "comparison.json").write_text("{cut off")
    with pytest.raises(UserError, match=r"comparison.json: not valid JSON"):
        build_report([tmp_path / "empty"], tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists()


def test_policy_panel_and_summary_of_a_pgnm_run(folders, tmp_path):
    page = build_report([folders["run"]], tmp_path / "r.html").read_text()
    summary = json.loads((folders["run"] / "policy_summary.json").read_text())
    assert "<h3>Policy</h3>" in page and "untrained policy" in page
    assert all(f"<td>{c}</td>" in page for c in summary["val_mask_mean_per_class"])


def test_a_finetuned_run_below_its_heated_model_is_flagged(tmp_path):
    def run(folder: Path, macro_f1: float, **config) -> None:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model": "resnet10t", "epochs": 1, **config}))
        (folder / "log.jsonl").write_text(json.dumps({"epoch": 0, "lr": 0.1}) + "\n")
        (folder / "metrics.json").write_text(json.dumps({"test": {"macro_f1": macro_f1, "accuracy": 0.5}}))

    run(tmp_path / "m" / "pretrain", 0.70, method="pgnm")
    init = str(tmp_path / "m" / "pretrain" / "heated.pt")
    run(tmp_path / "m" / "finetune", 0.60, method="finetune", init=init)
    run(tmp_path / "n" / "finetune", 0.75, method="finetune", init=init)
    page = build_report([tmp_path / "m" / "finetune"], tmp_path / "lower.html").read_text()
    assert "Fine-tuning lowered the score: test macro-F1 0.6000 after fine-tuning, 0.7000" in page
    page = build_report([tmp_path / "n" / "finetune"], tmp_path / "higher.html").read_text()
    assert "Fine-tuning lowered" not in page


def _stat(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    return {"mean": mean, "low": min(values), "high": max(values), "ci": [min(values), max(values)]}


def test_compare_tables_lead_with_the_paired_verdict_and_highlight_no_best_mean(tmp_path):
    # A comparison.json alone (no figures yet): the tables still render; which method is better is said by
    # the paired verdict, not by a highlighted largest mean.
    methods = {"plain (2 ep)": [0.25, 0.35], "pgnm": [0.6, 0.8]}
    summary = {
        m: {"per_seed": [{"seed": s, "accuracy": v} for s, v in enumerate(vals)], "accuracy": _stat(vals)}
        for m, vals in methods.items()
    }
    paired = {
        "pgnm": {
            "macro_f1": {"mean": 0.4, "low": 0.1, "high": 0.7, "verdict": "better", "basis": "t-interval over 2 seeds"}
        }
    }
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.json").write_text(
        json.dumps({"config": {"seeds": 2}, "methods": summary, "paired": paired})
    )
    page = build_report([tmp_path / "cmp"], tmp_path / "r.html").read_text()
    assert not re.findall(r'class="num best"', page)
    assert page.index("Method - plain") < page.index("Equal compute")
    assert "better" in page and "t-interval over 2 seeds" in page
    assert page.count(IMG) == 0 and "no figure" in page


def test_transfer_folder(tmp_path):
    folder = tmp_path / "transfer"
    results = {
        label: {
            shots: {
                "repeats": [{"repeat": 0, "n_train": 2 * int(shots)}],
                **{m: _stat([0.5 + 0.01 * int(shots) + bonus]) for m in ("accuracy", "macro_f1")},
            }
            for shots in ("1", "4")
        }
        for label, bonus in (("plain", 0.0), ("pgnm", 0.1))
    }
    folder.mkdir()
    (folder / "transfer.json").write_text(
        json.dumps({"config": {"data": ["x"]}, "checkpoints": list(results), "results": results})
    )
    plot_transfer(results, folder / "transfer.png")
    page = build_report([folder], tmp_path / "r.html").read_text()
    assert page.count(IMG) == 1
    for label in results:
        assert f"<h3>{label}" in page
    assert f"{results['pgnm']['4']['macro_f1']['mean']:.4f}" in page


def _chrome_or_skip():
    """The selenium driver of the Debian chromium; a missing piece fails under CI, skips elsewhere."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        reason = f"real-browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    return webdriver, Service


def test_report_in_a_real_browser(folders, tmp_path, monkeypatch):
    webdriver, Service = _chrome_or_skip()
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never download a driver
    out = build_report([folders["compare"]], tmp_path / "report.html", title="Browser check")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_window_size(1280, 900)
        driver.get(out.resolve().as_uri())
        assert driver.title == "Browser check"
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.complete, i.naturalWidth, i.src.slice(0, 22)]);"
        )
        assert len(images) == len(list(folders["compare"].glob("*.png")))
        assert all(done and width > 0 and src == "data:image/png;base64," for done, width, src in images)
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        height = driver.execute_script("return document.body.scrollHeight;")
        driver.set_window_size(1280, height + 100)
        shot = REPO / "test-artifacts" / "report.png"
        shot.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert shot.stat().st_size > 0 and shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_training_curves_give_every_method_its_own_look(tmp_path, monkeypatch):
    """More methods than the colour cycle's 10 colours: each line still differs in colour or marker, the
    legend sits beside the panels, and epochs a run did not validate (--val-every) are skipped, not zero."""
    from rlmask.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    log = [{"epoch": e, "losses/ce": 2.0 - e / 10} | ({"val/macro_f1": e / 10} if e % 2 else {}) for e in range(5)]
    curves = {f"method {i}": [log, log] for i in range(12)}
    figures.plot_training_curves(curves, tmp_path / "curves.png", boundary=3)
    left, right = drawn[0].axes
    looks = [(line.get_color(), line.get_marker()) for line in left.get_lines() if line.get_label() in curves]
    assert len(looks) == 12 and len(set(looks)) == 12
    validated = next(line for line in left.get_lines() if line.get_label() == "method 0")
    assert list(validated.get_xdata()) == [2, 4] and list(validated.get_ydata()) == [0.1, 0.3]
    assert right.get_legend() is not None and left.get_legend() is None


def _draw_curves_repeatedly(path: str) -> int:
    from rlmask.report.figures import plot_training_curves

    records = [[{"epoch": e, "val/macro_f1": 0.1 * e, "losses/ce": 1.0 / e} for e in range(1, 4)]]
    for _ in range(15):
        plot_training_curves({"plain": records}, Path(path))
    return 0


def test_two_processes_drawing_one_figure_do_not_collide(tmp_path):
    # Two workers finishing one comparison draw its figures at once; each write goes through a temporary
    # file of its own, so neither renames the other's away (a shared temporary name crashed one of them).
    import multiprocessing

    path = tmp_path / "curves.png"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_draw_curves_repeatedly, [str(path)] * 2) == [0, 0]
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
