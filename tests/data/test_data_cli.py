"""Issue 14 from the command line: each layout trains with one ``rlmask train --data PATH``; ``data info``
reports layout, split, exclusions, masks and colours; bad input is one ``error:`` line with exit status 2."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from disk_layouts import make_brain_mri, make_busi, make_lung_histology, write_dicom, write_image

from rlmask.cli import build_parser, main

TINY = ["--model", "resnet10t", "--epochs", "1", "--image-size", "16", "--batch-size", "8", "--no-progress"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # Folder indexes of these temporary datasets go beside them, not into ~/.cache/rlmask.
    monkeypatch.setenv("RLMASK_CACHE", str(tmp_path / "rlmask-cache"))


def fails(args, capsys, *needles):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


LAYOUTS = {
    "brain-mri": lambda tmp: make_brain_mri(tmp / "brain-tumor-mri"),
    "busi-folder": lambda tmp: make_busi(tmp / "Dataset_BUSI_with_GT"),
    "busi-csv": lambda tmp: make_busi(tmp / "Dataset_BUSI_with_GT") / "labels.csv",
    "lung-histology": lambda tmp: make_lung_histology(tmp / "lung_image_sets"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_trains_with_one_command(layout, tmp_path, capsys):
    data = LAYOUTS[layout](tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["val_fraction"], config["test_fraction"], config["split_seed"]) == (0.1, 0.2, None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] is not None  # every layout ends with a test split: its own or a seeded one
    err = capsys.readouterr().err
    assert ("look like segmentation masks" in err) == (layout == "busi-folder")


def test_data_info_reports_layout_split_masks_and_colours(tmp_path, capsys):
    root = make_busi(tmp_path / "busi")
    write_image(root / "benign" / "benign (9).png", np.zeros((14, 14, 3), np.uint8))  # one RGB file
    assert main(["data", "info", str(root), "--no-progress", "--exclude", "*(2).png", "*.gif"]) == 0
    out, err = capsys.readouterr()
    for line in (
        "layout: class folders (seeded split)",
        "split: seeded (seed 0) from all files: test 0.2, val 0.1 -> train 7, val 3, test 3",
        "--exclude '*(2).png': removed 3 file(s)",
        "--exclude '*.gif': removed 0 file(s)",
        "mask-like files: 16 (left out)",
        "files: 12 grey, 1 RGB",
    ):
        assert line in out, (line, out)
    for line in ("16 file(s) look like segmentation masks", "warning: --data", "--exclude '*.gif' matched no file"):
        assert line in err and line not in out, (line, err)  # warnings go to stderr
    assert main(["data", "info", str(root), "--no-progress", "--json", "--seed", "2"]) == 0
    info = json.loads(capsys.readouterr().out)["sources"][0]
    assert info["split"]["seed"] == 2 and info["colours"] == {"grey": 15, "rgb": 1} and info["masks"] == 16


def test_pack_of_class_folders_and_info_on_the_pack(tmp_path, capsys):
    root = make_lung_histology(tmp_path / "lung")
    pack = tmp_path / "lung-pack"
    assert (
        main(["data", "pack", str(root), "--out", str(pack), "--image-size", "6", "--no-progress", "--seed", "1"]) == 0
    )
    assert "(train 21, val 3, test 6)" in capsys.readouterr().out
    meta = json.loads((pack / "meta.json").read_text())
    assert meta["read"]["split"]["seed"] == 1 and meta["native_shape"] == [10, 10, 3]
    assert main(["data", "info", str(pack), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pack: stored 6x6 px, 3 channel(s); packed from native 10x10 px, 3 channel(s)" in out


def test_every_data_option_has_help():
    parser = build_parser()
    data = next(
        a
        for a in parser._subparsers._group_actions[0].choices["data"]._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    for name in ("info", "pack"):
        sub = data.choices[name]
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)
        assert "--no-progress" in sub.format_help()


# --- every bad input of the issue: one line naming the file, row or option, exit status 2 ---------------------


def test_manifest_missing_column(tmp_path, capsys):
    root = make_busi(tmp_path / "busi")
    fails(
        ["train", "--data", f"csv:{root / 'labels.csv'}?label=diagnosis", "--out", tmp_path / "o", *TINY],
        capsys,
        "has no column 'diagnosis'",
        "'image_path', 'text_caption', 'label'",
    )


def test_manifest_unknown_split_value(tmp_path, capsys):
    root = make_busi(tmp_path / "busi")
    csv = root / "split.csv"
    csv.write_text("image_path,label,split\nbenign/benign (1).png,benign,train\nbenign/benign (2).png,benign,tset\n")
    fails(["data", "info", csv, "--no-progress"], capsys, f"{csv} line 3: unknown split 'tset'")


def test_manifest_missing_file(tmp_path, capsys):
    root = make_busi(tmp_path / "busi")
    (root / "benign" / "benign (3).png").unlink()
    fails(
        ["train", "--data", root / "labels.csv", "--out", tmp_path / "o", *TINY],
        capsys,
        "labels.csv line 4: file benign/benign (3).png not found",
        "--skip-bad-rows",
    )


def test_pattern_that_excludes_everything(tmp_path, capsys):
    root = make_lung_histology(tmp_path / "lung")
    fails(
        ["data", "info", root, "--no-progress", "--exclude", "lung*"],
        capsys,
        "--exclude: no image of --data",
        "'lung*' removed 30",
    )


def test_undecodable_dicom_in_a_real_process(tmp_path):
    pytest.importorskip("pydicom")
    root = tmp_path / "ct"
    ramp = (np.arange(64, dtype=np.uint16) * 20).reshape(8, 8)
    for cls in ("a", "b"):
        for i in range(6):
            write_dicom(root / cls / f"{i}.dcm", ramp + i)
    bad = root / "a" / "0.dcm"  # the first training file: found when the pool is built
    bad.write_bytes(b"\0" * 200)
    proc = subprocess.run(
        [sys.executable, "-m", "rlmask", "train", "--data", str(root), "--out", str(tmp_path / "o"), *TINY],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: --data {root}: cannot decode DICOM file {bad} (")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JSON parsers other than Python's do."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_data_info_json_of_the_six_files_and_a_folder_is_stdout_only(shared_data, tmp_path):
    # A real process, progress bars on: stdout must be one JSON document; progress and warnings go to stderr.
    files = [shared_data / f"{n}.npz" for n in ("organamnist", "bloodmnist", "pneumoniamnist", "breastmnist")]
    files += [shared_data / "retinamnist.npz", shared_data / "mednist64.npz"]
    busi = make_busi(tmp_path / "busi")  # its masks are left out with a warning
    proc = subprocess.run(
        [sys.executable, "-m", "rlmask", "data", "info", *map(str, files), str(busi), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"RLMASK_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = _strict_json(proc.stdout)
    assert [s["name"] for s in info["sources"]][:6] == [f.stem for f in files]
    assert info["num_classes"] == sum(s["num_classes"] for s in info["sources"])
    assert "16 file(s) look like segmentation masks" in proc.stderr
    assert "warning: --data" in proc.stderr and "Traceback" not in proc.stderr
