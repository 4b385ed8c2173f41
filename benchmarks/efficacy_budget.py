"""Does the gap to plain training change with the budget? Method - plain at two budgets, side by side.

    python benchmarks/efficacy_budget.py SHORT_DIR LONG_DIR [--figure FILE.png]

SHORT_DIR and LONG_DIR hold the comparison.json of one `rlmask compare` each, on the same data and seeds
at two budgets (e.g. benchmarks/results/efficacy/short and .../long). For every method in both, it prints
plain's score and method - plain (the paired entries of comparison.json: mean, 95% interval, verdict) at
each budget, and how the gap changed over the seeds both comparisons finished: long gap - short gap per
seed, with a t-interval over seeds ("method gains" when the method moved towards or past plain with the
budget). With --figure, one differences figure with a row per method and budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlmask.evaluate.paired import paired_seed_differences, verdict
from rlmask.report.figures import plot_differences

METRICS = ("macro_f1", "balanced_accuracy", "auroc")


def _load(folder: str) -> dict:
    path = Path(folder) / "comparison.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read a comparison ({e})") from None


def _budget(comparison: dict) -> str:
    config = comparison["config"]
    return f"{config['epochs']}+{config['finetune_epochs']} ep"


def _plain(comparison: dict) -> dict:
    label = next(k for k in comparison["methods"] if k.startswith("plain (") and "reference" not in k)
    return comparison["methods"][label]


def _interval(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    bounds = f" [{stat['low']:+.3f}, {stat['high']:+.3f}]" if stat["low"] is not None else ""
    return f"{stat['mean']:+.3f}{bounds} {stat['verdict']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("short")
    parser.add_argument("long")
    parser.add_argument("--figure")
    args = parser.parse_args(argv)
    runs = [_load(args.short), _load(args.long)]
    budgets = [_budget(c) for c in runs]
    methods = [m for m in runs[0]["paired"] if m in runs[1]["paired"]]
    if not methods:
        print(f"{args.short}, {args.long}: no method in both comparisons", file=sys.stderr)
        return 2
    metric = "macro_f1"
    plain = [_plain(c)[metric] for c in runs]
    print(f"plain {metric}: " + ", ".join(f"{b} {p['mean']:.3f} (n={p['n']})" for b, p in zip(budgets, plain)))
    print(f"| method | Δ {metric}, {budgets[0]} | Δ {metric}, {budgets[1]} | change of the gap (seeds) |")
    print("|---|---|---|---|")
    figure = {}
    for method in methods:
        stats = [c["paired"][method][metric] for c in runs]
        seeds = sorted(set(stats[0]["per_seed"]) & set(stats[1]["per_seed"]), key=int)
        change = paired_seed_differences(
            [stats[1]["per_seed"][s] for s in seeds], [stats[0]["per_seed"][s] for s in seeds]
        )
        change["verdict"] = verdict(change["low"], change["high"])
        change_text = _interval(change).replace("better", "method gains").replace("worse", "plain gains")
        print(f"| {method} | {_interval(stats[0])} | {_interval(stats[1])} | {change_text} ({', '.join(seeds)}) |")
        for budget, comparison in zip(budgets, runs):
            figure[f"{method}, {budget}"] = {k: comparison["paired"][method][k] for k in METRICS}
    if args.figure:
        plot_differences(figure, Path(args.figure), title="method - plain at two budgets (six-file pool)")
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
