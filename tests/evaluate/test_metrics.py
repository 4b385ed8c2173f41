"""Metrics against hand arithmetic and brute-force pair counting; t quantiles against table values."""

import json
import math

import numpy as np
import pytest

from rlmask.evaluate.metrics import (
    binary_auroc,
    classification_metrics,
    mean_ci,
    t_quantile,
)

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
    assert binary_auroc(np.array([1.0, 1.0, 2.0]), np.array([True, False, False])) == pytest.approx(0.25)


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
    one = classification_metrics(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))
    assert one["auroc"] is None and one["auroc_ovo"] is None and one["accuracy"] == 0.5
    empty = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert empty["num_samples"] == 0 and empty["accuracy"] is None and empty["macro_f1"] is None
    json.dumps(empty, allow_nan=False)


def test_two_classes_both_aurocs_are_class_one_auroc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=30)
    scores = rng.random((30, 2))  # rows need not sum to one: class 1's column decides
    m = classification_metrics(scores, labels)
    assert m["auroc"] == m["auroc_ovo"] == pytest.approx(brute_auroc(scores[:, 1], labels == 1))


def test_auroc_matches_brute_force_pair_counting():
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


def test_t_quantile_table_values_and_closed_forms():
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=5e-4)
    assert t_quantile(0.975, 9) == pytest.approx(2.262, abs=5e-4)
    assert t_quantile(0.025, 9) == pytest.approx(-t_quantile(0.975, 9))
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-12)
    for q in (0.6, 0.9, 0.995):
        assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)))  # Cauchy
        a = 2 * q - 1  # df = 2: P(|T| <= t) = t / sqrt(2 + t^2)  =>  t = a sqrt(2 / (1 - a^2))
        assert t_quantile(q, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)))


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 30, 101, 1000):
        for q in (0.9, 0.975, 0.995):
            assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)


def test_mean_ci():
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sample std 1, df 2 (table value 4.303)
    assert ci["mean"] == 2.0 and ci["std"] == pytest.approx(1.0) and ci["n"] == 3
    assert ci["high"] == pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-3)
    assert ci["low"] == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3)
    assert mean_ci([0.7]) == {"mean": 0.7, "low": 0.7, "high": 0.7, "n": 1, "std": 0.0}
    assert mean_ci([0.5, None, 0.5])["n"] == 2
    assert mean_ci([])["mean"] is None
    wide, narrow = mean_ci([1.0, 2.0, 4.0], 0.99), mean_ci([1.0, 2.0, 4.0], 0.9)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]
