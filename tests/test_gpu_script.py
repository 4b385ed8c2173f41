"""benchmarks/gpu.sh runs on a CPU-only machine in its dry mode: everything up to the first CUDA call."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script_copy(tmp_path: Path, venv: bool) -> Path:
    """The script in a repository of its own (tests/cuda linked), with this interpreter's environment as .venv."""
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "gpu.sh").write_text((REPO / "benchmarks" / "gpu.sh").read_text())
    (root / "tests").mkdir()
    (root / "tests" / "cuda").symlink_to(REPO / "tests" / "cuda")
    if venv:  # the tests run inside a virtual environment, as the README sets them up
        assert sys.prefix != sys.base_prefix, "the tests run inside a virtual environment"
        (root / ".venv").symlink_to(sys.prefix)
    return root


def _dry_run(root: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh"), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_gpu_script_dry_run(tmp_path):
    # As after the README's set-up: no PYTHON, and the python3 on PATH (the system's) may lack torch; the
    # script finds the project's .venv.
    proc = _dry_run(_script_copy(tmp_path, venv=True), tmp_path / "out", {})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "rlmask bench --method pgnm --model resnet50 --image-size 224 --batch-size 128" in log
    assert "--policy-input-size 112" in log and "pytest -q -m cuda" in log
    assert "done:" in log


def test_gpu_script_names_a_python_without_rlmask(tmp_path):
    proc = _dry_run(_script_copy(tmp_path, venv=False), tmp_path / "out", {"PYTHON": "/bin/false"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "gpu.sh: /bin/false cannot import rlmask and torch; set PYTHON to an interpreter that can (see the README)"
    )
