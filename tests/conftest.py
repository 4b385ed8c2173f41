"""Shared fixtures: the real datasets beside the clone and small helpers."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real MedMNIST/MedNIST ``.npz`` files (``../shared/data`` beside the clone)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests need ../shared/data beside the clone")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_threads():
    # Keep tests deterministic and light on the 2-core CI machine.
    torch.set_num_threads(2)
    yield


def _records(folder: Path) -> list[dict]:
    """log.jsonl without its wall-clock entries."""
    return [
        {k: v for k, v in json.loads(line).items() if k != "train_seconds"}
        for line in (folder / "log.jsonl").read_text().splitlines()
    ]


@pytest.fixture
def sigkill_resume(tmp_path):
    """``run(cmd)``: the command ``cmd(out, *extra)`` (a 2-epoch run that checkpoints mid-epoch) runs twice side
    by side, one thread each; one is SIGKILLed mid-epoch after a full epoch, then resumed from its last.pt.
    Asserts that the resumed run's metrics.json and log.jsonl equal the uninterrupted run's, and returns the
    two folders (uninterrupted, resumed) for the caller's own checks."""

    def run(cmd) -> tuple[Path, Path]:
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        whole, cut = tmp_path / "whole", tmp_path / "cut"
        uninterrupted = subprocess.Popen(cmd(whole), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proc = subprocess.Popen(cmd(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_at, deadline = None, time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (cut / "last.pt").exists():
                try:
                    ckpt = torch.load(cut / "last.pt", weights_only=False)
                except Exception:  # noqa: BLE001 - replaced atomically, but a read may race the rename
                    continue
                if ckpt["epoch"] >= 1 and ckpt["batch"] > 0:  # mid-epoch, after a full epoch and a validation
                    proc.send_signal(signal.SIGKILL)
                    killed_at = (ckpt["epoch"], ckpt["batch"])
                    break
            time.sleep(0.05)
        proc.wait()
        assert killed_at is not None, "the run finished before it could be killed mid-epoch"
        assert not (cut / "metrics.json").exists()
        subprocess.run(cmd(cut, "--resume", str(cut / "last.pt")), check=True, env=env, capture_output=True)
        assert uninterrupted.wait() == 0, uninterrupted.stderr.read()
        assert json.loads((whole / "metrics.json").read_text()) == json.loads((cut / "metrics.json").read_text())
        assert _records(whole) == _records(cut)
        assert [r["epoch"] for r in _records(cut)] == [0, 1]
        return whole, cut

    return run
