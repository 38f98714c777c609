"""Failure isolation, at the task adapter: a failed curation, GPU job or evaluation is recorded as
its own failure with the reason (from the task callback, whether or not the task process lived to
run it), `running` is recorded when a job starts, and the leaderboard lists what failed and why.
(The scheduler side, that the rest of the run goes on, is in tests/e2e/test_parallel_runs.py.)"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from flywheel.adapters import airflow_tasks as tasks
from flywheel.adapters import postgres as store
from flywheel.report import render_failures

RUN = "flywheel_on_demand/manual__iso"
KEY = {"run_key": RUN, "workload_id": "support_qa", "candidate": "tiny-lm-1.6m", "strategy": "lora"}
JOB = {"experiment": {**KEY, "kind": "chat", "dataset_uri": "file:///d", "training_profile": None},
       "outputs": {"predictions": "file:///a/runs/r/experiments/e/predictions.jsonl"}, "name": "support_qa · tiny · lora"}


@pytest.fixture
def db(flywheel_db, monkeypatch):
    driver = type(flywheel_db).__module__.split(".")[0]
    dsn = flywheel_db.dsn if driver == "psycopg2" else flywheel_db.info.dsn
    monkeypatch.setattr(tasks, "get_conn", lambda: importlib.import_module(driver).connect(dsn))
    store.execute(flywheel_db, "upsert_run", {"run_key": RUN, "dag_id": "flywheel_on_demand", "airflow_run_id": "m",
                                              "interval_start": "2026-11-01T00:00:00+00:00",
                                              "interval_end": "2026-11-02T00:00:00+00:00", "params": {}})
    for w in ("support_qa", "tool_router"):
        store.execute(flywheel_db, "upsert_workload", {"run_key": RUN, "workload_id": w, "n_records": 100,
                                                       "selected": True, "reason": None})
    for strategy in ("base", "lora"):
        store.execute(flywheel_db, "upsert_experiment", {**KEY, "strategy": strategy, "status": "planned",
                                                         "backend": "local", "gpus": 1})
    return flywheel_db


def _rows(conn, sql, params=()):
    with store.transaction(conn) as cur:
        cur.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


class FakeTI:
    """A task instance whose upstream XComs are given (what a callback run outside the task sees)."""

    def __init__(self, map_index: int, xcoms: dict):
        self.map_index, self.xcoms = map_index, xcoms

    def xcom_pull(self, task_ids, map_indexes=None):
        value = self.xcoms[task_ids]
        return value[map_indexes] if map_indexes is not None and isinstance(value, list) else value


def _context(task, ti=None, exc=None):
    return {"task": task, "ti": ti or FakeTI(0, {}), "exception": exc}


def test_a_failed_gpu_job_marks_only_its_experiment_with_the_reason(db):
    gpu_task = SimpleNamespace(task_id="candidate_tiny.experiment.gpu_job", job=JOB)
    tasks.on_job_start(_context(gpu_task))
    exp = _rows(db, "SELECT status, started_at FROM experiments WHERE strategy = 'lora'")[0]
    assert exp["status"] == "running" and exp["started_at"] is not None
    tasks.on_job_failure(_context(gpu_task, exc=RuntimeError("trainer exited with -9: OOMKilled")))
    rows = {r["strategy"]: r for r in _rows(db, "SELECT strategy, status, error FROM experiments")}
    assert rows["lora"]["status"] == "failed"
    assert rows["lora"]["error"] == "gpu_job: RuntimeError: trainer exited with -9: OOMKilled"
    assert rows["base"]["status"] == "planned" and rows["base"]["error"] is None  # untouched


def test_a_failed_evaluation_is_recorded_even_when_the_task_process_died(db):
    # The callback of a killed task has no resolved arguments: the job is read from prepare_experiment's XCom.
    evaluate = SimpleNamespace(task_id="candidate_tiny.experiment.evaluate_experiment", op_kwargs={})
    ti = FakeTI(1, {"candidate_tiny.experiment.prepare_experiment": [{"experiment": {}}, JOB]})
    tasks.on_evaluation_failure(_context(evaluate, ti, exc="Task was killed (SIGKILL)"))
    failed = _rows(db, "SELECT strategy, status, error FROM experiments WHERE status = 'failed'")
    assert failed == [{"strategy": "lora", "status": "failed", "error": "evaluate: Task was killed (SIGKILL)"}]


def test_a_failed_curation_is_recorded_for_its_workload_only(db):
    plan = {"run_key": RUN}
    curate = SimpleNamespace(task_id="curate_workload", op_kwargs={"plan": plan, "target": {"workload_id": "support_qa"}})
    tasks.on_curation_failure(_context(curate, exc=ValueError("database refused the dataset")))
    # ... and from XComs when the arguments are not resolved (task process gone).
    bare = SimpleNamespace(task_id="curate_workload", op_kwargs={})
    ti = FakeTI(1, {"register_run": plan, "discover_workloads": [{"workload_id": "support_qa"},
                                                                  {"workload_id": "tool_router"}]})
    tasks.on_curation_failure(_context(bare, ti, exc=TimeoutError("scan timed out")))
    errors = {r["workload_id"]: r["curation_error"] for r in _rows(db, "SELECT workload_id, curation_error FROM workloads")}
    assert errors == {"support_qa": "curate: ValueError: database refused the dataset",
                      "tool_router": "curate: TimeoutError: scan timed out"}
    # A retry that succeeded clears it.
    store.execute(db, "record_curation_error", {"run_key": RUN, "workload_id": "tool_router", "error": None})
    failures = tasks.run_failures(RUN)
    assert [(f["workload_id"], f["stage"]) for f in failures] == [("support_qa", "curate")]


def test_the_leaderboard_lists_every_failure_with_its_reason(db):
    gpu_task = SimpleNamespace(task_id="g.experiment.gpu_job", job=JOB)
    tasks.on_job_failure(_context(gpu_task, exc=RuntimeError("image pull failed:\nErrImagePull")))
    curate = SimpleNamespace(task_id="curate_workload",
                             op_kwargs={"plan": {"run_key": RUN}, "target": {"workload_id": "tool_router"}})
    tasks.on_curation_failure(_context(curate, exc=OSError("disk full")))
    failures = tasks.run_failures(RUN)
    assert [(f["workload_id"], f["candidate"], f["stage"]) for f in failures] == [
        ("support_qa", "tiny-lm-1.6m", "gpu_job"), ("tool_router", None, "curate")]
    text = render_failures(failures)
    assert "Failed (2; the rest of the run went on without them)" in text
    assert "support_qa · tiny-lm-1.6m · lora: gpu_job: RuntimeError: image pull failed: ErrImagePull" in text
    assert "tool_router: curate: OSError: disk full" in text
