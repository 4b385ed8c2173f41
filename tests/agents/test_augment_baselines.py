"""The baselines a user would pick instead of a masking agent (TrivialAugment, RandAugment, Mixup, CutMix) and
every agent's --augment: what each does to a batch, seeded, and exact resume of a run that uses one."""

import json
import sys

import pytest
import torch

from rlmask.agents import AGENTS
from rlmask.agents.augment import augment_batch
from rlmask.cli import main

TINY = ["--data", "synthetic:n=24,size=16", "--model", "resnet10t", "--batch-size", "8", "--no-progress", "--seed", "2"]


def _batch(c=1, n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, 16, 16, generator=g), torch.arange(n) % 4


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    x, y = _batch()
    mixed, t = augment_batch("mixup", x, y, num_classes=4, seed=5, mean=0.3, std=0.3)
    assert t.shape == (8, 4) and torch.allclose(t.sum(1), torch.ones(8))
    for i in range(8):  # row i = lam x_i + (1 - lam) x_j, and its target puts lam on y_i
        lam = t[i, y[i]].item() if t[i].max() < 1 else 1.0
        others = [j for j in range(8) if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)]
        assert others, i
    again, t2 = augment_batch("mixup", x, y, num_classes=4, seed=5, mean=0.3, std=0.3)
    assert torch.equal(again, mixed) and torch.equal(t2, t)


def test_cutmix_pastes_one_box_and_weights_labels_by_its_area():
    x, y = _batch()
    mixed, t = augment_batch("cutmix", x, y, num_classes=4, seed=3, mean=0.3, std=0.3)
    changed = (mixed != x).any(1)  # (B, H, W) pixels taken from another image
    boxes = changed.any(0)
    rows, cols = boxes.any(1).nonzero(), boxes.any(0).nonzero()
    area = int((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)) if len(rows) else 0
    lam = 1 - area / 256
    for i in range(8):
        own = t[i, y[i]].item()
        # the image's own label keeps lam, unless it was paired with an image of its own class
        assert own == pytest.approx(lam, abs=1e-6) or own == pytest.approx(1.0, abs=1e-6)
    assert (changed.sum((1, 2)) <= area).all()


@pytest.mark.parametrize("name", ["trivialaugment", "randaugment"])
def test_kornia_policies_are_seeded_keep_channels_and_vary_within_a_batch(name):
    x, y = _batch(c=1)
    x = x.clamp(-0.98, 2.1)  # inside the normalised range of [0, 1] images
    a, ya = augment_batch(name, x, y, num_classes=4, seed=1, mean=0.3162, std=0.3213)
    b, _ = augment_batch(name, x, y, num_classes=4, seed=1, mean=0.3162, std=0.3213)
    c, _ = augment_batch(name, x, y, num_classes=4, seed=2, mean=0.3162, std=0.3213)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, y)
    x01 = a * 0.3213 + 0.3162
    assert x01.min() >= -1e-5 and x01.max() <= 1 + 1e-5


def test_every_agent_takes_augment_and_the_presets_are_plain_with_one():
    for name in ("trivialaugment", "randaugment", "mixup", "cutmix"):
        assert AGENTS[name].presets == {"augment": name} and AGENTS[name].cls is AGENTS["plain"].cls
    for name, spec in AGENTS.items():
        if spec.cls.__module__.startswith("rlmask."):  # rlmask's own agents (tests register toy ones too)
            assert spec.make_options({"augment": "mixup"}).augment == "mixup", name


def test_mixup_run_is_seeded_and_an_agent_runs_on_top_of_one(tmp_path):
    for out in ("a", "b"):
        assert main(["pretrain", "--method", "mixup", *TINY, "--epochs", "1", "--out", str(tmp_path / out)]) == 0
    a, b = (json.loads((tmp_path / o / "metrics.json").read_text()) for o in ("a", "b"))
    assert a == b
    args = ["pretrain", "--method", "random-mask", "--augment", "cutmix", *TINY, "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "rm")]) == 0
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["agent"]["augment"] == "cutmix"


def test_unknown_augment_is_one_line(tmp_path, capsys):
    assert (
        main(["pretrain", "--method", "pgnm", "--augment", "autoaugment", *TINY, "--out", str(tmp_path / "unused")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--augment" in err and err.count("\n") == 1
    assert not (tmp_path / "unused").exists()


def test_trivialaugment_run_resumes_exactly(sigkill_resume):
    def cmd(out, *extra):
        return [sys.executable, "-m", "rlmask", "pretrain", "--method", "trivialaugment", *TINY, "--epochs", "2",
                "--checkpoint-every", "1", "--out", str(out), *extra]  # fmt: skip

    sigkill_resume(cmd)
