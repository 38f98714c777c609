"""The regression guard: no candidate reaches review if it is worse than what serves now by more
than a per-iteration budget, or worse than the first deployed version by more than a cumulative
budget, on the workload's frozen anchor set or on any slice of it.

Why two budgets: each iteration may lose a little, within noise, and still look fine next to the
version before it; the cumulative budget against the first deployment (the baseline) stops those
small losses from adding up to a large one.

The anchor set is fixed when a workload is first deployed (that run's eval items) and grows only
by review; every candidate is scored on it. Versions are compared on the items both were scored
on (a version deployed before an item was added has no score for it), per item, so a comparison
is always like for like. Budgets are in score points (scores are in [0, 1]): 0.01 is one point.
A check that cannot be made (no item in common) blocks: the guard fails closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Floating-point slack: a drop exactly equal to the budget is within it.
_EPS = 1e-9


class GuardBudgets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    per_iteration: float = Field(0.01, ge=0, le=1, description="max drop against the active version")
    cumulative: float = Field(0.015, ge=0, le=1, description="max drop against the first deployed version")


class AnchorScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    slice: str
    score: float = Field(ge=0, le=1)


Scores = Mapping[str, AnchorScore]  # anchor item id -> the version's score on it


class GuardCheck(BaseModel):
    against: Literal["active", "baseline"]
    version: int | None = None
    scope: str  # "anchor set" or "slice <name>"
    n: int
    candidate: float | None
    reference: float | None
    drop: float | None
    budget: float
    passed: bool


class GuardVerdict(BaseModel):
    passed: bool
    reason: str
    checks: list[GuardCheck] = []

    @property
    def failed_checks(self) -> list[GuardCheck]:
        return [c for c in self.checks if not c.passed]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _compare(candidate: Scores, reference: Scores, *, against: Literal["active", "baseline"], version: int | None,
             budget: float) -> list[GuardCheck]:
    common = sorted(set(candidate) & set(reference))
    if not common:
        return [GuardCheck(against=against, version=version, scope="anchor set", n=0, candidate=None,
                           reference=None, drop=None, budget=budget, passed=False)]
    scopes: dict[str, list[str]] = {"anchor set": common}
    for item in common:
        scopes.setdefault(f"slice {reference[item].slice}", []).append(item)
    checks = []
    for scope, items in scopes.items():
        cand = _mean([candidate[i].score for i in items])
        ref = _mean([reference[i].score for i in items])
        drop = ref - cand
        checks.append(GuardCheck(against=against, version=version, scope=scope, n=len(items),
                                 candidate=round(cand, 6), reference=round(ref, 6), drop=round(drop, 6),
                                 budget=budget, passed=drop <= budget + _EPS))
    return checks


def _describe(check: GuardCheck) -> str:
    who = f"the {'active' if check.against == 'active' else 'first deployed'} version" + (
        f" v{check.version}" if check.version is not None else "")
    if check.n == 0:
        return f"no anchor item in common with {who}, so it cannot be compared"
    return (f"{check.scope}: {check.candidate:.3f} vs {check.reference:.3f} for {who} (n={check.n}), "
            f"a drop of {check.drop:.3f} > budget {check.budget:.3f}")


def check_candidate(
    candidate: Scores,
    *,
    active: Scores | None,
    baseline: Scores | None,
    budgets: GuardBudgets,
    active_version: int | None = None,
    baseline_version: int | None = None,
) -> GuardVerdict:
    """Pass or block one candidate; a blocked one carries every failed check in its reason."""
    if active is None and baseline is None:
        return GuardVerdict(passed=True, reason="first deployment of this workload: nothing to compare with; "
                                                "if approved, its eval items become the anchor set")
    if not candidate:
        return GuardVerdict(passed=False, reason="the candidate was not scored on the workload's anchor set")
    checks: list[GuardCheck] = []
    if active is not None:
        checks += _compare(candidate, active, against="active", version=active_version, budget=budgets.per_iteration)
    if baseline is not None:
        checks += _compare(candidate, baseline, against="baseline", version=baseline_version,
                           budget=budgets.cumulative)
    failed = [c for c in checks if not c.passed]
    if failed:
        return GuardVerdict(passed=False, reason="blocked by the regression guard: " + "; ".join(map(_describe, failed)),
                            checks=checks)
    worst = max((c.drop for c in checks if c.drop is not None), default=0.0)
    return GuardVerdict(passed=True, reason="within the regression budgets on the anchor set and every slice ("
                        + (f"largest drop {worst:.3f})" if worst > _EPS else "no drop anywhere)"), checks=checks)
