"""Bootstrap CIs, per-slice tables and judge-human agreement, checked against SciPy and
scikit-learn and against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import cohen_kappa_score

from flywheel.stats import agreement, bootstrap_ci, slice_scores, worst_slice


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(5)
    for n, values in [(20, rng.uniform(0, 1, 20)), (40, rng.choice([0.0, 0.5, 1.0], 40)), (8, rng.beta(2, 5, 8))]:
        ours = bootstrap_ci(values, seed=1, resamples=20_000)
        theirs = scipy_stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile",
                                       confidence_level=0.95, rng=np.random.default_rng(2)).confidence_interval
        # Two independent Monte-Carlo runs of the same estimator: equal up to resampling noise.
        assert ours.ci_low == pytest.approx(theirs.low, abs=0.01), n
        assert ours.ci_high == pytest.approx(theirs.high, abs=0.01), n
        assert ours.mean == pytest.approx(float(np.mean(values)))


def test_bootstrap_ci_is_seeded_and_handles_edge_cases():
    values = [1.0, 0.75, 0.5, 1.0, 0.0, 1.0, 0.25, 1.0]
    a = bootstrap_ci(values, seed=0)
    assert a == bootstrap_ci(values, seed=0) and a != bootstrap_ci(values, seed=1)
    assert 0.0 <= a.ci_low < a.mean < a.ci_high <= 1.0 and a.mean == pytest.approx(0.6875)
    assert bootstrap_ci([]).model_dump() == {"n": 0, "mean": None, "ci_low": None, "ci_high": None}
    single = bootstrap_ci([0.4])
    assert (single.mean, single.ci_low, single.ci_high) == (0.4, 0.4, 0.4)
    same = bootstrap_ci([0.3] * 5)
    assert same.ci_low == same.mean == same.ci_high == pytest.approx(0.3)
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, float("nan")])


def test_slices_leave_out_unscored_items_and_find_the_worst():
    labels = ["refund", "refund", "track", "track", "track", "cancel", "cancel"]
    scores = [1.0, 0.5, 1.0, 1.0, None, 0.0, 0.5]
    slices = slice_scores(labels, scores)
    assert [(s.slice, s.n, s.mean) for s in slices] == [("cancel", 2, 0.25), ("refund", 2, 0.75), ("track", 2, 1.0)]
    assert all(s.ci_low <= s.mean <= s.ci_high for s in slices)
    worst = worst_slice(slices)
    assert (worst.slice, worst.mean) == ("cancel", 0.25)
    assert worst_slice([]) is None
    with pytest.raises(ValueError):
        slice_scores(["a"], [1.0, 0.0])


def test_kappa_and_spearman_by_hand_and_against_the_libraries():
    judge = [0.9, 0.8, 0.2, 0.7, 0.1, 0.6, 0.3, 0.95]
    human = [1.0, 0.7, 0.3, 0.4, 0.0, 0.8, 0.6, 0.9]
    result = agreement(judge, human, pass_mark=0.5)
    # By hand: pass/fail judge = 1 1 0 1 0 1 0 1, human = 1 1 0 0 0 1 1 1 -> 6 of 8 agree (po = 0.75);
    # both say pass 5/8 of the time, so pe = 5/8*5/8 + 3/8*3/8 = 34/64; kappa = (0.75 - 34/64) / (1 - 34/64).
    assert result.kappa == pytest.approx((0.75 - 34 / 64) / (1 - 34 / 64))
    j_pass, h_pass = [int(v >= 0.5) for v in judge], [int(v >= 0.5) for v in human]
    assert result.kappa == pytest.approx(cohen_kappa_score(j_pass, h_pass))
    assert result.spearman == pytest.approx(scipy_stats.spearmanr(judge, human).statistic)
    # Spearman by hand on untied ranks: 1 - 6 sum(d^2) / (n (n^2 - 1)).
    rj, rh = scipy_stats.rankdata(judge), scipy_stats.rankdata(human)
    assert result.spearman == pytest.approx(1 - 6 * ((rj - rh) ** 2).sum() / (8 * 63))
    assert result.n == 8


def test_agreement_that_cannot_be_computed_says_so():
    all_pass = agreement([0.9, 0.8, 0.7], [0.6, 0.9, 1.0])
    assert all_pass.kappa is None and "same class" in all_pass.note
    constant = agreement([0.5, 0.5, 0.5], [0.1, 0.9, 0.4])
    assert constant.spearman is None and "same score" in constant.note
    assert agreement([0.5], [0.5]).kappa is None
    perfect = agreement([0.0, 1.0, 0.2, 0.9], [0.1, 1.0, 0.3, 0.8])
    assert perfect.kappa == pytest.approx(1.0) and perfect.spearman == pytest.approx(1.0)
