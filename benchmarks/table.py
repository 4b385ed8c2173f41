"""Markdown tables of recorded benchmark results: python benchmarks/table.py benchmarks/results/FILE.jsonl"""

import json
import sys


def table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    print()


records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
steps = [r for r in records if "what" not in r]
folder = [r for r in records if "what" in r]

studies = [r for r in steps if "flipped" in r]
for r in studies:
    print(
        f"Settings study: `{r['command']}` (chosen: amp={r['amp']}, channels_last={r['channels_last']}, "
        f"compile={r['compile']}, threads={r['threads']}: plain {r['plain_img_s']} img/s, {r['method']} "
        f"{r['method_img_s']} img/s, ratio {r['ratio']})\n"
    )
    table(
        ["flipped setting", "plain img/s", "plain time ratio", f"{r['method']} img/s", f"{r['method']} time ratio"],
        [
            [
                label,
                arm["plain"]["img_s"],
                arm["plain"]["time_ratio"],
                arm[r["method"]]["img_s"],
                arm[r["method"]]["time_ratio"],
            ]
            for label, arm in r["flipped"].items()
        ],
    )
table(
    ["command", "amp", "plain img/s", "method img/s", "ratio", "peak MiB"],
    [
        [
            f"`{r['command']}`",
            r.get("amp"),
            r.get("plain_img_s"),
            r.get("method_img_s"),
            r.get("ratio"),
            r.get("peak_memory_mib"),
        ]
        for r in steps
        if "flipped" not in r
    ],
)
for r in folder:
    if r["what"] == "folder index":
        print(
            f"Folder index, {r['files']:,} files: walk {r['walk_s']} s ({r['files_per_s_walk']:,} files/s), "
            f"walk + write cache {r['walk_and_cache_s']} s, from the cache {r['cached_s']} s.\n"
        )
    elif r["what"] == "pack":
        print(f"`rlmask data pack` of {r['images']:,} images: {r['pack_s']} s ({r['img_per_s']:,} img/s).\n")
pipelines = [r for r in folder if r["what"] == "pipeline"]
if pipelines:
    table(
        ["data", "workers", "pipeline img/s", "train img/s (plain)", "pipeline / train"],
        [
            [r["data"], r["num_workers"], r["pipeline_img_s"], r["train_img_s"], r["pipeline_over_train"]]
            for r in pipelines
        ],
    )
if records:
    print(f"Machine: {records[0]['machine']}; date: {records[0]['date']}.")
