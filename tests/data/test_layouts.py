"""Folders as datasets ship them (issue 14): seeded stratified splits, split-folder names, exclusions, masks,
grey and colour files. Every layout is built from real PNG/JPEG files in a temporary folder."""

import json

import numpy as np
import pytest
import torch
from disk_layouts import make_brain_mri, make_busi, make_lung_histology, write_image

from rlmask.data import build_pool
from rlmask.data.filters import looks_like_mask
from rlmask.data.options import DataOptions
from rlmask.data.split import held_out_counts, stratified_split
from rlmask.errors import UserError


def _sizes(pool):
    return {name: len(split) for name, split in pool.splits.items()}


def _files(pool, split):
    return sorted(pool.splits[split].paths)


def _error(spec, **kwargs):
    with pytest.raises(UserError) as exc:
        build_pool([str(spec)], **kwargs)
    assert "\n" not in str(exc.value)
    return str(exc.value)


# --- the split as a pure function ---------------------------------------------------------------------------


def test_held_out_counts_for_tiny_and_large_classes():
    assert held_out_counts(100, [0.2, 0.1]) == [20, 10]
    assert held_out_counts(10, [0.2, 0.1]) == [2, 1]
    assert held_out_counts(3, [0.2, 0.1]) == [1, 1]  # one each for train, test and val
    assert held_out_counts(2, [0.2, 0.1]) == [1, 0]  # training keeps one
    assert held_out_counts(1, [0.2, 0.1]) == [0, 0]
    assert held_out_counts(10, [0.0, 0.1]) == [0, 1]


def test_stratified_split_is_seeded_and_per_class():
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    classes = ["a", "b", "c"]
    fractions = {"test": 0.2, "val": 0.1}
    one, again, other = (stratified_split(labels, classes, fractions, seed) for seed in (0, 0, 1))
    assert all(np.array_equal(one[k], again[k]) for k in one)
    assert not np.array_equal(one["test"], other["test"])
    for name, per_class in (("test", [6, 4, 2]), ("val", [3, 2, 1]), ("train", [21, 14, 7])):
        assert np.bincount(labels[one[name]], minlength=3).tolist() == per_class
    assert sorted(np.concatenate(list(one.values())).tolist()) == list(range(60))  # a partition
    # A class's split does not move when another class gains files (its generator is its own).
    more = np.repeat([0, 1, 2], [30, 25, 10])
    grown = stratified_split(more, classes, fractions, 0)
    assert np.array_equal(grown["test"][more[grown["test"]] == 0], one["test"][labels[one["test"]] == 0])


# --- the three layouts of the issue ------------------------------------------------------------------------


def test_lung_histology_class_folders_get_a_seeded_split(tmp_path):
    root = make_lung_histology(tmp_path / "lung_image_sets")
    cache = tmp_path / "cache"
    pool = build_pool([str(root)], cache_dir=cache)
    assert pool.classes == ["lung_image_sets/lung_aca", "lung_image_sets/lung_n", "lung_image_sets/lung_scc"]
    assert _sizes(pool) == {"train": 21, "val": 3, "test": 6}  # 10 per class: 7 / 1 / 2
    for name, n in (("train", 7), ("val", 1), ("test", 2)):
        assert torch.bincount(pool.splits[name].labels).tolist() == [n] * 3
    again = build_pool([str(root)], cache_dir=tmp_path / "other-cache", seed=0)  # walked afresh
    other = build_pool([str(root)], cache_dir=cache, seed=1)
    assert all(_files(pool, s) == _files(again, s) for s in pool.splits)
    assert _files(pool, "test") != _files(other, "test")
    assert (
        build_pool([str(root)], options=DataOptions(split_seed=0), seed=1).splits["test"].paths
        == pool.splits["test"].paths
    )  # --split-seed fixes the split whatever the run's seed
    # The split is recorded in the cached index, beside the file listing.
    (index,) = (cache / "folder-index").glob("*.json")
    record = json.loads(index.read_text())["split"]
    assert record["seed"] == 1 and record["test_fraction"] == 0.2 and record["val_fraction"] == 0.1
    assert sorted(record["held_out"]["test"]) == sorted(p[len(str(root)) + 1 :] for p in _files(other, "test"))


def test_fractions_are_options(tmp_path):
    root = make_lung_histology(tmp_path / "lung")
    pool = build_pool([str(root)], options=DataOptions(val_fraction=0.2, test_fraction=0.0))
    assert _sizes(pool) == {"train": 24, "val": 6}  # no test split at all
    assert "--val-fraction 0" in _error(root, options=DataOptions(val_fraction=0.0))
    assert "--test-fraction 1.5" in _error(root, options=DataOptions(test_fraction=1.5))
    assert "sum below 1" in _error(root, options=DataOptions(val_fraction=0.5, test_fraction=0.5))


def test_brain_mri_training_and_testing_folders(tmp_path):
    root = make_brain_mri(tmp_path / "brain-tumor-mri")
    pool = build_pool([str(root)], cache_dir=tmp_path)
    assert [c.split("/")[1] for c in pool.classes] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert _sizes(pool) == {"train": 36, "val": 4, "test": 12}  # val: 1 of each class's 10 training files
    assert all("/Testing/" in p for p in pool.splits["test"].paths)
    assert not any("/Testing/" in p for p in pool.splits["val"].paths)  # val comes from Training only
    other = build_pool([str(root)], cache_dir=tmp_path, seed=3)
    assert _files(pool, "test") == _files(other, "test") and _files(pool, "val") != _files(other, "val")
    info = pool.info(colours=True)["sources"][0]
    assert info["colours"] == {"grey": 44, "rgb": 8}  # 2 RGB files among each class's 10 training files
    assert info["layout"] == "split folders (Training/, Testing/)" and info["split"]["from"] == "train files"


def test_mixed_grey_and_rgb_with_channels_1_uses_luminance(tmp_path):
    root = tmp_path / "mixed"
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    for split in ("train", "val"):
        write_image(root / split / "a" / "0.png", np.full((8, 8), 77, np.uint8))
        write_image(root / split / "a" / "1.png", rgb)
    x = build_pool([str(root)], channels=1).splits["val"].load(torch.arange(2))
    assert x.shape == (2, 1, 8, 8)
    assert x[0].unique().tolist() == [77]
    assert abs(x[1].float().mean().item() - (0.299 * 200 + 0.587 * 100 + 0.114 * 50)) < 1


def test_busi_masks_are_left_out_with_a_warning(tmp_path, capsys):
    root = make_busi(tmp_path / "Dataset_BUSI_with_GT")
    pool = build_pool([str(root)], cache_dir=tmp_path)
    paths = [p for s in pool.splits.values() for p in s.paths]
    assert len(paths) == 15 and not any("_mask" in p.rsplit("/", 1)[1] for p in paths)
    assert "16 file(s) look like segmentation masks" in capsys.readouterr().err
    info = pool.info()["sources"][0]
    assert info["masks"] == 16 and not info["masks_kept"]
    kept = build_pool([str(root)], cache_dir=tmp_path, options=DataOptions(keep_masks=True))
    assert sum(len(s) for s in kept.splits.values()) == 31


@pytest.mark.parametrize(
    "name,mask",
    [
        ("a_mask.png", True),
        ("benign (3)_mask_1.png", True),
        ("x_SEG.tif", True),
        ("ct-mask.png", True),
        ("mask.png", False),
        ("masked_lung.png", False),
        ("segment_4.png", False),
    ],
)
def test_mask_names(name, mask):
    assert looks_like_mask(name) is mask


# --- split folder names, exclusions, bad layouts ------------------------------------------------------------


def test_split_folder_names_are_case_insensitive(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("TRAINING", 4), ("Valid", 2), ("test", 1)):
        for cls in ("x", "y"):
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", np.zeros((8, 8), np.uint8))
    pool = build_pool([str(root)])
    assert _sizes(pool) == {"train": 8, "val": 4, "test": 2}
    assert pool.info()["sources"][0]["split"] is None  # the dataset's own splits: nothing made
    (root / "validation").mkdir()
    assert "several val folders (Valid, validation)" in _error(root)


def test_split_folders_beside_other_folders_are_refused(tmp_path):
    root = make_brain_mri(tmp_path / "brain", train_per_class=2, test_per_class=1)
    write_image(root / "extras" / "a.png", np.zeros((8, 8), np.uint8))
    assert "mixes split folders (Testing, Training) with other folders (extras)" in _error(root)


def test_exclude_counts_per_pattern_and_drops_emptied_classes(tmp_path, capsys):
    root = make_brain_mri(tmp_path / "brain")
    opts = DataOptions(exclude=["notumor/*", "*_0001.JPG", "*.bmp"])
    pool = build_pool([str(root)], options=opts)
    info = pool.info()["sources"][0]
    assert info["exclude"] == {"notumor/*": 13, "*_0001.JPG": 6, "*.bmp": 0}  # 4 classes' 0001 minus notumor's
    assert info["dropped_classes"] == ["train/notumor", "test/notumor"]
    assert len(pool.classes) == 3 and sum(_sizes(pool).values()) == 52 - 13 - 6
    assert "--exclude '*.bmp' matched no file" in capsys.readouterr().err
    msg = _error(root, options=DataOptions(exclude=["Tr-*", "*.jpg"]))
    assert msg.startswith(f"--exclude: no image of --data {root} is left") and "'*.jpg' removed" in msg


def test_index_cache_does_not_depend_on_exclusions(tmp_path, monkeypatch):
    import rlmask.data.folder as folder

    root = make_lung_histology(tmp_path / "lung")
    build_pool([str(root)], cache_dir=tmp_path)
    monkeypatch.setattr(folder, "_walk", lambda root: pytest.fail("walked again"))
    pool = build_pool([str(root)], cache_dir=tmp_path, options=DataOptions(exclude=["lung_n/*"]))
    assert len(pool.classes) == 2


def test_images_without_class_folders(tmp_path):
    write_image(tmp_path / "flat" / "a.png", np.zeros((8, 8), np.uint8))
    assert "has no class folders" in _error(tmp_path / "flat")


def test_zip_leftovers_and_a_datasets_own_meta_json(tmp_path):
    root = make_lung_histology(tmp_path / "lung", per_class=4)
    write_image(root / "__MACOSX" / "lung_n" / "lungn1.jpeg", np.zeros((8, 8, 3), np.uint8))  # from a macOS zip
    (root / "meta.json").write_text('{"description": "the dataset\'s own, not an rlmask pack"}')
    pool = build_pool([str(root)])
    assert len(pool.classes) == 3 and sum(_sizes(pool).values()) == 12
