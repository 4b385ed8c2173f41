"""A - B from one ``rlmask transfer`` run whose checkpoints come in pairs, e.g. dqn-s0 / random-s0.

    python benchmarks/paired_transfer.py TRANSFER_JSON PREFIX_A PREFIX_B [--out FILE.json]

Checkpoints labelled PREFIX_A-sK and PREFIX_B-sK share pretraining seed K, and every checkpoint of one
transfer run sees identical subsets. Per shot count and metric it prints two paired intervals:
over seeds (each seed's difference averaged over the subsets; the pretraining run is the unit) and over
(seed, subset) pairs (what `rlmask compare --transfer-to` reports; narrower, since subsets of one seed
share a pretrained encoder).
"""

from __future__ import annotations

import argparse
import json
import sys

from rlmask.evaluate.paired import paired_seed_differences, verdict

METRICS = ("macro_f1", "balanced_accuracy", "auroc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transfer_json")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    results = json.load(open(args.transfer_json))["results"]
    seeds = sorted(
        int(k.rsplit("-s", 1)[1])
        for k in results
        if k.startswith(f"{args.a}-s") and f"{args.b}-s{k.rsplit('-s', 1)[1]}" in results
    )
    if not seeds:
        print(f"{args.transfer_json}: no {args.a}-sK / {args.b}-sK pairs of labels", file=sys.stderr)
        return 2
    table = {}
    print(f"{args.a} - {args.b}, {len(seeds)} seed(s): mean [95% t-interval] verdict")
    print("| shots | metric | over seeds | over (seed, subset) pairs |\n|---|---|---|---|")
    for n in results[f"{args.a}-s{seeds[0]}"]:
        for k in METRICS:
            a = [[r[k] for r in results[f"{args.a}-s{s}"][n]["repeats"]] for s in seeds]
            b = [[r[k] for r in results[f"{args.b}-s{s}"][n]["repeats"]] for s in seeds]
            by_seed = paired_seed_differences([sum(v) / len(v) for v in a], [sum(v) / len(v) for v in b])
            by_pair = paired_seed_differences([x for v in a for x in v], [x for v in b for x in v])
            cells = []
            for stat in (by_seed, by_pair):
                stat["verdict"] = verdict(stat["low"], stat["high"])
                interval = f" [{stat['low']:+.3f}, {stat['high']:+.3f}]" if stat["low"] is not None else ""
                cells.append(f"{stat['mean']:+.3f}{interval} {stat['verdict']} (n={stat['n']})")
            table.setdefault(n, {})[k] = {"over_seeds": by_seed, "over_pairs": by_pair}
            print(f"| {n} | {k} | {cells[0]} | {cells[1]} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"a": args.a, "b": args.b, "seeds": seeds, "differences": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
