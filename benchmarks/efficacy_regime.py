"""The regime study (issue 24): where does masking pay? Method - plain at 10, 25, 50 and 100 training images per
class, on the six-file pool and on a pair of small sources, each trained until plain training has peaked.

    python benchmarks/efficacy_regime.py run OUT [--sources pair pool] [--sizes 10 25 50 100] [--passes 1 2 3]
    python benchmarks/efficacy_regime.py table OUT RESULTS

``run`` (CPU-days on two cores; resumable: run it again and it continues, and several processes on one OUT
share the work, one per core with OMP_NUM_THREADS=1):

1. A pilot per regime (source, images per class): plain training at budgets doubling from PILOT_EPOCHS (each
   with its own cosine schedule, as every run of the study), each budget (rung) scored by its final models'
   validation macro-F1, the mean over PILOT_SEEDS seeds. Plain training has peaked at the budget that beats every longer one on the ladder
   (at least 3 rungs; while the longest rung is the best, the ladder grows, to at most MAX_RUNGS). A cosine
   schedule's best epoch is its last, so the peak is one of budgets, not of epochs within one run.
2. The regime's budget T is that peak (or the longest rung, recorded as not peaked): the methods get
   T - T//5 pretraining epochs + T//5 fine-tuning epochs, plain gets T (equal compute: equal classifier steps).
   Fine-tuning is rlmask's (the reference's): SGD lr 1e-3, warm-up over 7/10 of its epochs, then held; for
   context-dqn, whose head starts untrained, Adam (CONTEXT_TRAINING).
3. `rlmask compare` per regime, 3 seeds, in passes over the same folder (each reuses the sub-runs before it):
   pass 1 the agents against plain (random-mask, pgnm-reinforce, apga, context-dqn); pass 2 the baselines a
   user would pick instead (trivialaugment, mixup, cutmix, cutout); pass 3 each agent on top of the regime's
   strongest baseline (by the mean validation macro-F1 of its final models, never the test split) and each
   agent annealed (--mask-schedule cosine).

``table`` gathers every finished comparison below OUT into RESULTS (regime.json; regime.md, with the sizes where
each method is behind or ahead and the size from which it is no longer behind; regime.png: method - plain
macro-F1 against images per class, one line per method, 95% interval bands, a panel per source) and
copies each regime's comparison.{json,md} and figures to RESULTS/SOURCE-nN/.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

D = "../shared/data"
SOURCES = {
    "pool": [
        f"{D}/{n}"
        for n in (
            "organamnist.npz",
            "bloodmnist.npz",
            "pneumoniamnist.npz",
            "breastmnist.npz",
            "retinamnist.npz",
            "mednist64.npz",
        )
    ],
    "pair": [f"{D}/breastmnist.npz", f"{D}/pneumoniamnist.npz"],
}
SIZES = (10, 25, 50, 100)
# the pilot's first budget (epochs) per images per class: more epochs where an epoch is a few steps
PILOT_EPOCHS = {"pair": {10: 25, 25: 15, 50: 10, 100: 8}, "pool": {10: 15, 25: 10, 50: 6, 100: 4}}
MAX_RUNGS = 5
PILOT_SEEDS = 3  # a rung's score is the mean over seeds: at 10 images per class one seed swings by 0.1-0.2
COMMON = ["--image-size", "28", "--model", "resnet10t", "--eval-per-class", "100", "--no-progress"]
AGENTS = ("random-mask", "pgnm-reinforce", "apga", "context-dqn")
BASELINES = ("trivialaugment", "mixup", "cutmix", "cutout")
SEEDS = 3
# Intelligent Masking's reconstructor trains as in its reference (Adam 1e-3): under the comparison's SGD 0.1 its
# reconstruction loss diverged (inf at step 9 of 10 images per class). The same number of steps: equal compute.
# Its fine-tuning too: the fresh classification head behind its encoder trains with Adam 1e-3, as the reference's
# downstream head does. Under the classifying agents' SGD 1e-3 the head of 34 classes barely trained in 48 epochs
# (training loss 3.55 to 2.54, test macro-F1 0.20 at 10 images per class; under Adam 0.59 and 0.49).
CONTEXT_TRAINING = ("optimizer=adam", "lr=0.001", "finetune_optimizer=adam")


def batch_size(source: str, size: int) -> int:
    """64, or 32 where a regime has fewer than 128 training images (the loader drops a last partial batch)."""
    classes = 4 if source == "pair" else 34
    return 64 if size * classes >= 128 else 32


def regime_args(source: str, size: int) -> list[str]:
    """The options every run of a regime shares."""
    return [
        "--data",
        *SOURCES[source],
        *COMMON,
        "--train-per-class",
        str(size),
        "--batch-size",
        str(batch_size(source, size)),
    ]


def validation_every(source: str, plan: dict) -> int:
    """Epochs between a comparison run's validations (the curves; the final model is scored either way): every 4
    on the pair (400 validation images, a few training steps an epoch), about 10 a run on the pool, whose 3,400
    validation images every 4 epochs would cost more than the training."""
    return 4 if source == "pair" else max(4, plan["total_epochs"] // 10)


def _rlmask(*args: str) -> None:
    command = [os.environ.get("RLMASK", "rlmask"), *args]
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command)
    if done.returncode:
        raise SystemExit(f"efficacy_regime: `{' '.join(command)}` failed (exit status {done.returncode})")


def _lock(path: Path, wait: bool):
    """An exclusive lock on PATH (kept open); None when another process holds it and ``wait`` is False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


def final_val(folder: Path) -> float:
    """The validation macro-F1 of a finished run's final model."""
    return json.loads((folder / "metrics.json").read_text())["val"]["macro_f1"]


def _pilot_run(folder: Path, source: str, size: int, epochs: int, seed: int, wait: bool) -> bool:
    """Train (or resume, or find finished) one run of a pilot's rung; False when another process holds it."""
    lock = _lock(folder.parent / f".{folder.name}.lock", wait)
    if lock is None:
        return False
    with lock:
        if not (folder / "metrics.json").is_file():
            resume = ["--resume", str(folder / "last.pt")] if (folder / "last.pt").is_file() else []
            _rlmask(
                "train",
                *regime_args(source, size),
                "--seed",
                str(seed),
                "--epochs",
                str(epochs),
                "--val-every",  # once, at the end: the pilot scores the final model (more would double the pool's cost)
                str(epochs),
                "--out",
                str(folder),
                *resume,
            )
    return True


def rung(out: Path, source: str, size: int, epochs: int, wait: bool) -> float | None:
    """The mean final validation macro-F1 of plain training for ``epochs`` over PILOT_SEEDS seeds; None when
    another process holds one of its runs and ``wait`` is False."""
    scores = []
    for seed in range(PILOT_SEEDS):
        folder = out / "pilot" / f"{source}-n{size}-e{epochs}-s{seed}"
        if not _pilot_run(folder, source, size, epochs, seed, wait):
            return None
        scores.append(final_val(folder))
    return sum(scores) / len(scores)


def choose_budget(rungs: dict[int, float]) -> int | None:
    """The budget (epochs) at which plain training peaked on a ladder {epochs: final validation macro-F1}:
    the rung with the best score (the shortest, on ties); None while that is the longest rung (still rising)."""
    best = max(sorted(rungs), key=lambda e: rungs[e])
    return None if best == max(rungs) else best


def pilot(out: Path, source: str, size: int, wait: bool = True) -> dict | None:
    """A regime's pilot: plain training, PILOT_SEEDS seeds, at budgets doubling from PILOT_EPOCHS (each its own cosine
    schedule), until a longer budget no longer beats a shorter one on validation (at most MAX_RUNGS rungs).
    None if another process holds a rung and ``wait`` is False."""
    rungs: dict[int, float] = {}
    epochs = PILOT_EPOCHS[source][size]
    while len(rungs) < MAX_RUNGS and (len(rungs) < 3 or choose_budget(rungs) is None):
        score = rung(out, source, size, epochs, wait)
        if score is None:
            return None
        rungs[epochs] = score
        epochs *= 2
    chosen = choose_budget(rungs)
    total = chosen if chosen is not None else max(rungs)
    return {
        "rungs": rungs,
        "peaked": chosen is not None,
        "total_epochs": total,
        "epochs": total - total // 5,
        "finetune_epochs": total // 5,
    }


def strongest_baseline(folder: Path) -> str:
    """The baseline with the highest mean validation macro-F1 of its final (fine-tuned) models over seeds."""
    means = {}
    for name in BASELINES:
        scores = [
            json.loads(p.read_text())["val"]["macro_f1"]
            for p in sorted(folder.glob(f"{name}/seed*/finetune/metrics.json"))
        ]
        if len(scores) == SEEDS:
            means[name] = sum(scores) / len(scores)
    if not means:
        raise SystemExit(f"efficacy_regime: {folder}: no baseline finished on every seed (pass 2 first)")
    return max(means, key=means.get)


def methods_of(folder: Path, passes: int) -> tuple[list[str], list[str]]:
    """(--methods entries, --method-option entries) of a regime's comparison up to pass ``passes``."""
    methods, options = ["plain", *AGENTS], []
    if passes >= 2:
        methods += BASELINES
    if passes >= 3:
        best = strongest_baseline(folder)
        for agent in AGENTS:
            methods += [f"{agent}.{best}={agent}", f"{agent}.cosine={agent}"]
            options += [f"{agent}.{best}:augment={best}", f"{agent}.cosine:mask_schedule=cosine"]
    for method in methods:
        if method.partition("=")[2 if "=" in method else 0] == "context-dqn":
            options += [f"{method.partition('=')[0]}:{o}" for o in CONTEXT_TRAINING]
    return methods, options


def cmd_run(args) -> int:
    out = args.out
    regimes = [(s, n) for s in args.sources for n in args.sizes]
    plans = {}
    pending = list(regimes)
    for wait in (False, True):  # pilots another process runs now are left for later, then waited for
        for regime in list(pending):
            plan = pilot(out, *regime, wait=wait)
            if plan is not None:
                plans[regime] = plan
                pending.remove(regime)
    pilots = out / "pilots.json"  # every process writes the same plans; each regime's is kept from an earlier run
    known = json.loads(pilots.read_text()) if pilots.is_file() else {}
    known |= {f"{s}-n{n}": p for (s, n), p in sorted(plans.items())}
    (out / f".pilots.{os.getpid()}.json").write_text(json.dumps(known, indent=1))
    (out / f".pilots.{os.getpid()}.json").replace(pilots)
    for passes in args.passes:
        for source, size in regimes:
            plan, folder = plans[source, size], out / f"{source}-n{size}"
            methods, options = methods_of(folder, passes)
            _rlmask(
                "compare",
                *regime_args(source, size),
                "--seeds",
                str(SEEDS),
                "--val-every",
                str(validation_every(source, plan)),
                "--checkpoint-epochs",  # ~20 last.pt writes a run: at one-step epochs each cost more than the step
                str(max(1, plan["total_epochs"] // 20)),
                "--epochs",
                str(plan["epochs"]),
                "--finetune-epochs",
                str(plan["finetune_epochs"]),
                "--methods",
                ",".join(methods),
                *(["--method-option", *options] if options else []),
                "--out",
                str(folder),
            )
    return 0


# --- table ------------------------------------------------------------------------------------------------
def gather(out: Path) -> dict:
    """{source: {size: {"plan": the pilot's plan, "equal_compute_epochs", "plain": plain's summary, "paired":
    comparison.json's paired entries at equal compute}}} of every finished regime comparison below OUT."""
    plans = json.loads((out / "pilots.json").read_text()) if (out / "pilots.json").is_file() else {}
    found: dict = {}
    for source in SOURCES:
        for size in SIZES:
            folder = out / f"{source}-n{size}"
            if not (folder / "comparison.json").is_file():
                continue
            comparison = json.loads((folder / "comparison.json").read_text())
            plain_label = next(k for k in comparison["methods"] if k.startswith("plain (") and "reference" not in k)
            found.setdefault(source, {})[size] = {
                "plan": plans.get(f"{source}-n{size}"),
                "equal_compute_epochs": comparison["equal_compute_epochs"],
                "seeds": comparison["config"]["seeds"],
                "plain": comparison["methods"][plain_label],
                "paired": {m: v for m, v in comparison["paired"].items() if "reference" not in m},
            }
    return found


def _cell(stat: dict) -> str:
    if stat.get("mean") is None:
        return "n/a"
    word = {"better": "ahead", "worse": "behind", "no interval": "no interval"}.get(stat.get("verdict"), "no diff.")
    low, high = stat.get("low"), stat.get("high")
    bounds = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
    return f"{stat['mean']:+.3f}{bounds} {word}"


def render(found: dict) -> str:
    lines = ["# The regime study: method - plain test macro-F1 (paired over the seeds, 95% intervals)", ""]
    for source, by_size in found.items():
        sizes = sorted(by_size)
        lines += [
            f"## {source}",
            "",
            "| | " + " | ".join(f"{n}/class" for n in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        row = ["plain's budget (pilot: val macro-F1 at each budget)"]
        for n in sizes:
            plan = by_size[n]["plan"] or {}
            ladder = ", ".join(
                f"{e}: {v:.2f}" for e, v in sorted(plan.get("rungs", {}).items(), key=lambda r: int(r[0]))
            )
            row.append(
                f"{by_size[n]['equal_compute_epochs']} ep ({ladder})"
                + ("" if plan.get("peaked", True) else ", not peaked")
            )
        lines.append("| " + " | ".join(row) + " |")
        lines.append("| seeds | " + " | ".join(str(by_size[n]["seeds"]) for n in sizes) + " |")
        lines.append(
            "| plain macro-F1 | " + " | ".join(f"{by_size[n]['plain']['macro_f1']['mean']:.3f}" for n in sizes) + " |"
        )
        methods = sorted({m for n in sizes for m in by_size[n]["paired"]})
        for method in methods:
            cells = [
                _cell(by_size[n]["paired"][method]["macro_f1"]) if method in by_size[n]["paired"] else "" for n in sizes
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def gap_closes(verdicts: dict[int, str]) -> str:
    """Where a method's gap to plain closes, from its verdict at each measured size: the smallest size from
    which it is detectably behind at no larger measured size ("not different" is no proof of equality)."""
    sizes = sorted(verdicts)
    behind = [n for n in sizes if verdicts[n] == "worse"]
    span = f"{sizes[0]}-{sizes[-1]}/class" if len(sizes) > 1 else f"{sizes[0]}/class"
    if not behind:
        return f"behind at no size measured ({span})"
    if behind[-1] == sizes[-1]:
        return f"still behind at {sizes[-1]}/class, the largest measured"
    return f"not detectably behind from {next(n for n in sizes if n > behind[-1])}/class on"


def render_gaps(found: dict) -> str:
    """Per source and method: the sizes where it is behind or ahead of plain, and where its gap closes."""
    lines = [
        "## Where each method's gap to plain closes: the sizes where it is behind or ahead (the verdicts above)",
        "",
    ]
    for source, by_size in found.items():
        lines += [f"### {source}", "", "| method | behind at | ahead at | the gap |", "|---|---|---|---|"]
        methods = sorted({m for cell in by_size.values() for m in cell["paired"]})
        for method in methods:
            verdicts = {
                n: cell["paired"][method]["macro_f1"].get("verdict")
                for n, cell in sorted(by_size.items())
                if method in cell["paired"]
            }
            behind, ahead = ([str(n) for n, v in verdicts.items() if v == word] for word in ("worse", "better"))
            lines.append(
                f"| {method} | {', '.join(behind) or '-'} | {', '.join(ahead) or '-'} | {gap_closes(verdicts)} |"
            )
        lines.append("")
    return "\n".join(lines)


PANELS = ("agents", "baselines", "agents on the strongest baseline", "agents annealed (cosine)")


def panel_of(method: str) -> str:
    """The figure panel of a method: an agent, a baseline, an agent on a baseline (AGENT.BASELINE) or annealed."""
    base, _, variant = method.partition(".")
    if not variant:
        return PANELS[0] if base in AGENTS else PANELS[1]
    return PANELS[3] if variant == "cosine" else PANELS[2]


def plot(found: dict, path: Path) -> None:
    """Method - plain against images per class with 95% intervals (bands, and bars at each size, methods side by
    side): a row per source, a panel per kind of method (each holds at most four lines; an agent keeps its colour
    in every panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = {m for by_size in found.values() for n in by_size for m in by_size[n]["paired"]}
    panels = [p for p in PANELS if any(panel_of(m) == p for m in every)]
    colours = plt.get_cmap("tab10").colors
    colour = {name: colours[i] for i, name in enumerate((*AGENTS, *BASELINES))}
    fig, axes = plt.subplots(
        len(found), len(panels), figsize=(4.2 * len(panels), 3.6 * len(found)), squeeze=False, sharey=True
    )
    for row, (source, by_size) in zip(axes, found.items()):
        for ax, panel in zip(row, panels):
            names = sorted(m for m in every if panel_of(m) == panel)
            for i, method in enumerate(names):
                points = [
                    (n, by_size[n]["paired"][method]["macro_f1"])
                    for n in sorted(by_size)
                    if method in by_size[n]["paired"] and by_size[n]["paired"][method]["macro_f1"]["mean"] is not None
                ]
                if not points:
                    continue
                dodge = 1.04 ** (i - (len(names) - 1) / 2)  # side by side at a size, so their intervals stay apart
                xs, tint = [n * dodge for n, _ in points], colour.get(method.partition(".")[0])
                ax.plot(xs, [s["mean"] for _, s in points], marker="o", color=tint, label=method)
                if all(s.get("low") is not None for _, s in points):
                    lows, highs = [s["low"] for _, s in points], [s["high"] for _, s in points]
                    ax.fill_between(xs, lows, highs, color=tint, alpha=0.15, linewidth=0)
                    ax.errorbar(  # a regime's interval, seen also where it has no neighbour to make a band with
                        xs,
                        [s["mean"] for _, s in points],
                        yerr=[
                            [s["mean"] - lo for (_, s), lo in zip(points, lows)],
                            [hi - s["mean"] for (_, s), hi in zip(points, highs)],
                        ],
                        fmt="none",
                        ecolor=tint,
                        elinewidth=0.8,
                        capsize=3,
                        alpha=0.6,
                    )
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlim(min(SIZES) / 1.25, max(SIZES) * 1.25)
            ax.set_xticks(list(SIZES), [str(n) for n in SIZES])
            ax.minorticks_off()
            ax.set_title(f"{source}: {panel}", fontsize=9)
            ax.set_xlabel("training images per class")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        row[0].set_ylabel("method - plain, test macro-F1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_pilots(pilots: dict) -> str:
    """Plain training's validation macro-F1 at each pilot budget, every regime whose pilot finished."""
    lines = [
        "## Plain training's budget: validation macro-F1 (mean of 3 seeds) at each pilot budget, epochs",
        "",
        "| regime | budgets: val macro-F1 | chosen budget |",
        "|---|---|---|",
    ]
    for name, plan in pilots.items():
        ladder = ", ".join(f"{e}: {v:.3f}" for e, v in sorted(plan["rungs"].items(), key=lambda r: int(r[0])))
        chosen = f"{plan['total_epochs']}" + ("" if plan["peaked"] else " (the longest: still rising)")
        lines.append(f"| {name} | {ladder} | {chosen} |")
    return "\n".join(lines)


def cmd_table(args) -> int:
    found = gather(args.out)
    if not found:
        raise SystemExit(f"efficacy_regime: {args.out}: no finished regime comparison")
    args.results.mkdir(parents=True, exist_ok=True)
    pilots = json.loads((args.out / "pilots.json").read_text()) if (args.out / "pilots.json").is_file() else {}
    for source, by_size in found.items():
        for size in by_size:
            folder, dest = args.out / f"{source}-n{size}", args.results / f"{source}-n{size}"
            dest.mkdir(exist_ok=True)
            for name in ("comparison.json", "comparison.md", "differences.png", "curves.png"):
                if (folder / name).is_file():
                    shutil.copy(folder / name, dest / name)
    (args.results / "regime.json").write_text(json.dumps(found, indent=1))
    text = render(found) + "\n" + render_gaps(found) + ("\n" + render_pilots(pilots) if pilots else "")
    (args.results / "regime.md").write_text(text + "\n")
    plot(found, args.results / "regime.png")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("out", type=Path)
    run.add_argument("--sources", nargs="+", choices=list(SOURCES), default=["pair", "pool"])
    run.add_argument("--sizes", nargs="+", type=int, choices=SIZES, default=list(SIZES))
    run.add_argument("--passes", nargs="*", type=int, choices=(1, 2, 3), default=[1, 2, 3], help="none: pilots only")
    table = sub.add_parser("table")
    table.add_argument("out", type=Path)
    table.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
