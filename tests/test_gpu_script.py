"""benchmarks/gpu.sh runs on a CPU-only machine in its dry mode: everything up to the first CUDA call."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry-run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "gpu.log").read_text()
    assert "rlmask bench --method pgnm --model resnet50 --image-size 224 --batch-size 128" in log
    assert "--policy-input-size 112" in log and "pytest -q -m cuda" in log
    assert "done:" in log
