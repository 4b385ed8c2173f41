"""The README's promise, checked on a table of bad invocations: exit status 2, one ``error:`` line that
names the file or option, no traceback; and ``--help`` works for every command and subcommand."""

import argparse
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from rlmask.cli import build_parser, main
from rlmask.models import create_model

FAST = [
    "--data",
    "synthetic:n=8,size=16",
    "--model",
    "resnet10t",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--no-progress",
]


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height pixels (PIL's decompression-bomb guard trips on opening)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "epochs.yaml").write_text("epochs: three\n")
    (root / "batch.yaml").write_text("batch_size: 2.5\n")
    (root / "data.yaml").write_text("data: 5\n")
    (root / "progress.toml").write_text('progress = "maybe"\n')
    (root / "foreign.yaml").write_text("method: random-mask\nobjective: reference\n")
    (root / "afile").write_text("")
    (root / "x.npz").mkdir()
    torch.save({"kind": "rlmask"}, root / "kind-only.pt")
    (root / "encoder").mkdir()  # what a self-supervised run exports: a backbone without a head
    torch.save(create_model("context_encoder", 0, in_chans=1).state_dict(), root / "encoder" / "heated.pt")
    (root / "encoder" / "config.json").write_text('{"model": "context_encoder", "image_size": 16}')
    (root / "note.txt").write_text("not an image")
    for split in ("train", "val"):
        (root / "bomb" / split / "a").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "bomb" / split / "a" / f"{i}.png")
    _png_header_only(root / "bomb" / "train" / "a" / "0.png", 20000, 20000)
    (root / "badlog").mkdir()
    (root / "badlog" / "config.json").write_text("{not json")
    (root / "badlog" / "log.jsonl").write_text("{]\n")
    return root


BAD = {
    "config: not an integer": (["train", "--config", "{r}/epochs.yaml"], "epochs"),
    "config: a float for an int": (["train", "--config", "{r}/batch.yaml"], "batch-size"),
    "config: a number for text": (["train", "--config", "{r}/data.yaml"], "data"),
    "config: not a boolean (TOML)": (["train", "--config", "{r}/progress.toml"], "progress"),
    "config: another method's option": (["pretrain", "--config", "{r}/foreign.yaml"], "objective"),
    "negative seed": (["train", "--seed", "-1"], "--seed"),
    "zero images per class": (["train", "--train-per-class", "0"], "--train-per-class"),
    "negative eval per class": (["train", "--eval-per-class", "-3"], "--eval-per-class"),
    "NaN learning rate": (["train", "--lr", "nan"], "--lr"),
    "negative warm-up": (["train", "--warmup-epochs", "-3"], "--warmup-epochs"),
    "warm-up longer than the run": (["train", "--epochs", "2", "--warmup-epochs", "5"], "--warmup-epochs"),
    "evaluate batch size 0": (
        ["evaluate", "{r}/kind-only.pt", "--data", "synthetic", "--batch-size", "0"],
        "--batch-size",
    ),
    "predict batch size 0": (["predict", "{r}/kind-only.pt", "{r}/note.txt", "--batch-size", "0"], "--batch-size"),
    "bench rounds 0": (["bench", "--rounds", "0"], "--rounds"),
    "not a number": (["train", "--epochs", "x"], "--epochs"),
    "unknown command": (["trian"], "trian"),
    "unknown flag": (["train", "--epoch", "2"], "epoch"),
    "another method's flag": (["pretrain", "--method", "random-mask", "--objective", "reference"], "pgnm"),
    "unknown method": (["pretrain", "--method", "nope"], "--method nope"),
    "unknown compared method": (["compare", "--methods", "nope"], "--methods nope"),
    "unknown method option": (["compare", "--method-option", "pgnm:nope=1"], "--method-option"),
    "variant named like an agent": (["compare", "--methods", "pgnm=random-mask"], "--methods pgnm=random-mask"),
    "variant of an unknown method": (["compare", "--methods", "mine=nope"], "--methods nope"),
    "option of a method not compared": (["compare", "--methods", "plain", "--method-option", "pgnm:grid=4"], "pgnm"),
    "unknown model": (["train", "--model", "resnet99"], "--model resnet99"),
    "evaluate a backbone without a head": (
        ["evaluate", "{r}/encoder/heated.pt", "--data", "synthetic"],
        "without a classifier head",
    ),
    "predict with a backbone without a head": (
        ["predict", "{r}/encoder/heated.pt", "{r}/note.txt", "--out", "{r}/p.csv"],
        "without a classifier head",
    ),
    "--out is a file": (["train", *FAST, "--out", "{r}/afile"], "--out"),
    "a folder named .npz": (["data", "info", "{r}/x.npz"], "is a folder"),
    "a checkpoint that is kind: rlmask only": (["evaluate", "{r}/kind-only.pt", "--data", "synthetic"], "kind-only.pt"),
    "report of a malformed run folder": (["report", "{r}/badlog", "--out", "{r}/r.html"], "badlog"),
    "decompression bomb": (["data", "info", "{r}/bomb", "--no-progress"], "decompression-bomb"),
    "diverging run": (["train", *FAST, "--lr", "1e30", "--out", "{r}/diverge"], "not finite"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_invocation_exits_2_with_one_line(case, files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a default --out lands here, if anything gets that far
    args, needle = BAD[case]
    code = main([a.replace("{r}", str(files)) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "|" not in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], err


def test_a_real_process_prints_no_traceback(files):
    proc = subprocess.run(
        [sys.executable, "-m", "rlmask", "train", "--config", str(files / "epochs.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


@pytest.mark.parametrize("command", [" ".join(c) for c in _commands(build_parser())] + [""])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_finetune_takes_the_architecture_from_the_config_beside_heated_pt(tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", "--method", "random-mask", *FAST, "--model", "resnet10t", "--out", str(pre)]) == 0
    code = main(
        [
            "finetune",
            "--init",
            str(pre / "heated.pt"),
            "--data",
            "synthetic:n=8,size=16",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "fine"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = __import__("json").loads((tmp_path / "fine" / "config.json").read_text())
    assert config["model"] == "resnet10t" and config["warmup_epochs"] == pytest.approx(0.7)
    assert config["provenance"]["torch"] == torch.__version__ and config["provenance"]["started"]


def test_stale_temporaries_and_partial_packs_are_removed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.abc123.tmp").write_bytes(b"torn")  # what a kill during an atomic write leaves
    assert main(["train", *FAST, "--out", str(out)]) == 0
    assert not list(out.glob(".*.tmp"))
    src = tmp_path / "src"
    for split in ("train", "val"):
        (src / split / "a").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / split / "a" / f"{i}.png")
    stale = tmp_path / ".pack.partial-999999999"  # a pack killed mid-way, its process long gone
    stale.mkdir()
    assert main(["data", "pack", str(src), "--out", str(tmp_path / "pack"), "--image-size", "8", "--no-progress"]) == 0
    assert not stale.exists() and (tmp_path / "pack").is_dir()


def test_more_config_types_are_checked(tmp_path, capsys):
    (tmp_path / "lr.yaml").write_text("lr: fast\n")
    (tmp_path / "exclude.toml").write_text("exclude = 3\n")
    for name, needle in (("lr.yaml", "expected a number"), ("exclude.toml", "expected text")):
        assert main(["train", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and name in err


def test_a_symlink_loop_in_an_image_folder_is_walked_once(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "data" / split / "a").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "data" / split / "a" / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "loop").symlink_to(tmp_path / "data" / "train")  # a -> train -> a ...
    assert main(["data", "info", str(tmp_path / "data"), "--no-progress", "--json"]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert info["splits"]["train"]["count"] == 2
