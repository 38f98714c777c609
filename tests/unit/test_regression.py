"""The regression guard (flywheel.regression): budgets against the active version and the first
deployed baseline, on the anchor set and on every slice; and the drift simulation the issue asks for."""

from __future__ import annotations

import pytest

from flywheel.regression import AnchorScore, GuardBudgets, check_candidate

SLICES = ["get_order_status", "cancel_order", "refund", "handoff"]
BUDGETS = GuardBudgets()  # the defaults: 0.01 per iteration, 0.015 cumulative


def scores(values: list[float]) -> dict[str, AnchorScore]:
    """20 anchor items over 4 slices (5 each)."""
    return {f"item-{i}": AnchorScore(slice=SLICES[i % 4], score=min(1.0, max(0.0, v))) for i, v in enumerate(values)}


BASE_VALUES = [0.9, 0.8, 0.7, 0.85, 0.95, 0.75, 0.8, 0.9, 0.6, 0.85, 0.9, 0.8, 0.7, 0.85, 0.95, 0.75, 0.8, 0.9, 0.65, 0.85]


def simulate(iterations: list[dict[str, AnchorScore]]) -> list[bool]:
    """The flywheel over successive iterations: the first is deployed (baseline and active), each
    later one is deployed when the guard passes it (and approved), else blocked."""
    baseline = active = iterations[0]
    passed = [True]
    for candidate in iterations[1:]:
        verdict = check_candidate(candidate, active=active, baseline=baseline, budgets=BUDGETS,
                                  active_version=1, baseline_version=1)
        passed.append(verdict.passed)
        if verdict.passed:
            active = candidate
    return passed


@pytest.mark.parametrize("step", ["one point", "one percent"])
def test_ten_iterations_each_one_percent_worse_are_blocked_by_the_third(step):
    if step == "one point":  # 1% of the score scale: 0.01 less on every item, each iteration
        iterations = [scores([v - 0.01 * k for v in BASE_VALUES]) for k in range(10)]
    else:  # 1% less than the previous iteration's score, relatively, on every item
        iterations = [scores([v * 0.99 ** k for v in BASE_VALUES]) for k in range(10)]
    passed = simulate(iterations)
    first_blocked = passed.index(False) + 1  # 1-based iteration number
    assert first_blocked <= 3, passed
    assert not any(passed[first_blocked - 1:]), passed  # drift never gets back in


def test_a_truly_better_iteration_passes_after_blocked_ones():
    worse = [scores([v - 0.01 * k for v in BASE_VALUES]) for k in range(4)]
    better = scores([v + 0.05 for v in BASE_VALUES])
    assert simulate([*worse, better]) == [True, True, False, False, True]


def test_first_deployment_passes_and_says_it_becomes_the_baseline():
    verdict = check_candidate(scores(BASE_VALUES), active=None, baseline=None, budgets=BUDGETS)
    assert verdict.passed and "anchor set" in verdict.reason and verdict.checks == []


def test_one_slice_regressing_blocks_even_when_the_mean_is_fine():
    # "refund" (items 2, 6, 10, 14, 18) drops 0.2; every other item gains enough to lift the mean.
    cand = [v - 0.2 if i % 4 == 2 else min(1.0, v + 0.1) for i, v in enumerate(BASE_VALUES)]
    verdict = check_candidate(scores(cand), active=scores(BASE_VALUES), baseline=scores(BASE_VALUES), budgets=BUDGETS,
                              active_version=3, baseline_version=1)
    assert not verdict.passed
    overall = [c for c in verdict.checks if c.scope == "anchor set"]
    assert all(c.passed for c in overall)  # the mean did not drop
    failed = {(c.against, c.scope) for c in verdict.failed_checks}
    assert failed == {("active", "slice refund"), ("baseline", "slice refund")}
    assert "slice refund" in verdict.reason and "active version v3" in verdict.reason
    assert "first deployed version v1" in verdict.reason and "> budget 0.010" in verdict.reason


def test_drops_within_budget_pass_and_budgets_are_configurable():
    cand = scores([v - 0.01 for v in BASE_VALUES])
    assert check_candidate(cand, active=scores(BASE_VALUES), baseline=scores(BASE_VALUES), budgets=BUDGETS).passed
    strict = GuardBudgets(per_iteration=0.005, cumulative=0.005)
    verdict = check_candidate(cand, active=scores(BASE_VALUES), baseline=scores(BASE_VALUES), budgets=strict)
    assert not verdict.passed and "budget 0.005" in verdict.reason
    with pytest.raises(ValueError):
        GuardBudgets(per_iteration=-0.1)


def test_compares_only_items_both_were_scored_on():
    # The active version predates two anchor items added by review: only the 20 shared items count,
    # so two bad scores on the new items do not count against the active version's missing ones...
    active = scores(BASE_VALUES)
    cand = {**scores(BASE_VALUES), "new-1": AnchorScore(slice="refund", score=0.0),
            "new-2": AnchorScore(slice="refund", score=0.0)}
    assert check_candidate(cand, active=active, baseline=None, budgets=BUDGETS).passed
    # ...but once a version scored on them is active, a drop there counts.
    active2 = {**active, "new-1": AnchorScore(slice="refund", score=1.0), "new-2": AnchorScore(slice="refund", score=1.0)}
    assert not check_candidate(cand, active=active2, baseline=None, budgets=BUDGETS).passed


def test_fails_closed_when_nothing_can_be_compared():
    v = check_candidate({}, active=scores(BASE_VALUES), baseline=scores(BASE_VALUES), budgets=BUDGETS)
    assert not v.passed and "not scored on the workload's anchor set" in v.reason
    other = {"x": AnchorScore(slice="s", score=1.0)}
    v = check_candidate(other, active=scores(BASE_VALUES), baseline=None, budgets=BUDGETS, active_version=2)
    assert not v.passed and "no anchor item in common with the active version v2" in v.reason
