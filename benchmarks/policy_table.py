"""Mask statistics of PGNM methods in one ``rlmask compare`` folder, from each pretraining's policy_summary.json.

    python benchmarks/policy_table.py COMPARE_DIR METHOD [METHOD ...]

Per method, the mean over seeds (and the per-seed values) of: the share of validation cells whose Beta mean
moved by more than 0.1 from the untrained policy's, the mean KL from it, the mean expected keep, the range of
the per-class mean keep (max - min: how class-specific the masks are) and the mean spread over images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stats(summary: dict) -> dict:
    means = [v for v in summary["val_mask_mean_per_class"].values() if v is not None]
    spreads = [v for v in summary["val_mask_std_per_class"].values() if v is not None]
    return {
        "moved": summary["val_moved_fraction"],
        "kl": summary["val_kl_from_untrained"],
        "keep": sum(means) / len(means),
        "class_range": max(means) - min(means),
        "image_spread": sum(spreads) / len(spreads),
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    folder, methods = Path(argv[0]), argv[1:]
    cols = ("moved", "kl", "keep", "class_range", "image_spread")
    print("| method | seeds | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    for method in methods:
        files = sorted(folder.glob(f"{method}/seed*/pretrain/policy_summary.json"))
        if not files:
            print(f"{folder}: no {method}/seed*/pretrain/policy_summary.json", file=sys.stderr)
            return 2
        rows = [stats(json.loads(f.read_text())) for f in files]
        cells = [f"{sum(r[c] for r in rows) / len(rows):.3f} ({' / '.join(f'{r[c]:.3f}' for r in rows)})" for c in cols]
        print(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
