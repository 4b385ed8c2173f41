"""Seeded, stratified splits and the names datasets give their split folders and columns.

A split is a pure function of (seed, the sorted file list, its labels, the fractions): each class draws
its own permutation from a generator seeded by (seed, a hash of the class name), so the split of one
class does not move when another class gains files, and the test files of a seed stay the same when only
the validation fraction changes (test is taken first).
"""

from __future__ import annotations

import zlib

import numpy as np

from rlmask.errors import UserError

# What datasets call their splits, case-insensitive: name on disk / in a column -> rlmask's split.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def split_name(text: str) -> str | None:
    """rlmask's split for a folder name or column value (``Training`` -> ``train``), None if it is none."""
    return SPLIT_ALIASES.get(text.strip().lower())


def held_out_counts(n: int, fractions: list[float]) -> list[int]:
    """Samples of a class of ``n`` taken by each held-out split of the given fractions.

    ``round(n * f)``, but at least one per split with a positive fraction while training keeps one, and
    never the last training sample: a class of 3 gives one image each to train, val and test.
    """
    counts = [int(np.floor(n * f + 0.5)) if f > 0 else 0 for f in fractions]
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0 and n - sum(counts) > 1:
            counts[i] = 1
    while sum(counts) > n - 1 and any(counts):  # tiny class: training keeps at least one sample
        counts[counts.index(max(counts))] -= 1
    return counts


def stratified_split(
    labels: np.ndarray, classes: list[str], fractions: dict[str, float], seed: int, rest: str = "train"
) -> dict[str, np.ndarray]:
    """Indices (sorted int64 arrays) of each split: ``fractions`` of every class, the rest in ``rest``.

    ``labels`` (N,) are indices into ``classes`` of samples in a fixed (sorted) order; the held-out
    splits are filled in the order of ``fractions``. Splits with no sample are left out of the result.
    """
    labels = np.asarray(labels, dtype=np.int64)
    names = list(fractions)
    taken: dict[str, list[np.ndarray]] = {name: [] for name in [*names, rest]}
    for k, cls in enumerate(classes):
        members = np.flatnonzero(labels == k)  # (n_k,) ascending
        if not len(members):
            continue
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % 2**63, zlib.crc32(cls.encode())])))
        members = members[rng.permutation(len(members))]
        start = 0
        for name, count in zip(names, held_out_counts(len(members), [fractions[n] for n in names])):
            taken[name].append(members[start : start + count])
            start += count
        taken[rest].append(members[start:])
    out = {name: np.sort(np.concatenate(parts)) for name, parts in taken.items() if parts}
    return {name: idx for name, idx in out.items() if len(idx)}


def complete_splits(
    given: dict[str, tuple[list[str], np.ndarray]],
    classes: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    spec: str,
) -> tuple[dict[str, tuple[list[str], np.ndarray]], dict | None]:
    """Fill in the splits a dataset does not have, from its training files.

    ``given``: split -> (files sorted in a fixed order, labels (N,) into ``classes``). No val: val is split
    off train (and test too when the data has no test either). Returns the splits and a plain record of
    the split made (None when the data had its own val), for the cached index and the run's config.
    """
    if "val" in given:
        return given, None
    if val_fraction <= 0:
        raise UserError(
            f"--val-fraction {val_fraction}: --data {spec} has no val split to use, so this must be positive"
        )
    fractions = (
        {"val": val_fraction} if "test" in given or test_fraction <= 0 else {"test": test_fraction, "val": val_fraction}
    )
    files, labels = given["train"]
    parts = stratified_split(labels, classes, fractions, seed)
    if "val" not in parts:
        raise UserError(
            f"--data {spec}: too few training images to split off a val split (a class needs at least 2 images)"
        )
    out = dict(given)
    for name, idx in parts.items():
        out[name] = ([files[i] for i in idx.tolist()], labels[idx])
    record = {
        "seed": seed,
        "from": "train files" if "test" in given else "all files",
        "made": [n for n in fractions if n in out],
        **{f"{name}_fraction": f for name, f in fractions.items()},
        "counts": {name: len(out[name][0]) for name in ("train", "val", "test") if name in out},
    }
    return out, record
