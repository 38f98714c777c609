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
