"""``rlmask compare`` answers "does the method beat plain training?" with paired statistics."""

import json
from pathlib import Path

import numpy as np
import pytest

from rlmask.cli import main
from rlmask.evaluate.paired import paired_bootstrap, verdict

TINY = [
    "--data",
    "synthetic:n=16,size=16",
    "--model",
    "resnet10t",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "64",
    "--no-progress",
]


def test_compare_leads_with_paired_differences_and_verdicts(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--methods", "plain", "random-mask", "--epochs", "1", "--finetune-epochs", "1"]
    args += ["--seeds", "1", "--bootstrap-resamples", "500", "--out", str(out)]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "comparison.json").read_text())
    entry = result["paired"]["random-mask"]
    assert set(entry) == {"macro_f1", "balanced_accuracy", "auroc"}
    # One seed: the verdict rests on the run's paired bootstrap, recomputed here from the saved predictions.
    a = np.load(out / "random-mask" / "seed0" / "finetune" / "predictions.npz")
    b = np.load(out / "plain" / "seed0" / "predictions.npz")
    for metric, stat in entry.items():
        expected = paired_bootstrap(metric, a["probs"], b["probs"], b["labels"], n_resamples=500, seed=0)
        boot = stat["bootstrap"][0]
        assert (boot["difference"], boot["low"], boot["high"]) == (
            expected["difference"],
            expected["low"],
            expected["high"],
        )
        assert stat["low"] == boot["low"] and stat["verdict"] == verdict(boot["low"], boot["high"])
        assert stat["basis"].startswith("paired bootstrap")
        per_seed = (
            result["methods"]["random-mask"]["per_seed"][0][metric]
            - result["methods"]["plain (2 ep)"]["per_seed"][0][metric]
        )
        assert abs(stat["mean"] - per_seed) < 1e-12
    md = (out / "comparison.md").read_text()
    assert md.index("## Method - plain") < md.index("## Equal compute")
    assert "± " not in md.split("## Method - plain")[1] and entry["macro_f1"]["verdict"] in md
    assert (out / "differences.png").is_file()
    # Training time per method, summed from the runs' logs: it survives re-assembly, which trains nothing.
    logs = {
        "plain (2 ep)": [out / "plain" / "seed0"],
        "random-mask": [out / "random-mask" / "seed0" / "pretrain", out / "random-mask" / "seed0" / "finetune"],
    }
    for label, folders in logs.items():
        seconds = sum(json.loads(line)["train_seconds"] for f in folders for line in (f / "log.jsonl").open())
        assert result["train_minutes"][label] == round(seconds / 60, 2)
    capsys.readouterr()
    assert main(args) == 0
    assert "min in this invocation" in capsys.readouterr().out
    again = json.loads((out / "comparison.json").read_text())
    assert again["train_minutes"] == result["train_minutes"] and again["paired"] == result["paired"]
    assert "Training time summed over seeds (training epochs only): plain (2 ep) " in md


def test_wall_time_line_gives_each_method_its_cost_against_plain():
    from rlmask.report.html import wall_time_line

    result = {"minutes": 0.0, "equal_compute_epochs": 5, "train_minutes": {"plain (5 ep)": 2.0, "pgnm": 5.0}}
    assert wall_time_line(result) == (
        "Wall time: 0.0 min in this invocation (finished sub-runs are reused, not retrained). Training time summed "
        "over seeds (training epochs only): plain (5 ep) 2.0 min, pgnm 5.0 min (2.50x plain)."
    )
    assert wall_time_line({"minutes": 1.5}).startswith("Wall time: 1.5 min in this invocation")


def test_compare_transfers_to_unseen_tasks_and_leaves_one_source_out(tmp_path, shared_data, capsys, monkeypatch):
    from rlmask.experiments import compare

    out = tmp_path / "cmp"
    drawn = {}  # the rows of the differences figure
    plot = compare.plot_differences
    monkeypatch.setattr(compare, "plot_differences", lambda rows, *a: drawn.update(rows) or plot(rows, *a))
    code = main(
        [
            "compare",
            "--data",
            "synthetic:n=8,size=16,seed=0",
            "synthetic:n=8,size=16,seed=1,modalities=2",
            "--model",
            "resnet10t",
            "--batch-size",
            "16",
            "--eval-batch-size",
            "64",
            "--no-progress",
            "--methods",
            "plain",
            "random-mask",
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--seeds",
            "1",
            "--bootstrap-resamples",
            "200",
            "--leave-out",
            "synthetic:n=8,size=16,seed=1,modalities=2",
            "--transfer-to",
            str(shared_data / "breastmnist.npz"),
            "--shots",
            "4,8",
            "--transfer-repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "comparison.json").read_text())
    assert result["config"]["data"] == ["synthetic:n=8,size=16,seed=0"]  # pretrained without the left-out source
    tasks = {entry["task"] for entry in result["transfer"].values()}
    assert tasks == {str(shared_data / "breastmnist.npz"), "synthetic:n=8,size=16,seed=1,modalities=2"}
    for entry in result["transfer"].values():
        stats = entry["methods"]["random-mask"]
        assert set(stats) == {"4", "8"}
        for by_metric in stats.values():
            assert by_metric["macro_f1"]["n"] == 2 and by_metric["macro_f1"]["verdict"]
            over_seeds = by_metric["macro_f1"]["over_seeds"]  # one seed: its mean over the subsets, no interval
            assert over_seeds["n"] == 1 and over_seeds["low"] is None
            assert over_seeds["mean"] == pytest.approx(by_metric["macro_f1"]["mean"])
    # The transfer runs label checkpoints by method, and pair them on the same subsets.
    run = json.loads((out / "transfer" / "breastmnist-linear" / "seed0" / "transfer.json").read_text())
    assert run["checkpoints"] == ["plain", "random-mask"]
    digests = [[r["subset_digest"] for r in run["results"][m]["4"]["repeats"]] for m in run["checkpoints"]]
    assert digests[0] == digests[1]
    assert "## Transfer to unseen tasks" in (out / "comparison.md").read_text()
    # The report's first figure answers both questions: in-domain, then every unseen task and shot count.
    assert list(drawn) == ["random-mask"] + [
        f"random-mask: {key}, {n}/class" for key in result["transfer"] for n in ("4", "8")
    ]


def test_transfer_difference_over_pairs_and_over_seeds():
    """Two seeds of two subsets: the pairs' interval treats 4 differences as independent, the seeds' interval
    has 2 units (each seed's mean); both have the same mean, and an undefined score drops its pair only."""
    from scipy import stats

    from rlmask.experiments.compare import transfer_difference

    by_seed = [[(0.6, 0.5), (0.7, 0.5)], [(0.5, 0.5), (0.6, 0.6)]]  # differences 0.1, 0.2 | 0.0, 0.0
    result = transfer_difference(by_seed)
    assert result["n"] == 4 and result["mean"] == pytest.approx(0.075)
    half = stats.t.ppf(0.975, 3) * stats.tstd([0.1, 0.2, 0.0, 0.0]) / 2
    assert (result["low"], result["high"]) == pytest.approx((0.075 - half, 0.075 + half))
    over = result["over_seeds"]
    assert over["n"] == 2 and over["mean"] == pytest.approx(0.075)  # seed means 0.15 and 0.0
    half = stats.t.ppf(0.975, 1) * stats.tstd([0.15, 0.0]) / 2**0.5
    assert (over["low"], over["high"]) == pytest.approx((max(0.075 - half, -1.0), min(0.075 + half, 1.0)))  # clipped
    assert over["high"] - over["low"] > result["high"] - result["low"]
    assert over["verdict"] == "no detectable difference"
    partial = transfer_difference([[(0.6, 0.5), (None, 0.5)], [(0.5, 0.4)]])
    assert partial["n"] == 2 and partial["over_seeds"]["n"] == 2 and partial["over_seeds"]["mean"] == pytest.approx(0.1)


def test_a_variant_of_a_method_runs_under_its_own_label(tmp_path, capsys):
    """``LABEL=METHOD``: the same agent with other options, compared under its own name and folder."""
    out = tmp_path / "cmp"
    args = [
        "compare",
        *TINY,
        "--methods",
        "plain,random-mask,coarse=random-mask",
        "--method-option",
        "coarse:grid=4",
        "--epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--seeds",
        "1",
        "--bootstrap-resamples",
        "200",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((out / "comparison.json").read_text())
    assert set(result["paired"]) == {"random-mask", "coarse"}
    coarse = json.loads((out / "coarse" / "seed0" / "pretrain" / "config.json").read_text())
    default = json.loads((out / "random-mask" / "seed0" / "pretrain" / "config.json").read_text())
    assert coarse["method"] == default["method"] == "random-mask"
    assert coarse["agent"]["grid"] == 4 and default["agent"]["grid"] is None
    assert "| coarse |" in (out / "comparison.md").read_text()


def test_a_method_sets_its_own_pretraining_optimiser_and_nothing_else_changes(tmp_path, capsys):
    """``--method-option METHOD:lr=...`` (and the other PRETRAIN_OWN options) applies to that method's
    pretraining run only: its fine-tuning, plain and the other methods keep the comparison's."""
    out = tmp_path / "cmp"
    base = ["compare", *TINY, "--methods", "plain,random-mask,adam=random-mask", "--epochs", "1"]
    base += ["--finetune-epochs", "1", "--seeds", "1", "--bootstrap-resamples", "200", "--out", str(out)]
    config_file = tmp_path / "study.toml"  # a config file's section per method takes them too
    config_file.write_text('[adam]\noptimizer = "adam"\nlr = 0.001\nclip_grad = 1\n')
    assert main([*base, "--config", str(config_file)]) == 0, capsys.readouterr().err

    def config(*parts):
        return json.loads((out.joinpath(*parts) / "config.json").read_text())

    adam = config("adam", "seed0", "pretrain")
    assert (adam["optimizer"], adam["lr"], adam["clip_grad"]) == ("adam", 0.001, 1.0)
    for other in (config("plain", "seed0"), config("random-mask", "seed0", "pretrain")):
        assert (other["optimizer"], other["lr"], other["clip_grad"]) == ("sgd", 0.1, 0.0)
    assert config("adam", "seed0", "finetune")["optimizer"] == "sgd"
    assert "adam (pretraining optimizer=adam, lr=0.001, clip_grad=1.0)" in (out / "comparison.md").read_text()
    # run again with another learning rate for it: the finished sub-run is not silently reused
    capsys.readouterr()
    assert main([*base, "--method-option", "adam:optimizer=adam", "adam:lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run with other options (lr, clip_grad)" in err
    # a fine-tuning finished under another schedule (as before fine-tuning held its peak lr) is refused too
    finetune_config = out / "random-mask" / "seed0" / "finetune" / "config.json"
    finetune_config.write_text(json.dumps(json.loads(finetune_config.read_text()) | {"schedule": "step"}))
    assert main([*base, "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run with other options (schedule)" in err


def test_a_method_sets_its_own_fine_tuning_recipe_and_nothing_else_changes(tmp_path, capsys):
    """``--method-option METHOD:finetune_NAME=...`` (e.g. Adam for a fresh head) sets that method's fine-tuning
    run only, from the command line or its config file section; the others keep the comparison's recipe."""
    out = tmp_path / "cmp"
    base = ["compare", *TINY, "--methods", "plain,random-mask,own=random-mask", "--epochs", "1"]
    base += ["--finetune-epochs", "2", "--seeds", "1", "--bootstrap-resamples", "200", "--out", str(out)]
    config_file = tmp_path / "study.toml"
    config_file.write_text("[own]\nfinetune_warmup = 0.5\n")
    own = ["--method-option", "own:finetune_optimizer=adam", "own:finetune-lr=0.0005", "own:finetune_schedule=cosine"]
    assert main([*base, "--config", str(config_file), *own]) == 0, capsys.readouterr().err

    def config(*parts):
        return json.loads((out.joinpath(*parts) / "config.json").read_text())

    def recipe(method):
        fine = config(method, "seed0", "finetune")
        return fine["optimizer"], fine["lr"], fine["schedule"], fine["warmup_epochs"]

    assert recipe("own") == ("adam", 0.0005, "cosine", 1.0)
    assert recipe("random-mask") == ("sgd", 0.001, "constant", 1.4)
    assert config("own", "seed0", "pretrain")["optimizer"] == config("plain", "seed0")["optimizer"] == "sgd"
    text = (out / "comparison.md").read_text()
    assert "own (fine-tuning warmup=0.5, optimizer=adam, lr=0.0005, schedule=cosine)" in text
    # the same study without them: its fine-tuning is not silently reused
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    changed = "(optimizer, lr, schedule, warmup_epochs)"
    assert err.count("\n") == 1 and f"own/seed0/finetune holds a run with other options {changed}" in err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("plain:lr=0.01", "plain trains with the comparison's own options (--lr)"),
        ("plain:finetune_lr=0.01", "plain trains with the comparison's own options (--finetune-lr)"),
        ("random-mask:finetune_lr=0", "--method-option random-mask:finetune_lr: --lr 0.0: must be greater than 0"),
        ("random-mask:finetune_warmup=2", "--method-option random-mask:finetune_warmup: --warmup-epochs 2.0: longer"),
        ("random-mask:finetune_optimizer=lbfgs", "choose from sgd, adamw, adam"),
        ("random-mask:finetune_init=x", "is not an option of random-mask"),
        ("random-mask:lr=-1", "--method-option random-mask:lr: --lr -1.0: must be greater than 0"),
        ("random-mask:optimizer=lbfgs", "choose from sgd, adamw, adam"),
    ],
)
def test_bad_per_method_training_options_are_one_line(tmp_path, capsys, option, message):
    args = ["compare", *TINY, "--methods", "plain,random-mask", "--method-option", option, "--out", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "c").exists()


def test_a_sub_run_held_by_another_process_is_left_for_last_then_waited_for(tmp_path, monkeypatch, capsys):
    import fcntl

    from rlmask.experiments import compare

    out = tmp_path / "cmp"
    (out / "plain").mkdir(parents=True)
    held = open(out / "plain" / ".seed0.lock", "a")  # as another compare process running plain, seed 0
    fcntl.flock(held, fcntl.LOCK_EX)
    trained, calls = [], []
    real_fit, real_pretrain, real_runs = compare.fit, compare.pretrain, compare._method_runs
    monkeypatch.setattr(compare, "fit", lambda cfg: trained.append(cfg.out) or real_fit(cfg))
    monkeypatch.setattr(compare, "pretrain", lambda cfg: trained.append(cfg.out) or real_pretrain(cfg))

    def method_runs(cfg, out_, seed, method):
        calls.append((seed, method))
        if calls.count((0, "plain")) == 2:  # the second pass: "the other process" finishes and lets go
            held.close()
        return real_runs(cfg, out_, seed, method)

    monkeypatch.setattr(compare, "_method_runs", method_runs)
    args = ["compare", *TINY, "--methods", "plain,random-mask", "--epochs", "1", "--finetune-epochs", "0"]
    assert main([*args, "--seeds", "2", "--bootstrap-resamples", "200", "--out", str(out)]) == 0, capsys.readouterr()
    assert calls == [(0, "plain"), (0, "random-mask"), (1, "plain"), (1, "random-mask"), (0, "plain")]
    names = [str(Path(p).relative_to(out)) for p in trained]
    assert names[-1] == "plain/seed0" and names.count("plain/seed0") == 1 and len(names) == 4
    assert set(json.loads((out / "comparison.json").read_text())["paired"]) == {"random-mask"}


def test_a_method_added_to_a_finished_comparison_joins_its_transfer_runs(tmp_path, capsys):
    """Rerun with one more method: the seed's transfer run gains it on the same subsets, the methods already
    there keep their scores, and a changed --shots is a one-line error rather than a mismatched pairing."""
    out = tmp_path / "cmp"
    transfer = ["--transfer-to", "synthetic:n=8,size=16,seed=5,modalities=2", "--shots", "4", "--transfer-repeats", "2"]
    args = ["compare", *TINY, "--epochs", "1", "--finetune-epochs", "1", "--seeds", "1", *transfer, "--out", str(out)]
    args += ["--bootstrap-resamples", "200"]
    assert main([*args, "--methods", "plain,random-mask"]) == 0, capsys.readouterr().err
    run = out / "transfer" / "synthetic-n-8-size-16-seed-5-modalities-2-linear" / "seed0" / "transfer.json"
    before = json.loads(run.read_text())
    assert main([*args, "--methods", "plain,random-mask,gaussian-noise"]) == 0, capsys.readouterr().err
    after = json.loads(run.read_text())
    assert after["checkpoints"] == ["plain", "random-mask", "gaussian-noise"]
    assert {k: after["results"][k] for k in before["results"]} == before["results"]
    digests = {m: [r["subset_digest"] for r in after["results"][m]["4"]["repeats"]] for m in after["checkpoints"]}
    assert digests["gaussian-noise"] == digests["plain"]
    assert not (run.parent / ".added").exists()
    # ... and its scores are those of one transfer run of all three
    paths = [out / "plain" / "seed0" / "last.pt"] + [out / m / "seed0" / "finetune" / "last.pt" for m in digests][1:]
    whole = ["transfer", *map(str, paths), "--label", *digests, "--data", transfer[1], "--shots", "4", "--repeats", "2"]
    assert main([*whole, "--no-progress", "--out", str(tmp_path / "whole")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "whole" / "transfer.json").read_text())["results"] == after["results"]
    result = json.loads((out / "comparison.json").read_text())
    assert set(next(iter(result["transfer"].values()))["methods"]) == {"random-mask", "gaussian-noise"}
    capsys.readouterr()
    code = main([*args[:-2], "--bootstrap-resamples", "200", "--methods", "plain,random-mask", "--shots", "4,8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "was transferred with shots 4 and 2 repeats" in err


def test_a_study_kept_without_checkpoints_trains_again_only_what_a_missing_run_reads(tmp_path, capsys):
    """A finished pretraining whose fine-tuning is still to run is trained again for its heated.pt, and with it
    the plain model gradcam-mask's masks come from; runs that nothing still reads are left as they are."""
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--methods", "plain", "gradcam-mask", "--epochs", "1", "--finetune-epochs", "1"]
    args += ["--seeds", "1", "--bootstrap-resamples", "100", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    pre, fine, plain = (
        out / "gradcam-mask" / "seed0" / "pretrain",
        out / "gradcam-mask" / "seed0" / "finetune",
        out / "plain" / "seed0",
    )
    first = {d: (d / "metrics.json").read_text() for d in (pre, fine, plain)}

    def drop_checkpoints():
        for f in out.rglob("*.pt"):
            f.unlink()

    drop_checkpoints()
    stamps = {d: (d / "metrics.json").stat().st_mtime_ns for d in (pre, plain)}
    assert main(args) == 0, capsys.readouterr().err  # everything finished: nothing is trained again
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in (pre, plain)} == stamps
    assert "masks.png: gradcam-mask left out" in capsys.readouterr().err

    for f in fine.iterdir():
        f.unlink()
    assert main(args) == 0, capsys.readouterr().err
    assert (pre / "heated.pt").is_file() and (plain / "last.pt").is_file()  # both trained again, the same
    assert {d: (d / "metrics.json").read_text() for d in (pre, fine, plain)} == first


def test_a_finished_pretraining_that_lost_its_heated_model_resumes_from_its_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    """Trained again for a missing heated.pt, a pretraining starts from the last.pt left beside it (the final
    one here; after a retrain that stopped partway, that retrain's), not from epoch 0, and comes out the same."""
    from rlmask.experiments import compare

    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--methods", "plain", "random-mask", "--epochs", "2", "--finetune-epochs", "1"]
    args += ["--seeds", "1", "--bootstrap-resamples", "100", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    pre, fine = out / "random-mask" / "seed0" / "pretrain", out / "random-mask" / "seed0" / "finetune"
    first = {d: (d / "metrics.json").read_text() for d in (pre, fine)}
    (pre / "heated.pt").unlink()
    for f in fine.iterdir():
        f.unlink()
    resumed, real_pretrain = [], compare.pretrain
    monkeypatch.setattr(compare, "pretrain", lambda cfg: resumed.append(cfg.resume) or real_pretrain(cfg))
    assert main(args) == 0, capsys.readouterr().err
    assert resumed == [str(pre / "last.pt")]
    assert (pre / "heated.pt").is_file()
    assert {d: (d / "metrics.json").read_text() for d in (pre, fine)} == first
