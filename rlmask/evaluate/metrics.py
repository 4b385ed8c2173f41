"""Classification metrics of a probability matrix, and a mean with its Student-t interval.

numpy only (no sklearn, no scipy), so every definition is visible here and CI needs nothing more.
Where sklearn has the metric, the definition is sklearn's: macro averages over all K classes with
``zero_division=0``; AUROC is the Mann-Whitney U statistic (a tie counts one half); one-vs-one AUROC
is Hand & Till's. Every undefined value is None, never NaN, so the result goes straight into JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# The scores every table, log and comparison leads with (one tuple, so they never disagree).
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "auroc", "auroc_ovo")


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """AUROC of ``scores`` (n,) for the boolean ``positive`` (n,), or None without both classes.

    Equals P(score of a positive > score of a negative) + 0.5 P(tie): ranks with ties averaged give
    the Mann-Whitney U statistic, in O(n log n) instead of counting every pair.
    """
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based mean rank of each tie group
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _mean_or_none(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None
) -> dict:
    """Metrics of class scores ``probs`` (N, K) against integer ``labels`` (N,), as plain Python types.

    Keys: accuracy; balanced_accuracy (mean recall over the classes present in labels);
    macro_precision / macro_recall / macro_f1 (mean over all K classes, 0 where undefined, as
    sklearn's ``average="macro", zero_division=0``); auroc (macro one-vs-rest over classes with both
    positives and negatives); auroc_ovo (Hand & Till: for each unordered pair of present classes
    (a, b), on their samples only, the mean of AUC(a vs b by p_a) and AUC(b vs a by p_b); then the
    mean over pairs); per_class {name: {precision, recall, f1, auroc, support}}; confusion_matrix
    (K lists, rows = true class, columns = predicted = argmax); num_samples.
    For K == 2 both AUROCs are the AUROC of class 1's score. Undefined values are None.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] < 1 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape}: expected shapes (N, K>=1) and (N,)")
    n, k = probs.shape
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"class_names: expected {k} distinct names, got {names}")
    if n and (labels.min() < 0 or labels.max() >= k or not np.array_equal(labels, labels.astype(np.int64))):
        raise ValueError(f"labels: expected integers in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    if not np.isfinite(probs).all():
        raise ValueError("probs: contain NaN or infinity")
    labels = labels.astype(np.int64)

    pred = probs.argmax(axis=1)
    cm = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)  # (K true, K predicted)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    # zero_division=0: a ratio with an empty denominator is 0.
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
    present = support > 0

    per_class_auroc = [binary_auroc(probs[:, c], labels == c) for c in range(k)]
    if k == 2:
        auroc = auroc_ovo = per_class_auroc[1]
    else:
        auroc = _mean_or_none(per_class_auroc)
        classes = np.flatnonzero(present)
        pair_aurocs = []
        for i, a in enumerate(classes):
            for b in classes[i + 1 :]:
                pair = (labels == a) | (labels == b)
                a_vs_b = binary_auroc(probs[pair, a], labels[pair] == a)
                b_vs_a = binary_auroc(probs[pair, b], labels[pair] == b)
                pair_aurocs.append((a_vs_b + b_vs_a) / 2.0)
        auroc_ovo = _mean_or_none(pair_aurocs)

    def macro(values: np.ndarray) -> float | None:
        return float(values.mean()) if n else None

    return {
        "accuracy": float(tp.sum() / n) if n else None,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else None,
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "auroc": auroc,
        "auroc_ovo": auroc_ovo,
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "auroc": per_class_auroc[c],
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        },
        "confusion_matrix": cm.tolist(),
        "num_samples": int(n),
    }


def _t_central_mass(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) tan(theta)) for Student's t with integer ``df`` >= 1.

    The finite series for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4): exact, needs no
    incomplete beta function, and is monotone in theta on [0, pi/2], which makes inversion a bisection.
    """
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2))
        k = np.arange(1, df // 2)
        return s * (1.0 + np.cumprod((2 * k - 1) / (2 * k) * c2).sum())
    if df == 1:
        return 2.0 * theta / math.pi
    # 2/pi (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ... up to c^(df-3)))
    k = np.arange(1, (df - 1) // 2)
    series = 1.0 + np.cumprod(2 * k / (2 * k + 1) * c2).sum()
    return 2.0 / math.pi * (theta + s * math.cos(theta) * series)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t distribution with integer ``df`` >= 1 degrees of freedom."""
    if not 0.0 < q < 1.0 or int(df) != df or df < 1:
        raise ValueError(f"t_quantile: need 0 < q < 1 and an integer df >= 1, got q={q}, df={df}")
    target = abs(2.0 * q - 1.0)  # central mass P(|T| <= t), by symmetry
    lo, hi = 0.0, math.pi / 2
    for _ in range(100):  # bisection on theta = atan(t / sqrt(df)), a bounded bracket
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central_mass(mid, int(df)) < target else (lo, mid)
    return math.copysign(math.sqrt(df) * math.tan((lo + hi) / 2), q - 0.5)


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> dict:
    """Mean of ``values`` with its two-sided Student-t interval: {mean, low, high, n, std}.

    None entries (a metric undefined for one run) are left out and ``n`` counts the rest. std is the
    sample standard deviation (ddof=1). With n = 1 the interval is [mean, mean] and std 0; with
    n = 0 mean, low, high and std are None.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "std": None}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "std": std}
