"""CSV / TSV manifests as ``--data`` specs: columns found or named, split columns, seeded splits, bad rows."""

import random

import numpy as np
import pytest
import torch
from disk_layouts import make_busi, write_image

from rlmask.data import build_pool
from rlmask.data.options import DataOptions
from rlmask.errors import UserError


def _error(spec, **kwargs):
    with pytest.raises(UserError) as exc:
        build_pool([str(spec)], **kwargs)
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.fixture
def images(tmp_path):
    """tmp_path/img/{0..11}.png, grey, pixel value = 20 * index."""
    for i in range(12):
        write_image(tmp_path / "img" / f"{i}.png", np.full((8, 8), 20 * i, np.uint8))
    return tmp_path


def _write(path, rows, sep=","):
    path.write_text("\n".join(sep.join(r) for r in rows) + "\n")
    return path


def test_busi_csv_with_caption_column(tmp_path):
    root = make_busi(tmp_path / "Dataset_BUSI_with_GT")
    pool = build_pool([str(root / "labels.csv")])
    assert pool.sources == ["Dataset_BUSI_with_GT"]  # a generic file stem: the folder names the source
    assert pool.classes == [f"Dataset_BUSI_with_GT/{c}" for c in ("benign", "malignant", "normal")]
    assert {k: len(v) for k, v in pool.splits.items()} == {"train": 9, "val": 3, "test": 3}
    info = pool.info()["sources"][0]
    assert info["layout"] == "manifest (path=image_path, label=label)" and info["rows"] == 15
    folder = build_pool([str(root)])  # the same files as class folders: the same split
    for split in ("train", "val", "test"):
        assert pool.splits[split].paths == folder.splits[split].paths


def test_split_column_paths_relative_to_the_csv_and_labels_as_class_names(images):
    rows = [["file", "diagnosis", "subset"]] + [
        [f"img/{i}.png", ["2", "10"][i % 2], ["Training", "Validation", "TEST"][i % 3]] for i in range(12)
    ]
    spec = str(_write(images / "cases.csv", rows))
    pool = build_pool([spec])
    assert pool.classes == ["cases/2", "cases/10"]  # integer labels in numeric order
    assert {k: len(v) for k, v in pool.splits.items()} == {"train": 4, "val": 4, "test": 4}
    val = pool.splits["val"]
    assert val.paths == [str(images / "img" / f"{i}.png") for i in (1, 10, 4, 7)]
    assert val.labels.tolist() == [1, 0, 0, 1]
    assert val.load(torch.tensor([0]))[0].unique().tolist() == [20]


def test_named_columns_tsv_and_split_off_train(images):
    rows = [["name", "x", "grade", "part"]] + [
        [f"img/{i}.png", "", str(i % 2), "train" if i < 10 else "test"] for i in range(12)
    ]
    path = _write(images / "m.tsv", rows, sep="\t")
    pool = build_pool([f"csv:{path}?path=name&label=grade&split=part"])
    assert {k: len(v) for k, v in pool.splits.items()} == {"train": 8, "val": 2, "test": 2}  # val off train
    assert pool.info()["sources"][0]["split"]["from"] == "train files"


def test_split_depends_on_files_not_row_order(images):
    rows = [[f"img/{i}.png", "ab"[i % 2]] for i in range(12)]
    a = build_pool([str(_write(images / "a.csv", [["path", "label"]] + rows))], seed=4)
    random.Random(0).shuffle(rows)
    b = build_pool([str(_write(images / "b.csv", [["path", "label"]] + rows))], seed=4)
    c = build_pool([str(images / "b.csv")], seed=5)
    assert all(a.splits[s].paths == b.splits[s].paths for s in a.splits)
    assert a.splits["test"].paths != c.splits["test"].paths


def test_path_column_found_by_content_and_semicolons(images):
    rows = [["scan", "class"]] + [[f"img/{i}.png", "ab"[i % 2]] for i in range(12)]
    pool = build_pool([str(_write(images / "semi.csv", rows, sep=";"))])
    assert len(pool.classes) == 2 and sum(len(s) for s in pool.splits.values()) == 12


def test_missing_or_unknown_columns_list_the_columns(images):
    rows = [["scan", "note"]] + [[f"img/{i}.png", "x"] for i in range(3)]
    path = _write(images / "nolabel.csv", rows)
    msg = _error(path)
    assert "cannot tell which column holds the labels (columns: 'scan', 'note')" in msg and str(path) in msg
    assert "has no column 'grade' (columns: 'scan', 'note')" in _error(f"csv:{path}?label=grade")
    assert "unknown manifest option 'lable'" in _error(f"csv:{path}?lable=note")


def test_unknown_split_value_names_the_line(images):
    rows = [["path", "label", "split"], ["img/0.png", "a", "train"], ["img/1.png", "a", "holdout"]]
    path = _write(images / "bad-split.csv", rows)
    assert f"{path} line 3: unknown split 'holdout' in column 'split'" in _error(path)


def test_bad_rows_are_errors_or_skipped_with_a_count(images, capsys):
    rows = [["path", "label"]] + [[f"img/{i}.png", "ab"[i % 2]] for i in range(12)]
    rows[4] = ["img/missing.png", "a"]  # line 5
    rows[7] = ["img/7.png", ""]  # line 8
    rows.append(["img/1.png", "b"])  # line 14: listed twice
    path = _write(images / "bad.csv", rows)
    msg = _error(path)
    assert f"{path} line 5: file img/missing.png not found" in msg and "2 more bad row(s)" in msg
    assert "--skip-bad-rows" in msg
    pool = build_pool([str(path)], options=DataOptions(skip_bad_rows=True))
    assert sum(len(s) for s in pool.splits.values()) == 10
    assert pool.info()["sources"][0]["skipped_rows"] == 3
    err = capsys.readouterr().err
    assert "skipped 3 bad row(s) of 13 (--skip-bad-rows), first: " in err and "line 5" in err


def test_exclusions_and_masks_in_manifests(images):
    write_image(images / "img" / "0_mask.png", np.zeros((8, 8), np.uint8))
    rows = [["path", "label"]] + [[f"img/{i}.png", "ab"[i % 2]] for i in range(12)] + [["img/0_mask.png", "a"]]
    path = _write(images / "m.csv", rows)
    pool = build_pool([str(path)], options=DataOptions(exclude=["img/1?.png"]))
    info = pool.info()["sources"][0]
    assert info["exclude"] == {"img/1?.png": 2} and info["masks"] == 1
    assert sum(len(s) for s in pool.splits.values()) == 10
    msg = _error(path, options=DataOptions(exclude=["*.png"]))
    assert msg.startswith("--exclude: no image of --data") and "'*.png' removed 13" in msg
