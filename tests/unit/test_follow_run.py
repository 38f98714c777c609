"""`flywheel_local.cli.follow_run`: when it returns, against a scripted sequence of API answers."""

from __future__ import annotations

import pytest

from flywheel_local import cli


class ScriptedApi:
    """Answers dag_run/task_instances from a list of (run state, {task_id: state}) snapshots, one per poll."""

    def __init__(self, snapshots):
        self.snapshots = list(snapshots)
        self.polls = 0

    def _now(self):
        return self.snapshots[min(self.polls, len(self.snapshots) - 1)]

    def dag_run(self, dag_id, run_id):
        return {"state": self._now()[0]}

    def task_instances(self, dag_id, run_id):
        states = self._now()[1]
        self.polls += 1
        return [{"task_id": t, "map_index": -1, "state": s} for t, s in states.items()]


REVIEW_WAITING = ("running", {"publish_leaderboard": "success", "review": "awaiting_input", "deploy_decision": None})
RESUMED = ("running", {"publish_leaderboard": "success", "review": "success", "deploy_decision": "running"})
DONE = ("success", {"publish_leaderboard": "success", "review": "success", "deploy_decision": "success"})


def test_stops_when_only_reviews_are_left():
    api = ScriptedApi([("running", {"gpu_job": "running", "review": None}), REVIEW_WAITING, DONE])
    assert cli.follow_run(api, "d", "r", interval=0) == "awaiting_review"
    assert api.polls == 2


def test_after_the_answers_it_follows_the_run_to_its_end():
    # Right after a reply the review still reads awaiting_input: that must not end the follow.
    api = ScriptedApi([REVIEW_WAITING, REVIEW_WAITING, RESUMED, DONE])
    assert cli.follow_run(api, "d", "r", interval=0, stop_at_review=False) == "success"
    assert api.polls == 4


def test_times_out_with_the_run_state():
    api = ScriptedApi([REVIEW_WAITING])
    with pytest.raises(TimeoutError, match="still running"):
        cli.follow_run(api, "d", "r", interval=0, timeout=0, stop_at_review=False)


class ReviewApi:
    """A run that opened two review runs; the second asks its human one poll later than the first."""

    def __init__(self):
        self.polls = 0
        self.run_key = "flywheel_on_demand/r"

    def task_instances(self, dag_id, run_id):
        return [{"task_id": "request_review", "map_index": i, "state": "success"} for i in range(2)] + [
            {"task_id": "publish_leaderboard", "map_index": -1, "state": "success"}]

    def dag_runs(self, dag_id, conf_contains=None, limit=100):
        self.polls += 1
        runs = [{"dag_run_id": f"review__{i}", "state": "running", "conf": {"request": {"run_key": self.run_key}}}
                for i in range(2)]
        other = {"dag_run_id": "review__other", "state": "running", "conf": {"request": {"run_key": "x/y"}}}
        return runs[: min(self.polls, 2)] + [other]

    def pending_reviews(self, dag_id="~", run_id="~"):
        ids = ["review__0", "review__other"] + (["review__1"] if self.polls >= 3 else [])
        return [{"task_instance": {"dag_id": dag_id, "dag_run_id": i}, "subject": i} for i in ids]


def test_wait_for_reviews_returns_once_every_review_run_of_this_run_waits():
    api = ReviewApi()
    pending = cli.wait_for_reviews(api, "flywheel_on_demand", "r", interval=0)
    assert sorted(p["subject"] for p in pending) == ["review__0", "review__1"]
    assert api.polls == 3
