"""``rlmask transfer`` on real data with tiny budgets: a pneumonia model transferred to breast ultrasound."""

import json

import pytest
import torch

from rlmask.errors import UserError
from rlmask.experiments.transfer import (
    METRICS,
    TransferConfig,
    checkpoint_labels,
    class_balanced_subset,
    parse_shots,
    run_transfer,
)
from rlmask.io import load_checkpoint, save_checkpoint
from rlmask.train.loop import TrainConfig, fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, shared_data):
    """A grey resnet10t trained for one epoch on 64 pneumonia X-rays per class, and the same weights as a
    plain state dict with torch.compile's ``_orig_mod.`` prefix in a folder without config.json."""
    run = tmp_path_factory.mktemp("pneumonia") / "plain" / "seed0"
    fit(
        TrainConfig(
            data=[str(shared_data / "pneumoniamnist.npz")],
            model="resnet10t",
            epochs=1,
            image_size=16,
            train_per_class=64,
            eval_per_class=16,
            batch_size=32,
            progress=False,
            out=str(run),
        )
    )
    heated = tmp_path_factory.mktemp("heated") / "heated.pt"
    save_checkpoint(heated, {f"_orig_mod.{k}": v for k, v in load_checkpoint(run / "last.pt")["model"].items()})
    return run / "last.pt", heated


def tiny(shared_data, tmp_path, checkpoints, data="breastmnist", **kw) -> TransferConfig:
    kw = {"eval_per_class": 24, "progress": False, "out": str(tmp_path / "out")} | kw
    return TransferConfig(checkpoints=[str(c) for c in checkpoints], data=[str(shared_data / f"{data}.npz")], **kw)


def test_linear_transfer_of_two_checkpoints_on_identical_subsets(pretrained, shared_data, tmp_path):
    ckpt, heated = pretrained
    cfg = tiny(shared_data, tmp_path, [ckpt, heated], shots="16,all,8", repeats=3, epochs=5, model="resnet10t")
    result = run_transfer(cfg)

    saved = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["config"]["epochs"] == 5 and saved["config"]["lr"] == pytest.approx(1e-2)
    labels = saved["checkpoints"]
    assert len(set(labels)) == 2 and labels[0].endswith("seed0/last.pt") and labels[1].endswith("heated.pt")
    for label in labels:
        assert list(saved["results"][label]) == ["8", "16", "all"]
        for n, entry in saved["results"][label].items():
            assert [r["repeat"] for r in entry["repeats"]] == [0, 1, 2]
            # breastmnist: 2 classes with >= 16 training images each, 546 in all.
            assert all(r["n_train"] == (546 if n == "all" else 2 * int(n)) for r in entry["repeats"])
            # repeats draw different subsets; "all" is one subset (its repeats differ in init and order)
            assert len({r["subset_digest"] for r in entry["repeats"]}) == (1 if n == "all" else 3)
            for m in METRICS:
                stat = entry[m]
                assert stat["n"] == 3
                assert stat["mean"] == pytest.approx(sum(r[m] for r in entry["repeats"]) / 3)
                assert stat["ci"][0] <= stat["mean"] <= stat["ci"][1]
    digests = [[r["subset_digest"] for e in saved["results"][lab].values() for r in e["repeats"]] for lab in labels]
    assert digests[0] == digests[1]
    assert (tmp_path / "out" / "transfer.png").read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "out" / "transfer.md").read_text()
    assert "![](transfer.png)" in md and all(f"## {lab}" in md for lab in labels)


def test_finetune_on_an_rgb_task_from_a_grey_checkpoint(pretrained, shared_data, tmp_path):
    # retinamnist is RGB with 5 classes; the pool is built grey for the grey checkpoint.
    cfg = tiny(
        shared_data,
        tmp_path,
        [pretrained[0]],
        data="retinamnist",
        shots="4",
        repeats=2,
        epochs=1,
        mode="finetune",
        eval_per_class=8,
    )
    result = run_transfer(cfg)
    entry = result["results"][result["checkpoints"][0]]["4"]
    assert result["checkpoint_info"][result["checkpoints"][0]]["channels"] == 1
    assert [r["n_train"] for r in entry["repeats"]] == [20, 20]  # 5 classes x 4
    assert all(0 <= r["accuracy"] <= 1 for r in entry["repeats"])
    assert (tmp_path / "out" / "transfer.png").read_bytes()[:8] == PNG_MAGIC


def test_class_balanced_subset_is_seeded_and_keeps_small_classes_whole():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 6)
    draw = lambda n, seed: class_balanced_subset(labels, n, torch.Generator().manual_seed(seed))  # noqa: E731
    idx = draw(4, 0)
    assert torch.bincount(labels[idx]).tolist() == [4, 3, 4]
    assert torch.equal(idx, draw(4, 0)) and not torch.equal(idx, draw(4, 1))
    assert torch.equal(idx, idx.sort().values)
    assert torch.equal(class_balanced_subset(labels, None, torch.Generator()), torch.arange(len(labels)))


def test_shots_and_labels():
    assert parse_shots("64, 16,all,16") == [16, 64, "all"]
    with pytest.raises(UserError, match=r"--shots 16,abc: 'abc'"):
        parse_shots("16,abc")
    with pytest.raises(UserError, match="--shots"):
        parse_shots("0")
    assert checkpoint_labels(["runs/a/seed0/finetune/last.pt", "runs/b/seed0/finetune/last.pt"]) == [
        "a/seed0/finetune/last.pt",
        "b/seed0/finetune/last.pt",
    ]
    assert checkpoint_labels(["x/last.pt", "x/last.pt"]) == ["x/last.pt", "x/last.pt#2"]


def test_bad_input_is_one_line(tmp_path):
    cfg = TransferConfig(checkpoints=[str(tmp_path / "missing.pt")], data=["synthetic"], out=str(tmp_path))
    with pytest.raises(UserError, match="missing.pt: file not found"):
        run_transfer(cfg)
    for bad in ({"repeats": 0}, {"shots": "16,abc"}, {"checkpoints": []}):
        with pytest.raises(UserError) as err:
            run_transfer(TransferConfig(**({"checkpoints": ["x.pt"], "data": ["synthetic"]} | bad)))
        assert "\n" not in str(err.value)
