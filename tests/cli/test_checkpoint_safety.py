"""No checkpoint runs code: a pickle payload is refused by every command that reads checkpoints."""

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from rlmask.cli import main

DATA = ["--data", "synthetic:n=8,size=16"]
TINY = [*DATA, "--model", "resnet10t", "--batch-size", "8", "--epochs", "1", "--no-progress"]


class Payload:
    """Unpickling this calls Path.touch(marker): what a hostile checkpoint's __reduce__ would do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "marker"
    ckpt = tmp_path / "hostile.pt"
    torch.save({"kind": "rlmask", "model": {"conv1.weight": torch.zeros(1)}, "payload": Payload(marker)}, ckpt)
    return ckpt, marker


def _image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(path)
    return path


def commands(ckpt, tmp_path):
    return {
        "evaluate": ["evaluate", str(ckpt), *DATA],
        "predict": ["predict", str(ckpt), str(_image(tmp_path)), "--out", str(tmp_path / "p.csv")],
        "transfer": ["transfer", str(ckpt), *DATA, "--shots", "2", "--repeats", "1", "--out", str(tmp_path / "t")],
        "finetune --init": ["finetune", "--init", str(ckpt), *TINY, "--out", str(tmp_path / "f")],
        "pretrain --init": [
            "pretrain",
            "--method",
            "random-mask",
            "--init",
            str(ckpt),
            *TINY,
            "--out",
            str(tmp_path / "p"),
        ],
        "train --resume": ["train", "--resume", str(ckpt), *TINY, "--out", str(tmp_path / "r")],
    }


@pytest.mark.parametrize(
    "entry", ["evaluate", "predict", "transfer", "finetune --init", "pretrain --init", "train --resume"]
)
def test_a_payload_checkpoint_is_refused_and_runs_nothing(entry, hostile, tmp_path, capsys):
    ckpt, marker = hostile
    assert main(commands(ckpt, tmp_path)[entry]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "--trust-checkpoint" in err, err
    assert "Traceback" not in err and not marker.exists()


def test_compare_refuses_a_payload_left_as_a_sub_run_checkpoint(hostile, tmp_path, capsys):
    ckpt, marker = hostile
    out = tmp_path / "cmp"
    (out / "plain" / "seed0").mkdir(parents=True)
    (out / "plain" / "seed0" / "last.pt").write_bytes(ckpt.read_bytes())  # compare resumes what it finds
    code = main(["compare", *TINY, "--methods", "plain", "--finetune-epochs", "0", "--seeds", "1", "--out", str(out)])
    assert code == 2 and "--trust-checkpoint" in capsys.readouterr().err and not marker.exists()


def test_trust_checkpoint_is_the_explicit_way_to_load_it(hostile, tmp_path, capsys):
    ckpt, marker = hostile
    main(["evaluate", str(ckpt), *DATA, "--trust-checkpoint"])  # then fails: not a real checkpoint
    assert marker.exists()  # the flag does what its help says: it runs the file's code


def test_what_rlmask_writes_loads_without_trust(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "pgnm", *TINY, "--out", str(out)]) == 0
    for name in ("last.pt", "best.pt", "heated.pt", "policy.pt"):
        torch.load(out / name, weights_only=True)
