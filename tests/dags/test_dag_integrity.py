"""DAG integrity: the factory's DAGs import cleanly and have the shape the design promises."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.mappedoperator import MappedOperator
from airflow.timetables.interval import CronDataIntervalTimetable

from flywheel.config import load_config
from flywheel_operators import GPU_POOL

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_IDS = {"flywheel_daily", "flywheel_weekly", "flywheel_on_demand"}
REVIEW_DAG = "flywheel_review"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(str(DAGS_DIR))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_the_three_dags(dagbag):
    assert set(dagbag.dag_ids) == DAG_IDS | {REVIEW_DAG}
    cfg = load_config()
    for dag_id in DAG_IDS:
        dag = dagbag.dags[dag_id]
        assert dag.max_active_runs > 1, "runs must be able to proceed at once"
        assert not dag.catchup
        assert "flywheel" in dag.tags
        schedule = cfg.dags[dag_id].schedule
        if schedule is None:
            assert dag.schedule is None
        else:  # data intervals: a run reads the interval before it fires, a backfilled day that day
            assert isinstance(dag.timetable, CronDataIntervalTimetable), dag.timetable
            assert dag.timetable.summary == CronDataIntervalTimetable(schedule, timezone="UTC").summary
            start = datetime(2026, 11, 15, tzinfo=timezone.utc)
            interval = dag.timetable.infer_manual_data_interval(run_after=start)
            assert interval.end - interval.start == (timedelta(days=1) if schedule == "@daily" else timedelta(weeks=1))


def test_on_demand_params_form(dagbag):
    params = dagbag.dags["flywheel_on_demand"].params
    for name in ("workloads", "candidates", "strategies", "eval_size", "threshold"):
        assert name in params
    assert params["eval_size"] == load_config().dags["flywheel_on_demand"].eval_size
    schema = params.get_param("candidates").schema
    assert set(schema["items"]["enum"]) == set(load_config().candidates)


def _is_mapped(task) -> bool:
    """Mapped itself, or inside a mapped task group (expanded once per group instance)."""
    return isinstance(task, MappedOperator) or task.get_closest_mapped_task_group() is not None


def _task(dag, suffix):
    matches = [t for t in dag.tasks if t.task_id.endswith(suffix)]
    assert matches, f"{dag.dag_id} has no task ending in {suffix}"
    return matches


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_task_shape(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    cfg = load_config()
    ids = set(dag.task_ids)
    for step in ("register_run", "discover_workloads", "curate_workload", "publish_leaderboard", "request_review"):
        assert step in ids
    # The run ends at the review requests: no human step (nothing that waits for days) in a run.
    assert not ({"review", "deploy_decision"} & ids)
    assert dag.get_task("request_review").downstream_task_ids == set()
    # Dynamic task mapping over workloads, over workload x candidate x strategy, over review requests.
    for mapped in ("curate_workload", "request_review"):
        assert isinstance(dag.get_task(mapped), MappedOperator), mapped
    gpu_tasks = _task(dag, ".experiment.gpu_job")
    expected_candidates = set(cfg.candidates) if cfg.dags[dag_id].schedule is None else set(cfg.dags[dag_id].candidates)
    assert len(gpu_tasks) == len(expected_candidates)
    for t in gpu_tasks:
        assert _is_mapped(t)
        assert t.pool == GPU_POOL
        candidate = next(c for c in cfg.candidates.values() if t.task_id == f"candidate_{c.name.replace('-', '_').replace('.', '_')}.experiment.gpu_job")
        assert t.pool_slots == candidate.gpus
        assert t.map_index_template
    for t in _task(dag, ".experiment.prepare_experiment") + _task(dag, ".experiment.evaluate_experiment"):
        assert _is_mapped(t) and t.map_index_template
    # The order of the six steps.
    assert "discover_workloads" in dag.get_task("curate_workload").upstream_task_ids
    assert "publish_leaderboard" in dag.get_task("request_review").upstream_task_ids
    # Failure isolation: a failed curation or experiment is recorded as its own and the rest goes on.
    assert dag.get_task("curate_workload").on_failure_callback
    for t in _task(dag, ".plan"):
        assert t.trigger_rule == "all_done"
    for t in _task(dag, ".experiment.gpu_job"):
        assert t.on_execute_callback and t.on_failure_callback
    for t in _task(dag, ".experiment.evaluate_experiment"):
        assert t.on_failure_callback
    assert dag.get_task("publish_leaderboard").trigger_rule == "all_done"
    for t in _task(dag, ".experiment.evaluate_experiment"):
        assert any(u.endswith(".experiment.gpu_job") for u in t.upstream_task_ids)
    # A candidate's GPU jobs start together once all its experiments are prepared (the pool then
    # takes them in the plan's order); a failed prepare holds up only its own job.
    for t in _task(dag, ".prepared"):
        group = t.task_id.removesuffix(".prepared")
        assert not _is_mapped(t) and t.trigger_rule == "all_done"
        assert t.upstream_task_ids == {f"{group}.experiment.prepare_experiment"}
        assert t.downstream_task_ids == {f"{group}.experiment.gpu_job"}


def test_review_dag_is_one_decision_per_run(dagbag):
    from airflow.providers.standard.operators.hitl import HITLOperator

    from flywheel.review import REVIEW_DAG_ID

    assert REVIEW_DAG == REVIEW_DAG_ID
    dag = dagbag.dags[REVIEW_DAG]
    assert dag.schedule is None  # triggered by the runs' request_review, one run per request
    # Enough open review runs at once that pending humans never queue new reviews behind them.
    assert dag.max_active_runs >= 100
    review = dag.get_task("review")
    assert isinstance(review, HITLOperator) and not isinstance(review, MappedOperator)
    assert review.defaults == ["Reject"] and review.response_timeout.days == 3
    assert dag.get_task("open_review").downstream_task_ids == {"review", "deploy_decision"}
    assert "review" in dag.get_task("deploy_decision").upstream_task_ids
    for dag_id in DAG_IDS:
        trigger = dagbag.dags[dag_id].get_task("request_review")
        assert trigger.partial_kwargs["trigger_dag_id"] == REVIEW_DAG
        assert trigger.partial_kwargs["skip_when_already_exists"] is True
        assert trigger.partial_kwargs["wait_for_completion"] is False


def test_no_cycles(dagbag):
    for dag in dagbag.dags.values():
        # topological_sort raises on a cycle
        assert len(dag.topological_sort()) == len(dag.tasks)


def test_on_demand_gpu_jobs_go_first_then_daily_then_weekly(dagbag):
    weight = {}
    for dag_id in DAG_IDS:
        jobs = _task(dagbag.dags[dag_id], ".experiment.gpu_job")
        assert all(t.weight_rule == "absolute" for t in jobs)
        weight[dag_id] = {t.priority_weight for t in jobs}.pop()
    assert weight["flywheel_on_demand"] > weight["flywheel_daily"] > weight["flywheel_weekly"]


def test_the_kubernetes_backend_builds_the_same_dags(monkeypatch):
    from flywheel_operators.kubernetes import KubernetesGpuJobOperator

    monkeypatch.setenv("FLYWHEEL_GPU_BACKEND", "kubernetes")
    bag = DagBag(str(DAGS_DIR))
    assert bag.import_errors == {} and set(bag.dag_ids) == DAG_IDS | {REVIEW_DAG}
    cfg = load_config()
    for dag_id in DAG_IDS:
        for t in _task(bag.dags[dag_id], ".experiment.gpu_job"):
            assert isinstance(t, KubernetesGpuJobOperator) and t.pool == GPU_POOL
            assert t.namespace == cfg.kubernetes["namespace"] and t.retry_exponential_backoff
            assert t.retries == cfg.kubernetes["retries"] and t.execution_timeout.total_seconds() > 0
            assert t.on_execute_callback and t.on_failure_callback and t.map_index_template
