"""``rlmask pretrain --method context``: no labels, the encoder exported as a backbone that ``transfer`` (linear and
the reference head), ``finetune --init`` and ``compare`` accept; exact resume after SIGKILL with the replay
buffer on; ``bench`` times it against a plain step of the same encoder."""

from __future__ import annotations

import json
import sys

import torch

from rlmask.agents import AGENTS
from rlmask.cli import main

TINY = [
    "--data",
    "synthetic:n=24,size=16",
    "--model",
    "context_encoder",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "64",
    "--no-progress",
    "--seed",
    "3",
    "--optimizer",
    "adam",
    "--lr",
    "1e-3",
]
FAST = ["--grid", "4", "--q-channels", "8,8"]  # a small Q-network: these tests check plumbing, not learning


def test_pretrain_context_exports_an_encoder_that_transfer_and_finetune_read(tmp_path, capsys):
    out = tmp_path / "pre"
    code = main(
        [
            "pretrain",
            "--method",
            "context",
            "--masking",
            "dqn",
            *FAST,
            "--block",
            "1",
            "--val-block",
            "2",
            *TINY,
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rec_error" in captured.out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"val/rec_error", "val/rec_error_image", "losses/rec", "losses/q", "policy/epsilon"} <= log[0].keys()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["rec_error"] > 0 and metrics["best"]["epoch"] == 0
    assert (out / "gallery.png").is_file() and (out / "policy.pt").is_file()
    heated = torch.load(out / "heated.pt")
    assert "blocks.0.0.weight" in heated and not any(k.startswith(("decoder.", "encoder.", "fc.")) for k in heated)

    for head in ("linear", "reference"):
        code = main(
            [
                "transfer",
                str(out / "heated.pt"),
                "--data",
                "synthetic:n=12,size=16",
                "--shots",
                "4",
                "--repeats",
                "2",
                "--epochs",
                "2",
                "--head",
                head,
                "--no-progress",
                "--out",
                str(tmp_path / f"transfer-{head}"),
            ]
        )
        assert code == 0, capsys.readouterr().err
        result = json.loads((tmp_path / f"transfer-{head}" / "transfer.json").read_text())
        entry = next(iter(result["results"].values()))["4"]
        assert entry["macro_f1"]["n"] == 2 and result["config"]["head"] == head
    # the pretraining's last.pt (a U-Net) transfers too: its encoder is taken
    assert (
        main(
            [
                "transfer",
                str(out / "last.pt"),
                "--data",
                "synthetic:n=12,size=16",
                "--shots",
                "4",
                "--repeats",
                "1",
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "transfer-last"),
            ]
        )
        == 0
    )
    code = main(["finetune", "--init", str(out / "heated.pt"), *TINY, "--epochs", "1", "--out", str(tmp_path / "ft")])
    assert code == 0, capsys.readouterr().err
    assert "macro_f1" in json.loads((tmp_path / "ft" / "metrics.json").read_text())["test"]
    # a reference head on a fine-tuned backbone is not the reference's set-up
    assert (
        main(
            [
                "transfer",
                str(out / "heated.pt"),
                "--data",
                "synthetic:n=12,size=16",
                "--mode",
                "finetune",
                "--head",
                "reference",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_pretrain_context_resumes_exactly_after_sigkill_with_replay(sigkill_resume):
    def cmd(out, *extra):
        return [
            sys.executable,
            "-m",
            "rlmask",
            "pretrain",
            "--method",
            "context",
            *FAST,
            "--replay-size",
            "40",
            "--replay-batch",
            "8",
            "--target-update",
            "3",
            "--exploration",
            "epsilon",
            *TINY,
            "--epochs",
            "2",
            "--checkpoint-every",
            "2",
            "--out",
            str(out),
            *extra,
        ]

    whole, cut = sigkill_resume(cmd)
    a, b = torch.load(whole / "policy.pt")["agent"], torch.load(cut / "policy.pt")["agent"]
    assert int(a["replay_count"]) == int(b["replay_count"]) > 40  # the ring has wrapped
    for key in ("replay_x", "replay_action", "replay_reward", "q_network.head.weight", "target_network.head.weight"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(
        torch.load(whole / "heated.pt")["context.weight"], torch.load(cut / "heated.pt")["context.weight"]
    )


def test_compare_fine_tunes_context_methods_and_skips_their_heated_scores(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    small = [a if a != "synthetic:n=24,size=16" else "synthetic:n=12,size=16" for a in TINY]
    seen = []  # the range of the images each agent gets in the mask gallery
    sample_masks = AGENTS["context"].cls.sample_masks
    monkeypatch.setattr(
        AGENTS["context"].cls,
        "sample_masks",
        lambda self, x, g: seen.append((self.cfg.scaling, x.min().item(), x.max().item())) or sample_masks(self, x, g),
    )
    code = main(
        [
            "compare",
            "--methods",
            "plain",
            "context-dqn",
            "ref=context-dqn",
            *small,
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--seeds",
            "1",
            "--method-option",
            "context-dqn:grid=4",
            "--method-option",
            "context-dqn:q_channels=8,8",
            "--method-option",
            "ref:grid=4",
            "--method-option",
            "ref:q_channels=8,8",
            "--method-option",
            "ref:scaling=reference",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "comparison.json").read_text())
    for method in ("context-dqn",):
        assert "macro_f1" in result["methods"][method]
        assert not any(k.startswith("heated_") for k in result["methods"][method])
    md = (out / "comparison.md").read_text()
    assert "| context-dqn |" in md and "context-dqn gallery" in md and (out / "masks.png").is_file()
    # Each agent sees the gallery's images scaled as in its training: [-1, 1] under the reference scaling,
    # rlmask's normalisation (black at -0.98, white at +2.1: beyond 1 here) otherwise.
    by_scaling = {scaling: (low, high) for scaling, low, high in seen}
    assert by_scaling["reference"][0] >= -1 and by_scaling["reference"][1] <= 1
    assert by_scaling["rlmask"][1] > 1


def test_bench_times_context_against_a_plain_step_of_the_same_encoder(capsys):
    code = main(
        [
            "bench",
            "--method",
            "context",
            "--grid",
            "4",
            "--q-channels",
            "8,8",
            "--model",
            "context_encoder",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--channels",
            "1",
            "--rounds",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--pipeline-batches",
            "0",
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "context_encoder" and result["ratio"] > 0
