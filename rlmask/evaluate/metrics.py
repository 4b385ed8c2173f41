"""Classification metrics of a probability matrix, and a mean with its Student-t interval.

The numbers are scikit-learn's and scipy's, so they are the definitions users cite: macro averages
over all K classes with ``zero_division=0`` (``precision_recall_fscore_support``),
``balanced_accuracy_score``, ``confusion_matrix``, ``roc_auc_score`` one-vs-rest and Hand & Till's
one-vs-one, and ``scipy.stats.t`` for intervals. This module is the thin wrapper that keeps rlmask's
conventions where those libraries warn, raise or return NaN (a class absent from the labels, a single
class present, an empty split): every undefined value is None, never NaN, so the result goes
straight into JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

# The scores every table, log and comparison leads with (one tuple, so they never disagree).
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "auroc", "auroc_ovo")


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """sklearn's binary ``roc_auc_score``, or None where it is undefined (no positive or no negative).

    Checked here rather than left to sklearn, which warns and returns NaN in recent versions and
    raises in older ones.
    """
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        return None
    return float(roc_auc_score(positive, scores))


def _mean_or_none(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Metrics of class scores ``probs`` (N, K) against integer ``labels`` (N,), as plain Python types.

    Keys: accuracy; balanced_accuracy (mean recall over the classes present in labels, sklearn's
    ``balanced_accuracy_score``); macro_precision / macro_recall / macro_f1 (mean over all K classes,
    0 where undefined: ``precision_recall_fscore_support(labels=range(K), zero_division=0)``); auroc
    (macro one-vs-rest over the classes with both positives and negatives); auroc_ovo (Hand & Till:
    for each unordered pair of present classes (a, b), on their samples only, the mean of
    AUC(a vs b by p_a) and AUC(b vs a by p_b); then the mean over pairs); per_class {name: {precision,
    recall, f1, auroc, support}}; confusion_matrix (K lists, rows = true class, columns = predicted =
    argmax, the first class on a tie); num_samples.
    For K == 2 both AUROCs are the AUROC of class 1's score. Undefined values are None.

    The AUROCs are sklearn's binary ``roc_auc_score`` per class and per pair of classes, averaged as
    ``roc_auc_score(multi_class="ovr" / "ovo", average="macro")`` does (the tests check that they
    agree). They are not delegated to the multiclass call itself because that one requires rows that
    sum to one and treats classes absent from ``labels`` differently across sklearn versions.
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
    classes = list(range(k))

    if n == 0:  # sklearn rejects empty inputs; an empty split has counts but no rates
        cm = np.zeros((k, k), dtype=np.int64)
        precision = recall = f1 = np.zeros(k)
        support = np.zeros(k, dtype=np.int64)
        accuracy = balanced = None
    else:
        pred = probs.argmax(axis=1)
        with warnings.catch_warnings():
            # Both are cases handled here on purpose: a predicted class absent from the labels has no
            # recall to average in balanced accuracy; K == 1 is a single label by construction.
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            warnings.filterwarnings("ignore", message="A single label was found")
            cm = confusion_matrix(labels, pred, labels=classes)
            precision, recall, f1, support = precision_recall_fscore_support(
                labels, pred, labels=classes, average=None, zero_division=0
            )
            accuracy = float(accuracy_score(labels, pred))
            balanced = float(balanced_accuracy_score(labels, pred))

    per_class_auroc = [_auroc(probs[:, c], labels == c) for c in classes]
    if k == 2:
        auroc = auroc_ovo = per_class_auroc[1]
    else:
        auroc = _mean_or_none(per_class_auroc)
        present = np.flatnonzero(np.bincount(labels, minlength=k) > 0)
        pair_aurocs = []
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                pair = (labels == a) | (labels == b)
                a_vs_b = _auroc(probs[pair, a], labels[pair] == a)
                b_vs_a = _auroc(probs[pair, b], labels[pair] == b)
                pair_aurocs.append((a_vs_b + b_vs_a) / 2.0)  # both defined: a and b are present
        auroc_ovo = _mean_or_none(pair_aurocs)

    def macro(values: np.ndarray) -> float | None:
        return float(np.mean(values)) if n else None

    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
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
        "confusion_matrix": np.asarray(cm).astype(int).tolist(),
        "num_samples": int(n),
    }


def mean_ci(
    values: Sequence[float | None],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> dict:
    """Mean of ``values`` with its two-sided Student-t interval: {mean, low, high, n, std}.

    None entries (a metric undefined for one run) are left out and ``n`` counts the rest. std is the
    sample standard deviation (ddof=1); the half-width is ``scipy.stats.t.ppf((1 + confidence) / 2,
    n - 1) * std / sqrt(n)``. ``bounds=(lo, hi)`` clips the interval to a bounded metric's range
    (e.g. (0, 1) for accuracy or AUROC), so a few seeds never report an interval wider than the
    metric can be; with clipping the interval is no longer symmetric about the mean.

    With n = 1 there is no interval: low, high and std are None (a zero-width interval would claim
    certainty that one run cannot give). With n = 0 mean, low, high and std are all None.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    if bounds is not None and not bounds[0] <= bounds[1]:
        raise ValueError(f"bounds: expected (low, high) with low <= high, got {bounds}")
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "std": None}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1, "std": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, float(bounds[0])), min(high, float(bounds[1]))
    return {"mean": mean, "low": low, "high": high, "n": n, "std": std}
