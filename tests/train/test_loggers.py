"""--logger jsonl / csv / tensorboard: what each writes, read back; they change nothing of training; a killed and
resumed run's logs equal an uninterrupted run's; --versioned run folders."""

import csv
import json
import sys

import pytest

from rlmask.cli import main

pytest.importorskip("tensorboard")  # an optional extra, installed by the test extra: CI runs these tests
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["--data", "synthetic:n=24,size=16", "--model", "resnet10t", "--batch-size", "8", "--no-progress", "--seed", "1"]
LOGGED = ["--logger", "csv", "jsonl", "--logger", "tensorboard", "--log-every", "1"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _events(folder):
    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalar_series(acc, tag):
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_loggers_write_steps_epochs_and_mask_grids_and_change_nothing(tmp_path):
    plain_args = ["pretrain", "--method", "random-mask", *TINY, "--epochs", "2"]
    assert main([*plain_args, "--out", str(tmp_path / "quiet")]) == 0
    assert main([*plain_args, "--out", str(tmp_path / "logged"), *LOGGED]) == 0
    quiet, logged = tmp_path / "quiet", tmp_path / "logged"
    assert json.loads((quiet / "metrics.json").read_text()) == json.loads((logged / "metrics.json").read_text())
    assert not (quiet / "steps.csv").exists() and not (quiet / "tensorboard").exists()

    steps_per_epoch = json.loads((logged / "config.json").read_text())["steps_per_epoch"]
    steps = _rows(logged / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 2 * steps_per_epoch + 1))
    assert {"losses/ce", "policy/mask_mean", "lr"} <= set(steps[0])
    jsonl = [json.loads(line) for line in (logged / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == [int(r["step"]) for r in steps]
    assert all(abs(float(a["losses/ce"]) - b["losses/ce"]) < 1e-9 for a, b in zip(steps, jsonl))
    epochs = _rows(logged / "epochs.csv")
    log = [json.loads(line) for line in (logged / "log.jsonl").read_text().splitlines()]
    assert [float(r["val/macro_f1"]) for r in epochs] == [r["val/macro_f1"] for r in log]

    acc = _events(logged)
    assert _scalar_series(acc, "step/losses/ce") == [(int(r["step"]), round(float(r["losses/ce"]), 6)) for r in steps]
    assert [s for s, _ in _scalar_series(acc, "epoch/val/macro_f1")] == [steps_per_epoch, 2 * steps_per_epoch]
    images = acc.Images("masks")
    assert [e.step for e in images] == [steps_per_epoch, 2 * steps_per_epoch]
    assert images[0].width == 8 * (16 + 2) and images[0].height == 3 * (16 + 2)  # 8 images; image, mask, masked


def test_killed_and_resumed_run_logs_like_an_uninterrupted_one(sigkill_resume):
    def cmd(out, *extra):
        return [sys.executable, "-m", "rlmask", "pretrain", "--method", "random-mask", *TINY, "--epochs", "2",
                "--checkpoint-every", "1", "--out", str(out), *LOGGED, *extra]  # fmt: skip

    whole, cut = sigkill_resume(cmd)
    for name in ("steps.csv", "epochs.csv"):
        drop = {"train_seconds"}
        a, b = ([{k: v for k, v in r.items() if k not in drop} for r in _rows(f / name)] for f in (whole, cut))
        assert a == b, name
    assert (whole / "steps.jsonl").read_text() == (cut / "steps.jsonl").read_text()
    acc_whole, acc_cut = _events(whole), _events(cut)
    for tag in ("step/losses/ce", "step/lr", "epoch/val/macro_f1"):
        assert _scalar_series(acc_whole, tag) == _scalar_series(acc_cut, tag), tag  # no step twice, none missing


def test_versioned_out_and_its_error(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--versioned" in err and err.count("\n") == 1
    assert main([*args, "--versioned"]) == 0 and main([*args, "--versioned"]) == 0
    assert (out / "version_1" / "metrics.json").is_file() and (out / "version_2" / "metrics.json").is_file()
    assert "this run writes" in capsys.readouterr().err
    assert (out / "metrics.json").is_file()  # the first run is untouched


def test_unknown_logger_is_one_line(tmp_path, capsys):
    assert main(["train", *TINY, "--logger", "wandb", "--out", str(tmp_path / "unused")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--logger" in err and "wandb" in err and err.count("\n") == 1
