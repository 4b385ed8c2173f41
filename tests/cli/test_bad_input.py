"""Every kind of bad input: a one-line error naming the file or option, exit status 2, no traceback,
and nothing already written is lost."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rlmask.cli import main

FAST = ["--model", "resnet10t", "--batch-size", "16", "--epochs", "1", "--no-progress"]


def fails(args, capsys, *needles):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def small_arrays():
    rng = np.random.default_rng(0)
    return {
        f"{s}_{k}": (
            rng.integers(0, 255, (20, 12, 12), dtype=np.uint8) if k == "images" else rng.integers(0, 2, (20, 1))
        )
        for s in ("train", "val", "test")
        for k in ("images", "labels")
    }


def image_folder(root, broken=False, empty_class=False):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    if broken:
        (root / "train" / "a" / "9.png").write_bytes(b"\x89PNG not really an image")
    if empty_class:
        (root / "train" / "c").mkdir()
        (root / "train" / "c" / "notes.txt").write_text("no images here")
    return root


def test_missing_data_path(tmp_path, capsys):
    fails(["train", "--data", tmp_path / "nope.npz", "--out", tmp_path / "o", *FAST], capsys, "nope.npz", "not found")


def test_corrupt_npz(tmp_path, capsys):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    fails(["data", "info", bad], capsys, "corrupt.npz")


def test_truncated_npz(tmp_path, capsys, shared_data):
    whole = (shared_data / "breastmnist.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole[: len(whole) // 2])
    fails(["train", "--data", cut, "--out", tmp_path / "o", *FAST], capsys, "cut.npz")


def test_npz_without_expected_keys(tmp_path, capsys):
    arrays = small_arrays()
    del arrays["val_images"]
    bad = write_npz(tmp_path / "nokeys.npz", **arrays)
    fails(["data", "info", bad], capsys, "nokeys.npz", "val_images")


def test_undecodable_image_keeps_what_was_written(tmp_path, capsys):
    good = image_folder(tmp_path / "good")
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(good), "--out", str(out), "--image-size", "12", *FAST, "--batch-size", "4"]) == 0
    )
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    broken = image_folder(tmp_path / "broken", broken=True)
    # A second run into the finished folder is refused before any work: nothing written is touched.
    fails(
        ["train", "--data", broken, "--out", out, "--image-size", "12", *FAST, "--batch-size", "4"],
        capsys,
        "holds a finished run",
        "--overwrite",
    )
    for name in ("last.pt", "best.pt", "metrics.json", "log.jsonl"):
        assert (out / name).read_bytes() == before[name], name
    # The broken image itself fails the run that reads it, naming the file.
    fails(
        ["train", "--data", broken, "--out", tmp_path / "other", "--image-size", "12", *FAST, "--batch-size", "4"],
        capsys,
        "9.png",
    )


def test_empty_class_folder(tmp_path, capsys):
    root = image_folder(tmp_path / "folder", empty_class=True)
    fails(["data", "info", root], capsys, "c", "has no images")


def test_unknown_model(tmp_path, capsys):
    fails(
        ["train", "--data", "synthetic:n=8,size=16", "--model", "resnet999", "--out", tmp_path / "o", "--no-progress"],
        capsys,
        "--model resnet999",
        "resnet18",
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["train", "--data", "synthetic:n=8,size=16", "--out", str(out), *FAST]) == 0
    return out


def test_checkpoint_that_does_not_fit_the_data(tiny_run, tmp_path, capsys):
    data = write_npz(tmp_path / "two.npz", **small_arrays())
    fails(["evaluate", tiny_run / "last.pt", "--data", data], capsys, "last.pt", "does not fit")


def test_checkpoint_that_does_not_fit_the_model(tiny_run, tmp_path, capsys):
    fails(
        [
            "finetune",
            "--init",
            tiny_run / "last.pt",
            "--model",
            "resnet18",
            "--data",
            "synthetic:n=8,size=16",
            "--out",
            tmp_path / "ft",
            "--no-progress",
        ],
        capsys,
        "--init",
        "does not fit the model",
    )


def test_resume_with_other_options(tiny_run, tmp_path, capsys):
    fails(
        [
            "train",
            "--data",
            "synthetic:n=8,size=16",
            "--out",
            tmp_path / "r",
            "--resume",
            tiny_run / "last.pt",
            *FAST,
            "--seed",
            "5",
        ],
        capsys,
        "--resume",
        "seed",
    )


def test_unreadable_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    fails(["evaluate", junk, "--data", "synthetic:n=8,size=16"], capsys, "junk.pt")


def test_a_real_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlmask", "data", "info", str(tmp_path / "missing.npz")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "missing.npz" in proc.stderr
