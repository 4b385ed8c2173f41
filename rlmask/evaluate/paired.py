"""Paired statistics for "does the method beat plain training?".

A method and plain training are run on the same seeds and evaluated on the same test images, so
their scores are paired; the question is about the difference ``method - plain``, not about two
separate intervals. Two views:

* ``paired_seed_differences``: one difference per seed (same seed for both), their mean and a 95%
  Student-t interval (``scipy.stats.t``, via ``mean_ci``). Needs two seeds or more for an interval.
* ``paired_bootstrap``: for one run of each, resample the test images with replacement, the SAME
  indices for method and plain, and take the percentile interval of the metric's difference. This
  is meaningful with a single seed; it measures test-set sampling noise, not seed-to-seed noise.

``verdict`` turns an interval on the difference into words. Every supported metric is "higher is
better", so a positive difference favours the method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rlmask.evaluate.metrics import classification_metrics, mean_ci

# Metrics the bootstrap computes in vectorised form (names of classification_metrics keys).
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
# Resamples handled at once: bounds the (chunk, N) index and count arrays (a few MB at N ~ 3,000).
_CHUNK = 200

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
NO_INTERVAL = "no interval"


def _confusion_counts(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """(R, K, K) confusion matrices of the resamples ``idx`` (R, N); ``codes`` = label * K + prediction.

    One bincount over all resamples: offsetting resample r's codes by r * K^2 keeps them apart.
    """
    r = idx.shape[0]
    flat = (codes[idx] + (np.arange(r) * k * k)[:, None]).ravel()
    return np.bincount(flat, minlength=r * k * k).reshape(r, k, k)


def _from_confusion(metric: str, cm: np.ndarray) -> np.ndarray:
    """``metric`` of each confusion matrix in ``cm`` (R, K, K), NaN where undefined; the definitions
    are classification_metrics' (sklearn's with zero_division=0)."""
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)  # (R, K)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)  # (R, K) true counts, predicted counts
    if metric == "accuracy":
        return tp.sum(axis=1) / cm.sum(axis=(1, 2))
    if metric == "macro_f1":  # mean over all K classes, 0 for a class neither present nor predicted
        denom = support + predicted
        return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean(axis=1)
    # balanced accuracy: mean recall over the classes present in this resample
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    return recall.sum(axis=1) / present.sum(axis=1)


def _weighted_auroc(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` (N,) for ``positive`` (N,) in each resample, given as ``counts`` (R, N):
    how many times each image was drawn. NaN where a resample lacks positives or negatives.

    The Mann-Whitney statistic with multiplicities, ties counting one half (as sklearn's
    roc_auc_score on the resampled arrays). With C the cumulative drawn weight in score order, a
    positive image in the tie group [s, e] outranks weight C[s-1] + (C[e] - C[s-1]) / 2 of images
    (itself and the other positives included); summing that over positives, weighted by their
    counts, overcounts by exactly P^2 / 2 (P = positive weight: each positive pair counts once, each
    positive against itself one half), which is subtracted. One cumulative sum per resample instead
    of splitting weights by tie group; integer arithmetic, so it is exact.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Tie group of each sorted position: its first position s and one past its last e + 1.
    new_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1
    ends = np.r_[starts[1:], scores.size]
    pos = positive[order]
    lo, hi = starts[group[pos]], ends[group[pos]]  # for each positive, columns into the padded C
    w = counts[:, order]
    c = np.zeros((w.shape[0], w.shape[1] + 1), dtype=np.int64)  # c[:, j] = weight of sorted positions < j
    np.cumsum(w, axis=1, out=c[:, 1:])
    w_pos = w[:, pos]
    twice_u = (w_pos * (c[:, lo] + c[:, hi])).sum(axis=1)  # 2 * (U + P^2 / 2)
    n_pos = w_pos.sum(axis=1)
    n_neg = c[:, -1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (twice_u - n_pos * n_pos) / (2.0 * n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def resampled_metric(metric: str, probs: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``metric`` (one of BOOTSTRAP_METRICS) of ``probs`` (N, K) and ``labels`` (N,) restricted to each
    row of ``idx`` (R, M) of image indices: an (R,) array, NaN where the metric is undefined.

    Vectorised over resamples, with classification_metrics' definitions: each row gives the same
    number as ``classification_metrics(probs[row], labels[row])[metric]`` (the tests check it).
    auroc is the macro one-vs-rest AUROC over the classes with positives and negatives in the
    resample, and class 1's AUROC when K == 2.
    """
    probs, labels, idx = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64), np.asarray(idx)
    k = probs.shape[1]
    if metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        codes = labels * k + probs.argmax(axis=1)
        return _from_confusion(metric, _confusion_counts(codes, idx, k))
    if metric == "auroc":
        r, n = idx.shape[0], probs.shape[0]
        counts = np.bincount((idx + (np.arange(r) * n)[:, None]).ravel(), minlength=r * n).reshape(r, n)
        columns = [1] if k == 2 else range(k)
        per_class = np.stack([_weighted_auroc(probs[:, c], labels == c, counts) for c in columns], axis=1)
        defined = ~np.isnan(per_class)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(defined, per_class, 0.0).sum(axis=1) / defined.sum(axis=1)  # NaN if none
    raise ValueError(f"metric {metric!r}: choose from {', '.join(BOOTSTRAP_METRICS)} or pass a function")


def _as_callable(metric_fn: str | Callable) -> Callable:
    """A metric name as a (probs, labels) -> float | None function on classification_metrics."""
    if callable(metric_fn):
        return metric_fn
    return lambda p, y: classification_metrics(p, y)[metric_fn]


def paired_bootstrap(
    metric_fn: str | Callable[[np.ndarray, np.ndarray], float | None],
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    labels: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired bootstrap interval on ``metric(a) - metric(b)`` over the test images.

    ``probs_a`` (method) and ``probs_b`` (plain) are (N, K) scores of the same N images with
    ``labels`` (N,). Each resample draws N image indices with replacement from a
    ``numpy.random.default_rng(seed)`` and evaluates BOTH models on those same indices, so
    image difficulty cancels out of the difference. ``metric_fn`` is a name in BOOTSTRAP_METRICS
    (vectorised, a few seconds at most for 3,000 images x 2,000 resamples) or any function
    ``(probs, labels) -> float | None`` (called twice per resample: slow but general).

    Returns {"metric": the name (or the function's __name__), "difference": metric(a) - metric(b) on
    all N images (classification_metrics for a name), "low", "high": the percentile interval of the
    resampled differences at ``confidence``, "confidence", "n_resamples": as requested, "n_used":
    resamples where both metrics were defined (e.g. an AUROC resample with a single class is
    skipped), "seed"}. difference is None where the metric is undefined on the full set; low and
    high are None where no resample was usable. Identical inputs give exactly 0 with [0, 0].
    """
    probs_a, probs_b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    labels = np.asarray(labels)
    if probs_a.shape != probs_b.shape or probs_a.ndim != 2 or labels.shape != probs_a.shape[:1]:
        raise ValueError(
            f"probs_a {probs_a.shape}, probs_b {probs_b.shape}, labels {labels.shape}: "
            "expected two (N, K) arrays of the same images and (N,) labels"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    name = metric_fn if isinstance(metric_fn, str) else getattr(metric_fn, "__name__", "metric")
    if isinstance(metric_fn, str) and metric_fn not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric {metric_fn!r}: choose from {', '.join(BOOTSTRAP_METRICS)} or pass a function")
    fn = _as_callable(metric_fn)
    n = labels.shape[0]
    result = {
        "metric": name,
        "difference": None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "n_used": 0,
        "seed": seed,
    }
    if n == 0:
        return result
    a_full, b_full = fn(probs_a, labels), fn(probs_b, labels)
    if a_full is not None and b_full is not None:
        result["difference"] = float(a_full) - float(b_full)

    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, int(n_resamples), _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, n_resamples - start), n))
        if isinstance(metric_fn, str):
            diffs.append(
                resampled_metric(metric_fn, probs_a, labels, idx) - resampled_metric(metric_fn, probs_b, labels, idx)
            )
        else:
            for row in idx:
                a, b = fn(probs_a[row], labels[row]), fn(probs_b[row], labels[row])
                diffs.append(np.array([np.nan if a is None or b is None else float(a) - float(b)]))
    d = np.concatenate(diffs)
    d = d[~np.isnan(d)]  # undefined resamples are skipped and counted out
    result["n_used"] = int(d.size)
    if d.size:
        tail = (1.0 - confidence) / 2.0
        low, high = np.quantile(d, [tail, 1.0 - tail])
        result["low"], result["high"] = float(low), float(high)
    return result


def paired_seed_differences(
    method_values: Sequence[float | None] | Mapping[int, float | None],
    plain_values: Sequence[float | None] | Mapping[int, float | None],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = (-1.0, 1.0),
) -> dict:
    """Per-seed differences ``method - plain`` and their mean with a Student-t interval.

    Both arguments are either sequences aligned by seed (the i-th entries share a seed) or mappings
    seed -> value, paired by seed (seeds in only one are dropped). A pair with a None value (metric
    undefined in that run) is dropped too.

    Returns {"seeds": the seeds (or positions) of the pairs used, "differences": their differences,
    "mean", "low", "high", "std", "n"} (the last five as ``mean_ci``: scipy.stats.t interval clipped to
    ``bounds``, the range of a difference of [0, 1] metrics by default; with one
    pair low, high and std are None, with none the mean is None as well).
    """
    if isinstance(method_values, Mapping) != isinstance(plain_values, Mapping):
        raise ValueError("method_values and plain_values: pass two sequences or two seed -> value mappings")
    if isinstance(method_values, Mapping):
        seeds = [s for s in method_values if s in plain_values]
        pairs = [(s, method_values[s], plain_values[s]) for s in seeds]
    else:
        if len(method_values) != len(plain_values):
            raise ValueError(
                f"method_values ({len(method_values)}) and plain_values ({len(plain_values)}): "
                "expected one value per seed in each"
            )
        pairs = list(zip(range(len(method_values)), method_values, plain_values))
    used = [(s, float(m) - float(p)) for s, m, p in pairs if m is not None and p is not None]
    differences = [d for _, d in used]
    stat = mean_ci(differences, confidence, bounds=bounds)  # differences of [0, 1] metrics lie in [-1, 1]
    return {"seeds": [s for s, _ in used], "differences": differences, **stat}


def verdict(low: float | None, high: float | None) -> str:
    """The answer in words for an interval [low, high] on ``method - plain`` (higher is better).

    "better" when the whole interval lies above 0 (low > 0), "worse" when it lies below (high < 0),
    "no detectable difference" when it contains 0 (including the zero-width [0, 0] of identical runs),
    and "no interval" when there is none (low or high None: one seed, or no usable resample). The
    confidence is the interval's (95% unless asked otherwise); say so next to the verdict.
    """
    if low is None or high is None:
        return NO_INTERVAL
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NO_DIFFERENCE
