"""Image folders at scale: index time for a large folder, and data-pipeline throughput of one folder
read three ways (serial decoding, worker processes, packed shards) beside the same images as an npz.

It writes real PNG files: the MedNIST npz exported as a RadImageNet-style folder, and a large folder
of hard links to those PNGs (no extra disk space). Every line printed is one JSON record with the
command, machine and date, ready to append to benchmarks/results/.

Usage: python benchmarks/folder.py [--npz ../shared/data/mednist64.npz] [--files 300000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rlmask.bench import BenchConfig, run_bench
from rlmask.data.folder import open_folder
from rlmask.data.packed import pack_folder


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}"


def export_npz(npz: Path, root: Path) -> int:
    """Write every image of a MedMNIST-layout file as root/{train,val,test}/<class>/<i>.png; returns the count."""
    data = np.load(npz)
    names = [str(c) for c in data["classes"]] if "classes" in data else None
    n = 0
    for split in ("train", "val", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / (names[label] if names else f"class{label}")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:06d}.png")
            n += 1
    return n


def link_farm(src: Path, root: Path, files: int) -> None:
    """A folder of ``files`` training images (90%) and validation images (10%): hard links to src's PNGs."""
    pngs = sorted(src.glob("train/*/*.png"))
    per_class = 1000  # files per class folder, as in RadImageNet's larger classes
    for k in range(files):
        split = "val" if k % 10 == 9 else "train"
        folder = root / split / f"class{k // per_class:04d}"
        if k % per_class == 0 or not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        os.link(pngs[k % len(pngs)], folder / f"{k:07d}.png")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default="../shared/data/mednist64.npz")
    parser.add_argument("--files", type=int, default=300_000, help="files in the large folder whose index is timed")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--batches", type=int, default=100, help="batches timed per pipeline")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rlmask-folder-bench-"))
    info = {"machine": machine(), "date": date.today().isoformat()}
    command = "python benchmarks/folder.py " + " ".join(sys.argv[1:])

    def emit(record: dict) -> None:
        print(json.dumps(record | info | {"command": command}), flush=True)

    try:
        folder = work / "mednist"
        count = export_npz(Path(args.npz), folder)
        big = work / "large"
        _, link_s = timed(lambda: link_farm(folder, big, args.files))
        cache = work / "cache"
        _, walk_s = timed(lambda: open_folder(big, str(big), cache_dir=None))
        _, first_s = timed(lambda: open_folder(big, str(big), cache_dir=cache))
        _, cached_s = timed(lambda: open_folder(big, str(big), cache_dir=cache))
        emit(
            {
                "what": "folder index",
                "files": args.files,
                "walk_s": round(walk_s, 2),
                "walk_and_cache_s": round(first_s, 2),
                "cached_s": round(cached_s, 2),
                "files_per_s_walk": round(args.files / walk_s),
            }
        )

        packed = work / "mednist-packed"
        _, pack_s = timed(lambda: pack_folder(str(folder), packed, image_size=64, num_workers=os.cpu_count() or 1))
        emit({"what": "pack", "images": count, "pack_s": round(pack_s, 2), "img_per_s": round(count / pack_s)})
        readers = [
            ("npz", args.npz, 0),
            ("folder", str(folder), 0),
            ("folder", str(folder), os.cpu_count() or 1),
            ("packed", str(packed), 0),
        ]
        for kind, data, workers in readers:
            cfg = BenchConfig(
                model="resnet18",
                image_size=64,
                batch_size=64,
                channels=1,
                data=[data],
                pipeline_batches=args.batches,
                num_workers=workers,
                rounds=2,
                steps=3,
                warmup=1,
            )
            r = run_bench(cfg)
            emit(
                {
                    "what": "pipeline",
                    "data": kind,
                    "num_workers": workers,
                    "pipeline_img_s": r["pipeline_img_s"],
                    "train_img_s": r["plain_img_s"],
                    "pipeline_over_train": round(r["pipeline_img_s"] / r["plain_img_s"], 1),
                    "model": cfg.model,
                    "image_size": cfg.image_size,
                    "batch_size": cfg.batch_size,
                }
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
