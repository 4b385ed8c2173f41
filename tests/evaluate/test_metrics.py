"""Metrics against hand arithmetic and against scikit-learn on random inputs; mean_ci against scipy.

The scikit-learn and scipy cross-checks are ordinary tests (both are core dependencies), so they run
and can fail in CI.
"""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from rlmask.evaluate.metrics import classification_metrics, mean_ci

# Six samples, three classes; argmax predictions 0, 0, 1, 1, 2, 2.
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # label 0
        [0.6, 0.3, 0.1],  # label 0
        [0.3, 0.5, 0.2],  # label 0, predicted 1
        [0.2, 0.7, 0.1],  # label 1
        [0.1, 0.3, 0.6],  # label 1, predicted 2
        [0.2, 0.2, 0.6],  # label 2
    ]
)
LABELS = np.array([0, 0, 0, 1, 1, 2])


def brute_auroc(scores, positive):
    """Mean over every (positive, negative) pair of 1[s_p > s_n] + 0.5 * 1[s_p == s_n]."""
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_hand_computed_example():
    m = classification_metrics(PROBS, LABELS, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["num_samples"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall = diag / row sums = 2/3, 1/2, 1; precision = diag / column sums = 2/2, 1/2, 1/2
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro_precision"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    # f1 = 2pr/(p+r): a: 2*1*(2/3)/(5/3) = 0.8, b: 0.5, c: 2*0.5*1/1.5 = 2/3
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert [m["per_class"][c]["support"] for c in "abc"] == [3, 2, 1]
    # One-vs-rest: a: positives' p0 {.8,.6,.3} all beat negatives' p0 {.2,.1,.2} -> 9/9 = 1.
    # b: positives' p1 {.7,.3} vs negatives' {.1,.3,.5,.2}: .7 wins 4; .3 wins 2, ties 1, loses 1 -> 6.5/8.
    # c: positive p2 {.6} vs {.1,.1,.2,.1,.6}: wins 4, ties 1 -> 4.5/5.
    assert m["per_class"]["a"]["auroc"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["auroc"] == pytest.approx(6.5 / 8)
    assert m["per_class"]["c"]["auroc"] == pytest.approx(4.5 / 5)
    assert m["auroc"] == pytest.approx((1 + 6.5 / 8 + 4.5 / 5) / 3)
    # One-vs-one on each pair's samples:
    # (a,b): p0 {.8,.6,.3} vs {.2,.1} = 1; p1 {.7,.3} vs {.1,.3,.5} = (3 + 1.5)/6 = .75 -> .875
    # (a,c): p0 {.8,.6,.3} vs {.2} = 1; p2 {.6} vs {.1,.1,.2} = 1 -> 1
    # (b,c): p1 {.7,.3} vs {.2} = 1; p2 {.6} vs {.1,.6} = 1.5/2 = .75 -> .875
    assert m["auroc_ovo"] == pytest.approx((0.875 + 1 + 0.875) / 3)
    json.dumps(m, allow_nan=False)  # plain JSON types


def _random_case(rng, n, k, absent=(), ties=False):
    """Softmax-like probabilities (rows sum to one) and labels; ``absent`` classes never occur in the
    labels but keep a constant share of every row, so they are still predicted where the other
    scores are low, and dropping their columns rescales every row by the same factor, which keeps
    the rankings, hence sklearn's multiclass AUROCs on the present columns, comparable. ``ties``
    puts the present classes' scores on a coarse grid (multiples of 1/5 of their share): many tied
    scores, tied maxima included, while rows still sum to one."""
    present = [c for c in range(k) if c not in absent]
    share = 0.35 if absent else 0.0
    if ties:
        spread = rng.multinomial(5, np.ones(len(present)) / len(present), size=n) / 5.0
    else:
        spread = rng.dirichlet(np.ones(len(present)), size=n)
    probs = np.zeros((n, k))
    probs[:, present] = (1 - share * len(absent)) * spread
    probs[:, list(absent)] = share
    labels = rng.choice(present, size=n)
    return probs, labels, present


def _check_against_sklearn(probs, labels, k, present):
    m = classification_metrics(probs, labels)
    pred = probs.argmax(axis=1)
    classes = list(range(k))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # y_pred contains classes not in y_true: expected here
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, labels=classes, average="macro", zero_division=0))
    assert m["macro_precision"] == pytest.approx(p.mean()) and m["macro_recall"] == pytest.approx(r.mean())
    assert m["confusion_matrix"] == confusion_matrix(labels, pred, labels=classes).tolist()
    for c in classes:
        cls = m["per_class"][str(c)]
        assert (cls["precision"], cls["recall"], cls["f1"], cls["support"]) == pytest.approx((p[c], r[c], f[c], s[c]))
        if c in present:
            assert cls["auroc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
            assert cls["auroc"] == pytest.approx(brute_auroc(probs[:, c], labels == c))  # ties count one half
        else:
            assert cls["auroc"] is None
    # The macro AUROCs against sklearn's multiclass calls on the present classes (whose rows sum to
    # one after the common rescaling; sklearn needs probabilities for these).
    sub = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    relabel = np.searchsorted(present, labels)
    if k == 2:
        assert m["auroc"] == m["auroc_ovo"] == pytest.approx(roc_auc_score(labels == 1, probs[:, 1]))
    elif len(present) == 2:
        a, b = present
        assert m["auroc"] == pytest.approx(
            (roc_auc_score(labels == a, probs[:, a]) + roc_auc_score(labels == b, probs[:, b])) / 2
        )
        assert m["auroc_ovo"] == pytest.approx(m["auroc"])  # one pair, on all samples
    else:
        assert m["auroc"] == pytest.approx(roc_auc_score(relabel, sub, multi_class="ovr"))
        assert m["auroc_ovo"] == pytest.approx(roc_auc_score(relabel, sub, multi_class="ovo"))
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn_on_random_inputs(k, ties):
    rng = np.random.default_rng(10 * k + ties)
    for _ in range(5):
        probs, labels, present = _random_case(rng, int(rng.integers(20, 200)), k, ties=ties)
        _check_against_sklearn(probs, labels, k, present)


@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn_with_absent_classes(ties):
    rng = np.random.default_rng(7 + ties)
    for k, absent in ((3, (2,)), (4, (1,)), (5, (0, 3)), (4, (0, 1))):
        probs, labels, present = _random_case(rng, 120, k, absent=absent, ties=ties)
        assert set(np.unique(probs.argmax(axis=1))) - set(present) or ties  # an absent class is predicted
        _check_against_sklearn(probs, labels, k, present)


def test_multiclass_aurocs_match_sklearn_when_every_class_is_present():
    # The defining calls themselves, on all K columns: roc_auc_score(multi_class="ovr" / "ovo").
    rng = np.random.default_rng(3)
    for k in (3, 4, 6):
        probs = rng.dirichlet(np.ones(k), size=150)
        labels = rng.integers(0, k, size=150)
        m = classification_metrics(probs, labels)
        assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", labels=range(k)))
        assert m["auroc_ovo"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovo", labels=range(k)))


def test_perfect_and_inverse_classifiers():
    labels = np.array([0, 1, 2, 0, 1, 2])
    onehot = np.eye(3)[labels]
    perfect = classification_metrics(onehot, labels)
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["auroc"] == perfect["auroc_ovo"] == 1.0
    inverse = classification_metrics(1 - onehot, labels)
    assert inverse["auroc"] == inverse["auroc_ovo"] == 0.0
    y = np.array([0, 1, 1, 0, 1])
    assert classification_metrics(np.eye(2)[y], y)["auroc"] == 1.0
    assert classification_metrics(np.eye(2)[1 - y], y)["auroc"] == 0.0


def test_all_ties_give_one_half():
    labels = np.array([0, 1, 0, 1, 1])
    m = classification_metrics(np.full((5, 2), 0.5), labels)
    assert m["auroc"] == m["auroc_ovo"] == 0.5
    assert m["confusion_matrix"] == [[2, 0], [3, 0]]  # a tied row predicts the first class


def test_class_absent_from_labels():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=20)
    labels = rng.integers(0, 2, size=20)  # class 2 never occurs
    m = classification_metrics(probs, labels)
    absent = m["per_class"]["2"]
    assert absent["support"] == 0 and absent["recall"] == 0.0 and absent["auroc"] is None
    recalls = [m["per_class"][c]["recall"] for c in "01"]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))  # present classes only
    assert m["macro_recall"] == pytest.approx(sum(recalls) / 3)  # all K classes
    assert m["auroc"] == pytest.approx((m["per_class"]["0"]["auroc"] + m["per_class"]["1"]["auroc"]) / 2)
    # Only the pair (0, 1) is present.
    pair = (brute_auroc(probs[:, 0], labels == 0) + brute_auroc(probs[:, 1], labels == 1)) / 2
    assert m["auroc_ovo"] == pytest.approx(pair)
    json.dumps(m, allow_nan=False)


def test_single_class_and_empty_inputs_give_none():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined values are handled here, not warned about by sklearn
        one = classification_metrics(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))
        three = classification_metrics(np.eye(3)[[0, 1, 2, 1]], np.array([1, 1, 1, 1]))
    assert one["auroc"] is None and one["auroc_ovo"] is None and one["accuracy"] == 0.5
    assert one["balanced_accuracy"] == 0.5 and one["per_class"]["1"]["precision"] == 0.0
    assert three["auroc"] is None and three["auroc_ovo"] is None and three["balanced_accuracy"] == 0.5
    single_column = classification_metrics(np.ones((3, 1)), np.zeros(3, dtype=int))
    assert single_column["accuracy"] == 1.0 and single_column["auroc"] is None and single_column["auroc_ovo"] is None
    empty = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert empty["num_samples"] == 0 and empty["accuracy"] is None and empty["macro_f1"] is None
    assert empty["balanced_accuracy"] is None and empty["auroc"] is None
    assert empty["confusion_matrix"] == [[0] * 3] * 3 and empty["per_class"]["0"]["support"] == 0
    for m in (one, three, single_column, empty):
        json.dumps(m, allow_nan=False)


def test_two_classes_both_aurocs_are_class_one_auroc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=30)
    scores = rng.random((30, 2))  # rows need not sum to one: class 1's column decides
    m = classification_metrics(scores, labels)
    assert m["auroc"] == m["auroc_ovo"] == pytest.approx(brute_auroc(scores[:, 1], labels == 1))


def test_unnormalised_scores_with_many_classes():
    # Rows that do not sum to one (sklearn's multiclass call refuses them): the pairwise definition
    # still applies, checked against brute-force pair counting.
    rng = np.random.default_rng(2)
    k, n = 4, 60
    probs = np.round(rng.dirichlet(np.ones(k), size=n), 1)  # rounding makes many ties
    labels = rng.integers(0, k, size=n)
    m = classification_metrics(probs, labels)
    per_class = [brute_auroc(probs[:, c], labels == c) for c in range(k)]
    for c in range(k):
        assert m["per_class"][str(c)]["auroc"] == pytest.approx(per_class[c])
    assert m["auroc"] == pytest.approx(np.mean(per_class))
    pairs = []
    for a in range(k):
        for b in range(a + 1, k):
            sel = (labels == a) | (labels == b)
            a_vs_b = brute_auroc(probs[sel, a], labels[sel] == a)
            pairs.append((a_vs_b + brute_auroc(probs[sel, b], labels[sel] == b)) / 2)
    assert m["auroc_ovo"] == pytest.approx(np.mean(pairs))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(np.ones((2, 2)) / 2, np.array([0, 2]))
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics(np.ones((2, 2)) / 2, np.array([0, 1]), ["x"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.full((2, 2), np.nan), np.array([0, 1]))


def test_mean_ci_matches_scipy_t():
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sample std 1, df 2 (table value 4.303)
    assert ci["mean"] == 2.0 and ci["std"] == pytest.approx(1.0) and ci["n"] == 3
    assert ci["high"] == pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-3)
    assert ci["low"] == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3)
    rng = np.random.default_rng(4)
    for n in (2, 3, 5, 10, 31):
        x = rng.normal(size=n)
        for confidence in (0.9, 0.95, 0.99):
            low, high = stats.t.interval(confidence, n - 1, loc=x.mean(), scale=stats.sem(x))
            ci = mean_ci(list(x), confidence)
            assert (ci["low"], ci["high"]) == pytest.approx((low, high), rel=1e-12)
    assert mean_ci([0.5, None, 0.5])["n"] == 2
    wide, narrow = mean_ci([1.0, 2.0, 4.0], 0.99), mean_ci([1.0, 2.0, 4.0], 0.9)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], 1.0)


def test_mean_ci_one_value_has_no_interval():
    # A single seed cannot measure spread: no interval (not a zero-width one), no std.
    assert mean_ci([0.7]) == {"mean": 0.7, "low": None, "high": None, "n": 1, "std": None}
    assert mean_ci([None, 0.7, None], bounds=(0, 1)) == {"mean": 0.7, "low": None, "high": None, "n": 1, "std": None}
    assert mean_ci([]) == {"mean": None, "low": None, "high": None, "n": 0, "std": None}
    assert mean_ci([None]) == mean_ci([])


def test_mean_ci_bounds_clip_the_interval():
    # Two seeds: t(0.975, 1) = 12.7, so the raw interval of two accuracies is far wider than [0, 1].
    raw, clipped = mean_ci([0.2, 0.3]), mean_ci([0.2, 0.3], bounds=(0.0, 1.0))
    assert raw["low"] < 0.0 and raw["high"] == pytest.approx(0.25 + 12.7062 * 0.05, abs=1e-3)
    assert clipped["low"] == 0.0 and clipped["high"] == pytest.approx(raw["high"])
    assert clipped["mean"] == raw["mean"] and clipped["std"] == raw["std"]
    top = mean_ci([0.96, 0.99], bounds=(0.0, 1.0))
    assert top["high"] == 1.0 and 0.0 < top["low"] < top["mean"]
    inside = mean_ci([0.4, 0.5, 0.45, 0.42], bounds=(0.0, 1.0))
    assert inside == mean_ci([0.4, 0.5, 0.45, 0.42])  # an interval inside the range is untouched
    with pytest.raises(ValueError, match="bounds"):
        mean_ci([0.1, 0.2], bounds=(1.0, 0.0))
