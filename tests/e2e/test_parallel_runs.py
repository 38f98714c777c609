"""End to end: several flywheel runs at once on the real scheduler, bounded by the GPU pool only.

All at once, on the shared e2e stack (pool `flywheel_gpu` = 2 slots, set by the e2e stack):
- `airflow backfill create --dag-id flywheel_daily` over a past week of logs (7 daily runs);
- the Airflow UI's backfill form, through the REST endpoint it calls (`POST /api/v2/backfills`),
  for `flywheel_weekly` over the same week (1 run);
- the runs the scheduler makes itself once the two DAGs are unpaused (yesterday, last week).
Checked: every backfilled run read exactly its data interval; GPU jobs of different runs ran at
the same time and never more than the pool's slots; and, in yesterday's scheduled daily run, a
workload whose curation fails and an experiment whose evaluation fails (the database refuses
their writes: faults injected from outside the code) fail alone, with their reasons recorded,
while the rest of that run succeeds.
Lean on purpose: the smallest student, zero-shot, 5 eval items, one workload in the backfills.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from flywheel_local import cli, stack

pytestmark = pytest.mark.e2e

DAILY, WEEKLY = "flywheel_daily", "flywheel_weekly"
CONF = {"candidates": ["tiny-lm-0.6m"], "strategies": ["base"], "eval_size": 5, "workloads": ["tool_router"]}
FINAL = ("success", "failed")

FAULTS = """
CREATE OR REPLACE FUNCTION e2e_injected_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.run_key LIKE 'flywheel_daily/scheduled\\_\\_%%' AND NEW.workload_id = TG_ARGV[0] THEN
        RAISE EXCEPTION 'injected fault: % refuses the row of %', TG_TABLE_NAME, NEW.workload_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER e2e_fault_curation BEFORE INSERT OR UPDATE ON datasets
    FOR EACH ROW EXECUTE FUNCTION e2e_injected_fault('support_qa');
CREATE TRIGGER e2e_fault_evaluation BEFORE INSERT OR UPDATE ON experiment_scores
    FOR EACH ROW EXECUTE FUNCTION e2e_injected_fault('invoice_extraction');
"""
NO_FAULTS = """
DROP TRIGGER IF EXISTS e2e_fault_curation ON datasets;
DROP TRIGGER IF EXISTS e2e_fault_evaluation ON experiment_scores;
DROP FUNCTION IF EXISTS e2e_injected_fault();
"""


def _execute(e2e_stack, sql: str) -> None:
    conn = stack.connect_flywheel(e2e_stack.socket_dir)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.commit()
    finally:
        conn.close()


def _past_week() -> datetime:
    """A Sunday whose week ended 8+ days ago: outside the on-demand runs' 7-day window and before
    the week the weekly DAG schedules itself."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    day = today - timedelta(days=15)
    return day - timedelta(days=(day.weekday() + 1) % 7)  # back to Sunday


def _wait_for_runs(api, dag_id: str, expected: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = api.dag_runs(dag_id)
        if len(runs) >= expected and all(r["state"] in FINAL for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id}: {[(r['dag_run_id'], r['state']) for r in runs]}")
        time.sleep(3)


def _max_concurrent(intervals: list[tuple[float, float, str]]) -> int:
    """Most jobs running at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])
    now = best = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def _cross_run_overlaps(intervals: list[tuple[float, float, str]]) -> int:
    """Pairs of jobs of different runs that ran at the same time."""
    return sum(1 for i, (s1, e1, r1) in enumerate(intervals) for s2, e2, r2 in intervals[i + 1:]
               if r1 != r2 and s1 < e2 and s2 < e1)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_backfills_and_scheduled_runs_at_once_within_the_pool(e2e_stack):
    api = e2e_stack.api()
    paths = e2e_stack.paths
    week = _past_week()
    cli.load_demo_logs(e2e_stack.socket_dir, paths, end=week + timedelta(days=7), n_records=2000, days=7)
    for dag_id in (DAILY, WEEKLY):
        api.wait_for_dag(dag_id)
    _execute(e2e_stack, FAULTS)
    try:
        # 1. The CLI backfill of the past week (the DAG is still paused: its runs wait queued).
        env = stack.airflow_env(paths, e2e_stack.socket_dir)
        last = week + timedelta(days=6)
        proc = stack.airflow_cli(env, "backfill", "create", "--dag-id", DAILY, "--from-date", week.date().isoformat(),
                                 "--to-date", last.date().isoformat(), "--max-active-runs", "4",
                                 "--dag-run-conf", json.dumps(CONF), check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        # 2. The UI's backfill form, as it sends it (max active runs raised from the form's 1).
        backfill = api.create_backfill({
            "dag_id": WEEKLY, "from_date": week.isoformat(), "to_date": week.isoformat(), "run_backwards": False,
            "dag_run_conf": CONF, "reprocess_behavior": "none", "max_active_runs": 2, "run_on_latest_version": True,
        })
        assert backfill["dag_id"] == WEEKLY
        # 3. Unpaused, the scheduler starts the backfills and adds its own latest runs.
        for dag_id in (DAILY, WEEKLY):
            api.unpause(dag_id)
        daily_runs = _wait_for_runs(api, DAILY, 8, timeout=1200)
        weekly_runs = _wait_for_runs(api, WEEKLY, 2, timeout=300)
    finally:
        _execute(e2e_stack, NO_FAULTS)
        for dag_id in (DAILY, WEEKLY):
            api._call("PATCH", "dags", dag_id, json={"is_paused": True})

    # Every run succeeded, the one with injected faults included (they failed alone).
    assert all(r["state"] == "success" for r in daily_runs + weekly_runs), [
        (r["dag_run_id"], r["state"]) for r in daily_runs + weekly_runs]
    backfilled = sorted((r for r in daily_runs if r["run_type"] == "backfill"), key=lambda r: r["logical_date"])
    assert [datetime.fromisoformat(r["logical_date"].replace("Z", "+00:00")) for r in backfilled] == [
        week + timedelta(days=i) for i in range(7)]

    # Each backfilled run read exactly its data interval.
    def logs_in(start: datetime, end: datetime) -> int:
        return e2e_stack.rows("SELECT count(*) AS n FROM production_logs WHERE workload_id = 'tool_router' "
                              "AND ts >= %s AND ts < %s", (start, end))[0]["n"]

    daily_n = 0
    for r in backfilled:
        run_key = f"{DAILY}/{r['dag_run_id']}"
        row = e2e_stack.rows("SELECT interval_start, interval_end FROM runs WHERE run_key = %s", (run_key,))[0]
        day = datetime.fromisoformat(r["logical_date"].replace("Z", "+00:00"))
        assert (row["interval_start"], row["interval_end"]) == (day, day + timedelta(days=1))
        dataset = e2e_stack.rows("SELECT n_in FROM datasets WHERE run_key = %s AND workload_id = 'tool_router'",
                                 (run_key,))[0]
        assert dataset["n_in"] == logs_in(day, day + timedelta(days=1)) > 0
        daily_n += dataset["n_in"]
        exp = e2e_stack.rows("SELECT status FROM experiments WHERE run_key = %s", (run_key,))
        assert [e["status"] for e in exp] == ["succeeded"]
    weekly = next(r for r in weekly_runs if r["run_type"] == "backfill")
    weekly_ds = e2e_stack.rows("SELECT n_in FROM datasets WHERE run_key = %s AND workload_id = 'tool_router'",
                               (f"{WEEKLY}/{weekly['dag_run_id']}",))[0]
    assert weekly_ds["n_in"] == logs_in(week, week + timedelta(days=7)) == daily_n  # the same week, once

    # GPU jobs of different runs ran at once, never more than the pool's slots.
    slots = api.pool("flywheel_gpu")["slots"]
    assert slots == 2
    jobs = []
    for dag_id, runs in ((DAILY, daily_runs), (WEEKLY, weekly_runs)):
        for r in runs:
            for ti in api.task_instances(dag_id, r["dag_run_id"]):
                if ti["task_id"].endswith(".gpu_job") and ti["state"] == "success":
                    assert ti["pool"] == "flywheel_gpu" and ti["pool_slots"] == 1
                    jobs.append((_ts(ti["start_date"]), _ts(ti["end_date"]), f"{dag_id}/{r['dag_run_id']}"))
    assert len(jobs) >= 7 + 1 + 2  # the backfills', and the isolation run's two experiments
    most = _max_concurrent(jobs)
    assert most <= slots, f"{most} GPU jobs at once in a pool of {slots}"
    assert most == slots and _cross_run_overlaps(jobs) > 0, (most, jobs)

    # Isolation, in yesterday's scheduled daily run: support_qa's curation and invoice_extraction's
    # evaluation failed alone, with the database's refusal as the reason; tool_router succeeded.
    scheduled = next(r for r in daily_runs if r["run_type"] == "scheduled")
    run_key = f"{DAILY}/{scheduled['dag_run_id']}"
    workloads = {w["workload_id"]: w for w in e2e_stack.rows(
        "SELECT workload_id, selected, curation_error FROM workloads WHERE run_key = %s", (run_key,))}
    assert "injected fault: datasets refuses the row of support_qa" in workloads["support_qa"]["curation_error"]
    assert workloads["tool_router"]["curation_error"] is None
    assert not e2e_stack.rows("SELECT 1 FROM datasets WHERE run_key = %s AND workload_id = 'support_qa'", (run_key,))
    exps = {e["workload_id"]: e for e in e2e_stack.rows(
        "SELECT workload_id, status, error, started_at FROM experiments WHERE run_key = %s", (run_key,))}
    assert set(exps) == {"tool_router", "invoice_extraction"}
    assert exps["tool_router"]["status"] == "succeeded" and exps["tool_router"]["started_at"] is not None
    assert exps["invoice_extraction"]["status"] == "failed"
    assert exps["invoice_extraction"]["error"].startswith("evaluate: ")
    assert "injected fault: experiment_scores refuses the row of invoice_extraction" in exps["invoice_extraction"]["error"]
    tis = {(t["task_id"], t.get("rendered_map_index")): t["state"]
           for t in api.task_instances(DAILY, scheduled["dag_run_id"])}
    assert tis[("publish_leaderboard", None)] == "success"
