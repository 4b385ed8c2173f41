"""Keep the small files of a study's finished runs, so that a fresh machine resumes the study where it was.

    python benchmarks/keep_runs.py SRC DEST --as PATH

Copies into the same place below DEST, for every finished sub-run below SRC (a folder with metrics.json), its
config.json, metrics.json, log.jsonl, policy_summary.json and predictions.npz (of the final models: compare
pairs no heated model); for every finished transfer its transfer.json and transfer.md; and for every comparison
its comparison.json, comparison.md and command.txt, so a restored study tables before compare runs again. The
path SRC in the text files is rewritten to PATH (where the study's scripts put their output, e.g.
runs/efficacy). `rlmask compare` skips a sub-run whose metrics.json exists and pairs it through its
predictions, so `cp -r DEST/. PATH/` on a fresh machine, then the study's script, continues with the missing
runs only. Checkpoints are not kept (tens of MB each): a finished run whose checkpoint a missing run reads (a
pretraining's heated.pt, the plain last.pt of gradcam-mask) is trained again, the same, before it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

RUN_FILES = ("config.json", "metrics.json", "log.jsonl", "predictions.npz", "policy_summary.json")
TRANSFER_FILES = ("transfer.json", "transfer.md")
COMPARISON_FILES = ("comparison.json", "comparison.md", "command.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--as", dest="as_path", required=True, help="the path SRC is recorded as")
    args = parser.parse_args(argv)
    src = args.src.resolve()
    kept = comparisons = 0
    for marker, names in (
        ("metrics.json", RUN_FILES),
        ("transfer.json", TRANSFER_FILES),
        ("comparison.json", COMPARISON_FILES),
    ):
        for found in sorted(src.rglob(marker)):
            folder = found.parent
            target = args.dest / folder.relative_to(src)
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                if not (folder / name).is_file():
                    continue
                if name == "predictions.npz" and folder.name == "pretrain":
                    continue  # compare pairs the final (fine-tuned) models only
                if name.endswith((".json", ".jsonl", ".md", ".txt")):
                    text = (folder / name).read_text().replace(str(src), args.as_path.rstrip("/"))
                    (target / name).write_text(text)
                else:
                    shutil.copyfile(folder / name, target / name)
            if marker == "comparison.json":
                comparisons += 1
            else:
                kept += 1
    print(
        f"kept {kept} finished runs and {comparisons} comparisons of {args.src} in {args.dest} (recorded as {args.as_path})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
