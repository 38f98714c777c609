"""The review request: what a finished run hands to its own review run (flywheel.review)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from flywheel.review import ReviewRequest

RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]+$")  # Airflow's default allowed_run_id_pattern


def _request(**over) -> ReviewRequest:
    fields = dict(run_key="flywheel_on_demand/manual__2026-11-30T10:00:00+00:00", workload_id="tool_router",
                  candidate="tiny-lm-1.6m", strategy="lora", score=0.5, ci_low=0.5, ci_high=0.5, n=20,
                  method="tool_call_exact", cost_per_1k=0.0014, output_uri="file:///a/experiments/abc",
                  threshold=0.4, subject="Deploy tiny-lm-1.6m (lora) for tool_router?", body="evidence")
    return ReviewRequest(**{**fields, **over})


def test_the_same_request_always_gets_the_same_review_run():
    assert _request().review_run_id == _request(body="other text", score=0.9).review_run_id
    assert _request().review_run_id.startswith("review__tool_router__lora__")


@pytest.mark.parametrize("over", [{"workload_id": "support_qa"}, {"candidate": "tiny-lm-0.6m"}, {"strategy": "icl"},
                                  {"run_key": "flywheel_daily/scheduled__2026-11-29T00:00:00+00:00"}])
def test_different_requests_get_different_review_runs(over):
    assert _request(**over).review_run_id != _request().review_run_id


@pytest.mark.parametrize("workload", ["../../etc/passwd", "x'; DROP TABLE runs;--", "Ünïcode wörkload",
                                      "$(rm -rf /)", "a" * 300, "---", "a b/c"])
def test_hostile_workload_ids_give_valid_distinct_run_ids(workload):
    run_id = _request(workload_id=workload).review_run_id
    assert RUN_ID.match(run_id) and len(run_id) <= 250
    assert run_id != _request(workload_id=workload + "x").review_run_id


def test_round_trip_through_the_review_runs_conf():
    dumped = _request().model_dump(mode="json")
    assert dumped["review_run_id"] == _request().review_run_id  # carried for the trigger's run id
    assert ReviewRequest.from_conf({"request": dumped}) == _request()


def test_a_run_without_a_request_fails_clearly():
    with pytest.raises(ValueError, match="triggered by a flywheel run"):
        ReviewRequest.from_conf({})
    with pytest.raises(ValueError, match="triggered by a flywheel run"):
        ReviewRequest.from_conf(None)


@pytest.mark.parametrize("over", [{"score": 1.5}, {"strategy": "magic"}, {"workload_id": ""}, {"extra": 1}])
def test_invalid_requests_are_refused(over):
    with pytest.raises(ValidationError):
        _request(**over)


def test_a_leaderboard_winner_becomes_a_request_with_its_evidence():
    winner = {"workload_id": "tool_router", "candidate": "tiny-lm-1.6m", "strategy": "lora", "score": 0.6,
              "ci_low": 0.5, "ci_high": 0.7, "n": 20, "method": "tool_call_judged", "cost_per_1k": 0.001,
              "output_uri": "s3://b/runs/r/experiments/e", "worst_slice": "lookup_order", "worst_slice_score": 0.4,
              "tool_metrics": {"name_accuracy": 1.0}, "judge": None}
    request = ReviewRequest.from_winner(winner, run_key="d/r", threshold=0.4, slice_floor=0.3, subject="s", body="b")
    assert request.key == {"run_key": "d/r", "workload_id": "tool_router", "candidate": "tiny-lm-1.6m",
                           "strategy": "lora"}
    assert request.evidence == {"worst_slice": "lookup_order", "worst_slice_score": 0.4,
                                "tool_metrics": {"name_accuracy": 1.0}}
    assert ReviewRequest.from_conf({"request": request.model_dump(mode="json")}) == request
