"""End-to-end runs of train / evaluate / predict / data info on tiny budgets."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rlmask.cli import main
from rlmask.runtime import native_bf16

TINY = [
    "--data",
    "synthetic:n=24,size=16",
    "--model",
    "resnet10t",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "64",
    "--no-progress",
    "--seed",
    "3",
]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_train_writes_the_documented_files(trained):
    for name in ("config.json", "log.jsonl", "last.pt", "best.pt", "metrics.json", "command.txt"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in (
            "accuracy",
            "balanced_accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "auroc",
            "auroc_ovo",
            "per_class",
            "confusion_matrix",
        ):
            assert key in metrics[split], (split, key)
    lines = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "resnet10t" and config["image_size"] == 16 and config["small_stem"] is True
    assert config["amp"] is native_bf16(torch.device("cpu"))  # the resolved default is recorded
    ckpt = torch.load(trained / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "config", "rng_state", "metrics"} <= set(ckpt)
    assert ckpt["epoch"] == 2


def test_evaluate_reproduces_the_test_metrics(trained, capsys):
    code, out, _ = run_cli(["evaluate", trained / "last.pt", "--data", "synthetic:n=24,size=16", "--json"], capsys)
    assert code == 0
    again = json.loads(out)
    recorded = json.loads((trained / "metrics.json").read_text())["test"]
    assert again["accuracy"] == recorded["accuracy"]
    assert again["macro_f1"] == pytest.approx(recorded["macro_f1"])
    code, out, _ = run_cli(
        ["evaluate", trained / "last.pt", "--data", "synthetic:n=24,size=16", "--json", "--no-amp"], capsys
    )  # float32, as runs made before bf16 became the default
    assert code == 0 and json.loads(out)["num_samples"] == recorded["num_samples"]


def test_a_plain_state_dict_without_its_config_takes_the_stem_from_the_flag(trained, tmp_path, capsys, monkeypatch):
    """A resnet10t has a 3x3 first convolution with either stem, so a bare state dict cannot tell which it was
    trained with: --small-stem says so, and the moved weights then score as the run did."""
    from rlmask.models.weights import load_classifier

    bare = tmp_path / "moved" / "weights.pt"  # no config.json beside it
    bare.parent.mkdir()
    torch.save(torch.load(trained / "last.pt", weights_only=True)["model"], bare)
    assert json.loads((trained / "config.json").read_text())["small_stem"] is True  # 16 px: on by default
    assert load_classifier(bare, "resnet10t")[1]["small_stem"] is False  # the guess: standard
    assert load_classifier(bare, "resnet10t", small_stem=True)[1]["small_stem"] is True
    data = ["--data", "synthetic:n=24,size=16", "--json", "--model", "resnet10t"]
    code, out, err = run_cli(["evaluate", bare, *data, "--small-stem"], capsys)
    assert code == 0, err
    recorded = json.loads((trained / "metrics.json").read_text())["test"]
    assert json.loads(out)["macro_f1"] == pytest.approx(recorded["macro_f1"])
    # transfer builds the backbone with the flag's stem
    from rlmask.experiments import transfer

    stems = []

    def spy(*args, **kwargs):
        model, meta = load_classifier(*args, **kwargs)
        stems.append(meta["small_stem"])
        return model, meta

    monkeypatch.setattr(transfer, "load_classifier", spy)
    for stem in ("--small-stem", "--no-small-stem"):
        args = ["transfer", bare, "--model", "resnet10t", stem, "--data", "synthetic:n=12,size=16", "--shots", "2"]
        code, _, err = run_cli(
            [*args, "--repeats", "1", "--epochs", "1", "--no-progress", "--out", tmp_path / stem], capsys
        )
        assert code == 0, err
    assert stems == [True, False]


def test_predict_writes_probabilities_per_file(trained, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"im{i}.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "rgb.jpg")
    out = tmp_path / "preds.csv"
    code, _, _ = run_cli(["predict", trained / "best.pt", folder, tmp_path / "rgb.jpg", "--out", out], capsys)
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4
    classes = [c for c in rows[0] if c not in ("path", "prediction")]
    assert len(classes) == 12
    for row in rows:
        assert sum(float(row[c]) for c in classes) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] in classes


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["pretrain", "--method", "pgnm"],
        ["pretrain", "--method", "apga"],
        ["pretrain", "--method", "context"],
    ],
    ids=["plain", "pgnm", "apga", "context"],
)
def test_val_every_skips_validations_but_not_training(tmp_path, capsys, command):
    """--val-every 2 over 3 epochs validates after epochs 2 and 3 only; the model is the every-epoch run's."""
    runs = {}
    for every in (1, 2):
        out = tmp_path / f"every{every}"
        code, _, err = run_cli([*command, *TINY, "--epochs", "3", "--val-every", every, "--out", out], capsys)
        assert code == 0, err
        lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        runs[every] = out, lines, json.loads((out / "metrics.json").read_text())
    (_, every_epoch, full), (out, sparse, metrics) = runs[1], runs[2]
    assert [any(k.startswith("val/") for k in r) for r in sparse] == [False, True, True]
    for key in (k for k in every_epoch[0] if k.startswith(("losses/", "policy/"))):
        assert [r[key] for r in sparse] == [r[key] for r in every_epoch], key
    assert metrics["test"] == full["test"]
    assert metrics["best"]["epoch"] in (1, 2) and (out / "best.pt").is_file()
    code, _, err = run_cli([*command, *TINY, "--val-every", "0", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "--val-every" in err and err.count("\n") == 1


def test_config_file_sets_defaults_and_flags_override(tmp_path, capsys):
    cfg = tmp_path / "opts.toml"
    cfg.write_text('model = "resnet10t"\nepochs = 1\nbatch-size = 16\nlr = 0.05\ndata = ["synthetic:n=16,size=16"]\n')
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", cfg, "--lr", "0.02", "--no-progress", "--out", out], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.02 and config["epochs"] == 1 and config["batch_size"] == 16
    yaml_cfg = tmp_path / "opts.yaml"
    yaml_cfg.write_text("epochs: 1\nbogus_option: 3\n")
    code, _, err = run_cli(["train", "--config", yaml_cfg, "--out", tmp_path / "x"], capsys)
    assert code == 2 and "bogus_option" in err and err.count("\n") == 1


def test_data_info_json(capsys):
    code, out, _ = run_cli(["data", "info", "synthetic:n=16,size=16", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["num_classes"] == 12 and len(info["classes"]) == 12
    assert info["splits"]["train"]["count"] == 16 * 12


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["pretrain", "--method", "pgnm"],
        # APGA: two networks, two optimisers, the reward baseline; the bernoulli form also its mask generator
        ["pretrain", "--method", "apga", "--agent-channels", "4", "8"],
        ["pretrain", "--method", "apga-bernoulli", "--agent-channels", "4", "8", "--policy-grid", "4"],
    ],
    ids=["train", "pretrain-pgnm", "pretrain-apga", "pretrain-apga-bernoulli"],
)
def test_sigkill_then_resume_matches_an_uninterrupted_run(sigkill_resume, command):
    def cmd(out, *extra):
        return [
            sys.executable,
            "-m",
            "rlmask",
            *command,
            *TINY,
            "--data",
            "synthetic:n=24,size=16",
            "--epochs",
            "2",
            "--checkpoint-every",
            "2",
            "--out",
            str(out),
            *extra,
        ]

    whole, cut = sigkill_resume(cmd)
    if command[0] == "pretrain":
        assert (cut / "heated.pt").read_bytes() != b"" and torch.equal(
            torch.load(cut / "heated.pt")["fc.weight"], torch.load(whole / "heated.pt")["fc.weight"]
        )
    if (whole / "policy.pt").is_file():  # the agent's every tensor (networks, baselines) as uninterrupted
        agent_a, agent_b = torch.load(whole / "policy.pt")["agent"], torch.load(cut / "policy.pt")["agent"]
        tensors = [k for k, v in agent_a.items() if isinstance(v, torch.Tensor)]
        assert tensors and all(torch.equal(agent_a[k], agent_b[k]) for k in tensors)
    if command[2:3] and command[2].startswith("apga"):
        metrics = json.loads((cut / "metrics.json").read_text())
        assert "test_tta" in metrics and "val_tta" in metrics  # the test-time-augmentation view is scored at the end


def test_pack_an_image_folder_and_train_from_the_pack(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("CT/liver", "MR/brain"):
            (tmp_path / "src" / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(
                    tmp_path / "src" / split / cls / f"{i}.png"
                )
    pack = tmp_path / "pack"
    code, out, err = run_cli(
        ["data", "pack", tmp_path / "src", "--out", pack, "--image-size", "16", "--shard-size", "5"], capsys
    )
    assert code == 0, err
    code, out, _ = run_cli(["data", "info", pack, "--json"], capsys)
    info = json.loads(out)
    # The pack keeps the source folder's name, so class names (and checkpoints) fit both.
    assert info["classes"] == ["src/CT/liver", "src/MR/brain"] and info["image_size"] == 16
    assert info["splits"]["train"]["count"] == 12
    code, _, err = run_cli(
        [
            "train",
            "--data",
            pack,
            "--model",
            "resnet10t",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            tmp_path / "run",
        ],
        capsys,
    )
    assert code == 0, err
