"""The human review task: only the configured reviewers may decide, within the configured time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

from flywheel.config import load_config

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def test_review_is_assigned_to_the_configured_reviewers():
    cfg = load_config()
    assert cfg.reviewers, "the default configuration names reviewers"
    bag = DagBag(str(DAGS_DIR))
    reviews = [t for dag in bag.dags.values() for t in dag.tasks if t.task_type == "HITLOperator"]
    assert reviews, "no HITL review task found"
    for task in reviews:
        kwargs = task.partial_kwargs if hasattr(task, "partial_kwargs") else task.__dict__
        assert kwargs["assigned_users"] == [{"id": r.id, "name": r.name} for r in cfg.reviewers]
        assert kwargs["response_timeout"] == timedelta(hours=cfg.review_timeout_hours)
        assert kwargs["defaults"] == ["Reject"]
