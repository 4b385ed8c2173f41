"""PGNM end to end on tiny budgets: pretrain (both objectives, baselines), fine-tune, compare, bench."""

import json

import pytest
import torch

from rlmask.cli import main
from rlmask.models import create_model

DATA = ["--data", "synthetic:n=12,size=16"]
FAST = ["--model", "resnet10t", "--batch-size", "16", "--eval-batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def pgnm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pgnm")
    assert main(["pretrain", "--method", "pgnm", *DATA, *FAST, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_pretrain_writes_heated_policy_and_policy_statistics(pgnm_run):
    for name in ("heated.pt", "policy.pt", "metrics.json", "log.jsonl", "last.pt", "best.pt", "config.json"):
        assert (pgnm_run / name).is_file(), name
    record = json.loads((pgnm_run / "log.jsonl").read_text().splitlines()[-1])
    for key in (
        "policy/mask_mean",
        "policy/mask_entropy",
        "policy/reward",
        "policy/baseline",
        "losses/policy",
        "val/macro_f1",
        "val_masked/macro_f1",
    ):
        assert key in record, key
    assert 0 < record["policy/mask_mean"] < 1
    config = json.loads((pgnm_run / "config.json").read_text())
    resolved = config["agent_resolved"]
    # Scaled from the 224-px reference to 16 px: grid max(4, round(64*16/224)), kernel at least 3.
    assert (resolved["grid"], resolved["kernel"]) == (max(4, round(64 * 16 / 224)), 3)
    assert resolved["sigma"] == pytest.approx(6 * 16 / 224)
    assert config["method"] == "pgnm" and config["agent"]["objective"] == "reinforce"


def test_policy_summary_measures_learning_against_the_untrained_policy(pgnm_run, tmp_path, capsys):
    summary = json.loads((pgnm_run / "policy_summary.json").read_text())
    assert set(summary["val_mask_mean_per_class"]) == set(summary["val_mask_std_per_class"])
    assert 0 <= summary["val_moved_fraction"] <= 1 and summary["val_kl_from_untrained"] >= 0
    # A policy whose weights cannot learn: its buffers (bases, batch-norm statistics) still drift, yet
    # against the untrained policy with those buffers nothing moved, and the run says so.
    out = tmp_path / "frozen"
    args = ["pretrain", "--method", "pgnm", *DATA, *FAST, "--epochs", "1", "--policy-lr", "1e-12", "--out", str(out)]
    assert main(args) == 0
    frozen = json.loads((out / "policy_summary.json").read_text())
    assert frozen["val_moved_fraction"] == 0 and frozen["barely_moved"] is True
    assert frozen["val_kl_from_untrained"] < 1e-6
    assert "policy barely moved" in capsys.readouterr().out


def test_heated_model_has_timm_keys_and_loads_strictly(pgnm_run):
    state = torch.load(pgnm_run / "heated.pt")
    model = create_model("resnet10t", 12, in_chans=1, small_stem=True)
    model.load_state_dict(state, strict=True)
    assert "conv1.0.weight" in state and "fc.weight" in state


def test_a_long_finetune_holds_its_peak_lr_after_warm_up(pgnm_run, tmp_path):
    """Past the reference's 10 epochs the fine-tuning lr rises over 7/10 of the run and then stays at its peak
    to the end: the --step-size 30 a comparison shares must not cut it mid warm-up (it did, 10x at epoch 30)."""
    out = tmp_path / "ft"
    args = ["finetune", "--init", str(pgnm_run / "heated.pt"), *DATA, *FAST, "--epochs", "40", "--out", str(out)]
    assert main([*args, "--val-every", "40", "--checkpoint-epochs", "40"]) == 0
    lrs = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(lrs) == 40 and lrs == sorted(lrs)  # never falls
    assert lrs[27:] == pytest.approx([1e-3] * 13)  # warm-up over 28 epochs of one step each, then the peak
    assert lrs[0] < 1e-4


def test_finetune_from_heated_and_from_a_compiled_timm_state_dict(pgnm_run, tmp_path):
    out = tmp_path / "ft"
    assert (
        main(["finetune", "--init", str(pgnm_run / "heated.pt"), *DATA, *FAST, "--epochs", "1", "--out", str(out)]) == 0
    )
    config = json.loads((out / "config.json").read_text())
    # the reference warm-up fraction (7 of 10 epochs) of this 1-epoch run, never longer than the run itself
    assert (config["lr"], config["warmup_epochs"], config["warmup_start"]) == (1e-3, 0.7, 0.01)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "auroc"}
    # The authors' released weights come from torch.compile: keys prefixed with _orig_mod.
    compiled = {f"_orig_mod.{k}": v for k, v in torch.load(pgnm_run / "heated.pt").items()}
    torch.save(compiled, tmp_path / "released.pth")
    assert (
        main(
            [
                "finetune",
                "--init",
                str(tmp_path / "released.pth"),
                *DATA,
                *FAST,
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "ft2"),
            ]
        )
        == 0
    )
    first = torch.load(out / "last.pt", weights_only=False)["model"]
    second = torch.load(tmp_path / "ft2" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "pgnm", "--objective", "reference"],
        ["--method", "random-mask"],
        ["--method", "gaussian-noise"],
        ["--method", "plain"],
    ],
)
def test_every_method_pretrains(tmp_path, extra):
    assert main(["pretrain", *extra, *DATA, *FAST, "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "heated.pt").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["method"] == extra[1]


def test_compare_writes_json_markdown_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        *DATA,
        "--model",
        "resnet10t",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--seeds",
        "2",
        "--methods",
        "plain",
        "pgnm-reinforce",
        "random-mask",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    result = json.loads((out / "comparison.json").read_text())
    methods = result["methods"]
    assert set(methods) == {"plain (2 ep)", "plain (1 ep, reference view)", "pgnm-reinforce", "random-mask"}
    for stats in methods.values():
        assert [r["seed"] for r in stats["per_seed"]] == [0, 1]
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
            values = [r[key] for r in stats["per_seed"]]
            assert stats[key]["mean"] == pytest.approx(sum(values) / 2)
            assert stats[key]["low"] <= stats[key]["mean"] <= stats[key]["high"]
    assert "heated_macro_f1" in methods["pgnm-reinforce"]
    markdown = (out / "comparison.md").read_text()
    assert markdown.index("## Equal compute") < markdown.index("## The reference's view")
    for figure in ("curves.png", "masks.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    # The same data order for every method: plain and pgnm share seed s's first-epoch batches.
    plain = json.loads((out / "plain" / "seed0" / "config.json").read_text())
    pgnm = json.loads((out / "pgnm-reinforce" / "seed0" / "pretrain" / "config.json").read_text())
    assert plain["seed"] == pgnm["seed"] == 0 and plain["data"] == pgnm["data"]
    # A second run reuses every finished sub-run and reports the same figures.
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads((out / "comparison.json").read_text())["methods"] == methods
    # Runs kept without checkpoints: the gallery leaves an agent it cannot load out, and says so.
    policy = out / "pgnm-reinforce" / "seed0" / "pretrain" / "policy.pt"
    policy.unlink()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: masks.png: pgnm-reinforce left out ({policy} is missing)" in err.splitlines()
    assert (out / "masks.png").is_file()  # random masks need no trained state


def test_bench_reports_side_by_side_ratio(capsys):
    assert (
        main(
            [
                "bench",
                "--method",
                "pgnm",
                "--model",
                "resnet10t",
                "--image-size",
                "32",
                "--batch-size",
                "4",
                "--rounds",
                "1",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--pipeline-batches",
                "2",
                "--data",
                "synthetic:n=8,size=32",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["plain_img_s"] > 0 and result["method_img_s"] > 0
    assert result["ratio"] == pytest.approx(result["plain_img_s"] / result["method_img_s"], rel=0.02)
    assert result["pipeline_img_s"] > 0


def test_bench_times_flipped_settings_beside_the_chosen_ones(capsys):
    assert (
        main(
            [
                "bench",
                "--method",
                "random-mask",
                "--model",
                "resnet10t",
                "--image-size",
                "16",
                "--batch-size",
                "4",
                "--rounds",
                "1",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--pipeline-batches",
                "0",
                "--threads",
                "2",
                "--vary",
                "channels_last",
                "threads",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["channels_last"], result["compile"], result["threads"]) == (True, False, 2)
    assert set(result["flipped"]) == {"channels_last=False", "threads=1"}
    for arm in result["flipped"].values():
        for method, plain_rate in (("plain", result["plain_img_s"]), ("random-mask", result["method_img_s"])):
            # time_ratio is rounded to 3 decimals: a ratio near 0.01 (an arm slowed by a burst of load) is off by 4%
            expected = plain_rate / arm[method]["img_s"]
            assert arm[method]["time_ratio"] == pytest.approx(expected, rel=0.02, abs=0.0006)
    assert torch.get_num_threads() == 2  # the chosen thread count is back after the rounds


def test_bench_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    import rlmask.bench as bench

    # Round times: plain 1 s each; pgnm 2 s, except one round hit by a 10 s burst of noise.
    script = {"plain": iter([0, 1, 1, 1]), "pgnm": iter([0, 2, 10, 2])}  # the first call is the warm-up
    monkeypatch.setattr(bench, "_step_runner", lambda cfg, method, settings, device, x, y: method)
    monkeypatch.setattr(bench, "_timed", lambda run, n, device: next(script[run]))
    result = bench.run_bench(bench.BenchConfig(method="pgnm", rounds=3, steps=1, batch_size=2, pipeline_batches=0))
    assert result["ratio"] == 2.0  # the total-time ratio would be 14 / 3
    assert result["plain_img_s"] == 2.0 and result["method_img_s"] == round(6 / 14, 2)


def test_bench_rounds_alternate_which_arm_goes_first(monkeypatch):
    import rlmask.bench as bench

    calls = []
    monkeypatch.setattr(bench, "_step_runner", lambda cfg, method, settings, device, x, y: method)
    monkeypatch.setattr(bench, "_timed", lambda run, n, device: calls.append(run) or 1.0)
    bench.run_bench(bench.BenchConfig(method="pgnm", rounds=4, steps=1, batch_size=2, pipeline_batches=0))
    assert calls[2:] == ["plain", "pgnm", "pgnm", "plain"] * 2  # after one warm-up call per arm


def test_bench_rejects_an_unknown_setting_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text("vary: [precision]\n")
    assert main(["bench", "--config", str(config), "--pipeline-batches", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --config {config}: vary = ['precision']: choose from amp, channels_last, compile, threads"


def test_transfer_and_report_commands(pgnm_run, tmp_path, capsys):
    out = tmp_path / "transfer"
    downstream = "synthetic:n=12,size=16,modalities=2,organs=2,seed=7"
    assert (
        main(
            [
                "transfer",
                str(pgnm_run / "heated.pt"),
                str(pgnm_run / "last.pt"),
                "--data",
                downstream,
                "--shots",
                "4,all",
                "--repeats",
                "2",
                "--epochs",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out / "transfer.json").read_text())
    assert len(result["checkpoints"]) == 2
    for label in result["checkpoints"]:
        assert set(result["results"][label]) == {"4", "all"}
        for shots in result["results"][label].values():
            assert len(shots["repeats"]) == 2 and len(shots["macro_f1"]["ci"]) == 2
    assert (out / "command.txt").read_text().startswith("rlmask transfer ")
    report = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["report", str(pgnm_run), str(out), "--out", str(report), "--title", "PGNM run"]) == 0
    page = report.read_text()
    assert "<title>PGNM run</title>" in page and page.count("data:image/png;base64,") >= 3
