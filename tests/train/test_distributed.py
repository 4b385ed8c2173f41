"""torchrun with two CPU processes (gloo): train, pretrain with PGNM, and equivalence with one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

# float32 throughout (--no-amp): the batch-b-vs-2b check compares weights to float32 tolerance, and bf16
# autocast (the default on CPUs with native bf16) rounds partial sums that differ between the two runs.
TINY = [
    "--data",
    "synthetic:n=8,size=16",
    "--model",
    "resnet10t",
    "--eval-batch-size",
    "64",
    "--no-progress",
    "--epochs",
    "1",
    "--lr",
    "0.02",
    "--no-amp",
]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def torchrun(nproc, *args):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        "-m",
        "rlmask",
        *map(str, args),
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run):
    return torch.load(run / "last.pt", weights_only=False)["model"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torchrun(2, "train", *TINY, "--batch-size", "8", "--sync-bn", "--out", out)
    return out


def test_two_processes_write_one_run(two_process_run):
    config = json.loads((two_process_run / "config.json").read_text())
    assert config["world_size"] == 2 and config["steps_per_epoch"] == 96 // 16
    assert len((two_process_run / "command.txt").read_text().splitlines()) == 1  # rank 0 only
    metrics = json.loads((two_process_run / "metrics.json").read_text())
    # 8 test images per class (the synthetic minimum): gathered shares, the padding dropped.
    assert metrics["test"]["num_samples"] == 12 * 8


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(two_process_run, tmp_path):
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "rlmask", "train", *TINY, "--batch-size", "16", "--out", str(single)],
        env=ENV,
        check=True,
        capture_output=True,
    )
    a, b = weights(two_process_run), weights(single)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # Metrics come from the same (gathered) predictions on every process.
    ma = json.loads((two_process_run / "metrics.json").read_text())["test"]
    mb = json.loads((single / "metrics.json").read_text())["test"]
    assert ma["num_samples"] == mb["num_samples"]


def test_pgnm_pretraining_and_resume_under_torchrun(tmp_path):
    out = tmp_path / "pgnm"
    torchrun(2, "pretrain", "--method", "pgnm", *TINY, "--batch-size", "8", "--out", out, "--checkpoint-every", "2")
    assert (out / "heated.pt").is_file() and (out / "policy.pt").is_file()
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert 0 < record["policy/mask_mean"] < 1
    # Resume under DDP from the final checkpoint: nothing left to do, same metrics.
    before = (out / "metrics.json").read_text()
    torchrun(2, "pretrain", "--method", "pgnm", *TINY, "--batch-size", "8", "--out", out, "--resume", out / "last.pt")
    assert json.loads((out / "metrics.json").read_text()) == json.loads(before)
