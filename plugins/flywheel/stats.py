"""The statistics of an evaluation: bootstrap confidence intervals, per-slice tables, agreement.

Every figure a reviewer sees next to a score comes from here: the mean with a seeded percentile
bootstrap 95% CI (checked against ``scipy.stats.bootstrap`` in the tests), the same per slice (the
stratification class of each eval item) with the worst slice singled out, and the agreement
between the judge and human labels (Cohen's kappa by scikit-learn, Spearman's rho by SciPy).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


class Interval(BaseModel):
    """Mean of ``n`` scores with its bootstrap CI; all None when there is nothing to average."""

    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


class SliceScore(Interval):
    slice: str


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                 confidence: float = CONFIDENCE) -> Interval:
    """Mean and percentile-bootstrap CI of ``values``: resample with replacement ``resamples``
    times (seeded, so a rerun prints the same interval), take the central ``confidence`` of the
    resampled means. One value, or identical values, give a zero-width interval."""
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if data.size == 0:
        return Interval(n=0, mean=None, ci_low=None, ci_high=None)
    if not np.all(np.isfinite(data)):
        raise ValueError("scores must be finite numbers")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(data.mean())
    # Percentiles of means can differ from the mean by rounding when every value is the same.
    return Interval(n=int(data.size), mean=mean, ci_low=min(float(low), mean), ci_high=max(float(high), mean))


def slice_scores(labels: Sequence[str], values: Sequence[float | None], *, seed: int = 0) -> list[SliceScore]:
    """One row per slice (sorted by name): n, mean and bootstrap CI of its scored items.

    Unscored items (``None``: the judge could not score them) are left out of every slice, as
    they are left out of the mean; they are counted elsewhere with their reason.
    """
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} slice labels but {len(values)} scores")
    groups: dict[str, list[float]] = defaultdict(list)
    for label, value in zip(labels, values):
        if value is not None:
            groups[str(label)].append(float(value))
    return [SliceScore(slice=name, **bootstrap_ci(groups[name], seed=seed).model_dump()) for name in sorted(groups)]


def worst_slice(slices: Sequence[SliceScore]) -> SliceScore | None:
    """The slice with the lowest mean (ties: the smaller slice, then the name)."""
    scored = [s for s in slices if s.mean is not None]
    return min(scored, key=lambda s: (s.mean, s.n, s.slice)) if scored else None


# --- agreement between two raters (the judge and humans) ------------------------------------------

class Agreement(BaseModel):
    """How well the judge agrees with human labels on the same items."""

    n: int
    kappa: float | None  # Cohen's kappa on pass/fail at ``pass_mark``
    spearman: float | None  # rank correlation of the raw scores
    pass_mark: float
    note: str = ""


def agreement(judge: Sequence[float], human: Sequence[float], *, pass_mark: float = 0.5) -> Agreement:
    """Cohen's kappa of pass/fail (score >= ``pass_mark``) and Spearman's rho of the scores.

    Undefined statistics are None with the reason in ``note`` (kappa when both raters put every
    item in one class, rho when either rater gives every item the same score), never a made-up 0.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    if len(judge) != len(human):
        raise ValueError(f"{len(judge)} judge scores but {len(human)} human labels")
    n = len(judge)
    if n < 2:
        return Agreement(n=n, kappa=None, spearman=None, pass_mark=pass_mark,
                         note="at least two labelled items are needed")
    notes = []
    j_pass = [int(v >= pass_mark) for v in judge]
    h_pass = [int(v >= pass_mark) for v in human]
    kappa: float | None
    if len(set(j_pass) | set(h_pass)) < 2:
        kappa = None
        notes.append("kappa undefined: judge and humans put every item in the same class")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            kappa = float(cohen_kappa_score(j_pass, h_pass))
        if math.isnan(kappa):
            kappa = None
            notes.append("kappa undefined")
    rho: float | None
    if len(set(judge)) < 2 or len(set(human)) < 2:
        rho = None
        notes.append("spearman undefined: one rater gives every item the same score")
    else:
        rho = float(spearmanr(judge, human).statistic)
    return Agreement(n=n, kappa=kappa, spearman=rho, pass_mark=pass_mark, note="; ".join(notes))
