"""Paired statistics: the bootstrap against the binomial law it must reproduce, its vectorised
metrics against scikit-learn (through classification_metrics), per-seed differences against scipy."""

import numpy as np
import pytest
from scipy import stats

from rlmask.evaluate.metrics import classification_metrics, mean_ci
from rlmask.evaluate.paired import (
    BETTER,
    BOOTSTRAP_METRICS,
    NO_DIFFERENCE,
    NO_INTERVAL,
    WORSE,
    paired_bootstrap,
    paired_seed_differences,
    resampled_metric,
    verdict,
)


def _right_on(labels, right, k, rng):
    """Scores (N, K) whose argmax is the label exactly where ``right`` is True (another class elsewhere)."""
    n = labels.size
    probs = rng.dirichlet(np.ones(k), size=n) * 0.5
    wrong = (labels + rng.integers(1, k, size=n)) % k
    target = np.where(right, labels, wrong)
    probs[np.arange(n), target] += 0.5  # above every other entry (each < 0.5)
    return probs


def _method_ahead_by_k(n, k_better, n_classes=3, seed=0):
    """Plain is right on a random 60% of the images; the method is right on those and on exactly
    ``k_better`` more, so on every resample accuracy(method) - accuracy(plain) = (draws of those k
    images) / n."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    plain_right = np.zeros(n, dtype=bool)
    plain_right[rng.permutation(n)[: int(0.6 * n)]] = True
    extra = rng.permutation(np.flatnonzero(~plain_right))[:k_better]
    method_right = plain_right.copy()
    method_right[extra] = True
    return _right_on(labels, method_right, n_classes, rng), _right_on(labels, plain_right, n_classes, rng), labels


@pytest.mark.parametrize("n,k", [(400, 40), (1000, 30), (250, 5)])
def test_bootstrap_interval_is_the_binomial_one(n, k):
    # Each of the n draws lands on one of the k images with probability k / n, so the resampled
    # difference is Binomial(n, k / n) / n; its percentile interval must sit on that law's quantiles.
    probs_a, probs_b, labels = _method_ahead_by_k(n, k)
    result = paired_bootstrap("accuracy", probs_a, probs_b, labels, n_resamples=2000, seed=1)
    assert result["difference"] == pytest.approx(k / n, abs=1e-12)
    assert result["n_used"] == result["n_resamples"] == 2000 and result["seed"] == 1
    low, high = stats.binom.ppf([0.025, 0.975], n, k / n) / n
    # Tolerance: 2.5 images; the quantiles' Monte-Carlo error at 2,000 resamples is below one image
    # for these n, k, plus up to one image from the binomial's discreteness.
    assert result["low"] == pytest.approx(low, abs=2.5 / n)
    assert result["high"] == pytest.approx(high, abs=2.5 / n)
    assert verdict(result["low"], result["high"]) == BETTER
    # The same numbers with the roles swapped: the interval mirrors and the verdict flips.
    swapped = paired_bootstrap("accuracy", probs_b, probs_a, labels, n_resamples=2000, seed=1)
    assert (swapped["low"], swapped["high"]) == pytest.approx((-result["high"], -result["low"]))
    assert verdict(swapped["low"], swapped["high"]) == WORSE


def test_bootstrap_with_a_metric_function_is_the_binomial_one_too():
    # The general path (any function of (probs, labels)), with fewer resamples and a wider tolerance.
    n, k = 200, 20
    probs_a, probs_b, labels = _method_ahead_by_k(n, k, seed=3)

    def accuracy(probs, y):
        return float((probs.argmax(axis=1) == y).mean())

    result = paired_bootstrap(accuracy, probs_a, probs_b, labels, n_resamples=500, seed=0)
    assert result["metric"] == "accuracy" and result["n_used"] == 500
    assert result["difference"] == pytest.approx(k / n)
    low, high = stats.binom.ppf([0.025, 0.975], n, k / n) / n
    assert result["low"] == pytest.approx(low, abs=3 / n) and result["high"] == pytest.approx(high, abs=3 / n)
    # Same seed, same resamples: the vectorised path gives the same interval.
    fast = paired_bootstrap("accuracy", probs_a, probs_b, labels, n_resamples=500, seed=0)
    assert (fast["low"], fast["high"]) == pytest.approx((result["low"], result["high"]))


@pytest.mark.parametrize("metric", BOOTSTRAP_METRICS)
def test_identical_runs_differ_by_exactly_zero(metric):
    rng = np.random.default_rng(5)
    probs = np.round(rng.dirichlet(np.ones(4), size=300), 2)  # ties included
    labels = rng.integers(0, 4, size=300)
    result = paired_bootstrap(metric, probs, probs.copy(), labels, n_resamples=300, seed=2)
    assert result["difference"] == 0.0 and result["low"] == 0.0 and result["high"] == 0.0
    assert result["n_used"] == 300
    assert verdict(result["low"], result["high"]) == NO_DIFFERENCE


@pytest.mark.parametrize("k", [2, 3, 5])
def test_vectorised_resamples_match_sklearn(k):
    # Every resample's vectorised value against classification_metrics (scikit-learn) on the
    # resampled arrays; ties in the scores, and a class with a single image, so that about a third
    # of the resamples lack it (and for K == 2 have a single class, where AUROC is undefined).
    rng = np.random.default_rng(k)
    n = 60
    labels = rng.integers(0, k - 1, size=n)
    labels[0] = k - 1
    probs = np.round(rng.dirichlet(np.ones(k), size=n), 1)
    idx = rng.integers(0, n, size=(30, n))
    assert not (idx == 0).any(axis=1).all()  # some resamples lack class k - 1
    values = {metric: resampled_metric(metric, probs, labels, idx) for metric in BOOTSTRAP_METRICS}
    for r, row in enumerate(idx):
        expected = classification_metrics(probs[row], labels[row])
        for metric in BOOTSTRAP_METRICS:
            if expected[metric] is None:
                assert np.isnan(values[metric][r])
            else:
                assert values[metric][r] == pytest.approx(expected[metric], abs=1e-12)


def test_undefined_resamples_are_skipped_and_counted():
    # AUROC needs both classes: with one positive in 20 images, about (19/20)^20 = 36% of resamples lack it.
    rng = np.random.default_rng(0)
    labels = np.zeros(20, dtype=int)
    labels[7] = 1
    probs_a, probs_b = rng.dirichlet(np.ones(2), size=20), rng.dirichlet(np.ones(2), size=20)
    result = paired_bootstrap("auroc", probs_a, probs_b, labels, n_resamples=1000, seed=4)
    draws = np.random.default_rng(4).integers(0, 20, size=(1000, 20))  # the same resamples
    assert result["n_used"] == int((draws == 7).any(axis=1).sum())
    assert 500 < result["n_used"] < 800 and result["n_resamples"] == 1000
    assert result["low"] is not None and result["low"] <= result["high"]
    # Only one class at all: no difference, no interval, no verdict.
    single = paired_bootstrap("auroc", probs_a, probs_b, np.zeros(20, dtype=int), n_resamples=50)
    assert single["difference"] is None and single["low"] is None and single["high"] is None
    assert single["n_used"] == 0 and verdict(single["low"], single["high"]) == NO_INTERVAL


def test_bootstrap_is_seeded():
    probs_a, probs_b, labels = _method_ahead_by_k(300, 30, seed=8)
    first = paired_bootstrap("macro_f1", probs_a, probs_b, labels, n_resamples=500, seed=11)
    assert paired_bootstrap("macro_f1", probs_a, probs_b, labels, n_resamples=500, seed=11) == first
    other = paired_bootstrap("macro_f1", probs_a, probs_b, labels, n_resamples=500, seed=12)
    assert other["difference"] == first["difference"] and other["low"] != first["low"]


def test_bootstrap_rejects_bad_inputs():
    probs, labels = np.full((4, 2), 0.5), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="choose from"):
        paired_bootstrap("auroc_ovo", probs, probs, labels)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap("accuracy", probs, probs[:3], labels)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap("accuracy", probs, probs, labels, n_resamples=0)


def test_seed_differences_use_the_t_interval():
    method, plain = [0.71, 0.64, 0.69, 0.75], [0.60, 0.62, 0.58, 0.66]
    result = paired_seed_differences(method, plain)
    d = np.subtract(method, plain)
    assert result["differences"] == pytest.approx(list(d)) and result["n"] == 4 and result["seeds"] == [0, 1, 2, 3]
    low, high = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (result["mean"], result["low"], result["high"]) == pytest.approx((d.mean(), low, high))
    assert verdict(result["low"], result["high"]) == BETTER
    # Paired by seed: a mapping pairs equal keys and drops seeds without a partner or with None.
    by_seed = paired_seed_differences({0: 0.5, 1: 0.6, 2: None, 3: 0.9}, {1: 0.5, 0: 0.4, 2: 0.3})
    assert by_seed["seeds"] == [0, 1] and by_seed["differences"] == pytest.approx([0.1, 0.1])
    assert by_seed["low"] == pytest.approx(0.1) and by_seed["high"] == pytest.approx(0.1)  # no spread
    with pytest.raises(ValueError, match="one value per seed"):
        paired_seed_differences([0.1, 0.2], [0.1])


def test_one_seed_gives_no_interval():
    result = paired_seed_differences([0.7], [0.6])
    assert result["mean"] == pytest.approx(0.1) and result["n"] == 1
    assert result["low"] is None and result["high"] is None and result["std"] is None
    assert verdict(result["low"], result["high"]) == NO_INTERVAL
    none = paired_seed_differences([None], [0.6])
    assert none["mean"] is None and none["n"] == 0


def test_verdict_words():
    assert verdict(0.01, 0.2) == BETTER == "better"
    assert verdict(-0.2, -0.01) == WORSE == "worse"
    assert verdict(-0.1, 0.1) == verdict(0.0, 0.0) == verdict(0.0, 0.3) == NO_DIFFERENCE
    assert NO_DIFFERENCE == "no detectable difference"
    assert verdict(None, None) == verdict(0.1, None) == NO_INTERVAL


def test_one_seed_tables_carry_no_plus_minus_zero():
    # The summaries' writers show the mean alone when one seed (or repeat) gives no interval.
    from rlmask.experiments import compare, transfer

    one = {m: mean_ci([0.5], bounds=(0.0, 1.0)) for m in compare.METRICS}
    result = {
        "config": {"data": ["x"], "model": "m", "seeds": 1, "epochs": 1, "finetune_epochs": 1},
        "equal_compute_epochs": 2,
        "minutes": 0.1,
        "methods": {"plain (2 ep)": one, "pgnm": one},
    }
    table = compare.render_markdown(result, {})
    assert "Methods: 1 pretraining + 1 fine-tuning epochs" in table
    assert "| plain (2 ep) | 0.5000 | 0.5000 |" in table and "±" not in table.split("## Equal compute")[1]
    stat = mean_ci([0.5], bounds=(0.0, 1.0))
    entry = {
        "repeats": [{"n_train": 8}],
        **{
            m: {"mean": stat["mean"], "ci": [stat["low"], stat["high"]], "std": stat["std"], "n": stat["n"]}
            for m in transfer.METRICS
        },
    }
    md = transfer.render_markdown(
        {
            "config": {"data": ["x"], "mode": "linear", "epochs": 1, "repeats": 1},
            "split": "test",
            "results": {"ckpt": {"4": entry}},
        }
    )
    assert "| 4 | 8 | 0.5000 | 0.5000 |" in md and "0.0000" not in md
    # Two seeds near the top of the range: clipped, so shown as a lopsided [low, high] within [0, 1].
    two = {m: mean_ci([0.96, 0.99], bounds=(0.0, 1.0)) for m in compare.METRICS}
    table = compare.render_markdown({**result, "methods": {"pgnm": two}}, {})
    assert "1.0000]" in table and "±" not in table.split("## Equal compute")[1]
