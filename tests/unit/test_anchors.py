"""The regression guard's data on a real PostgreSQL: the anchor set is frozen at the first
deployment and only grows by review; candidates are checked against the active version and the
baseline on it, and every verdict is recorded."""

from __future__ import annotations

import pytest

from flywheel.adapters import anchors
from flywheel.adapters import postgres as store
from flywheel.regression import GuardBudgets

W = "tool_router"
SLICES = ["get_order_status", "cancel_order"]


def _eval_rows(n=6):
    return [{"id": f"logs.jsonl:{i}", "split": "eval", "label": SLICES[i % 2],
             "request": {"messages": [{"role": "user", "content": f"question {i}"}]},
             "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
             "prompt": f"<user> question {i}\n<assistant>", "completion": f"answer {i}"} for i in range(n)]


def _experiment(conn, run_key, candidate, strategy, item_scores):
    """An experiment of `run_key` whose eval items scored `item_scores` (the evaluations table)."""
    store.execute(conn, "upsert_run", {"run_key": run_key, "dag_id": "d", "airflow_run_id": run_key,
                                       "interval_start": "2026-11-01T00:00:00Z", "interval_end": "2026-11-08T00:00:00Z",
                                       "params": {}})
    key = {"run_key": run_key, "workload_id": W, "candidate": candidate, "strategy": strategy}
    store.execute(conn, "upsert_experiment", {**key, "status": "succeeded", "backend": "local", "gpus": 1})
    store.execute_many(conn, "upsert_evaluation", (
        {**key, "item_id": r["id"], "slice": r["label"], "method": "m", "score": s, "score_vs_prod": s,
         "score_vs_gold": None, "reference_source": "production", "reference": "", "prediction": "p", "failure": None,
         "detail": {}} for r, s in zip(_eval_rows(), item_scores)))
    return key


def _deployment(conn, version, key, status):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO deployments (workload_id, version, candidate, strategy, model_path, run_key, status,"
                    " approved_by) VALUES (%s, %s, %s, %s, 'm', %s, %s, 'alice')",
                    (W, version, key["candidate"], key["strategy"], key["run_key"], status))
    conn.commit()


def _anchor_scores(conn, key, item_scores):
    anchors.store_anchor_scores(conn, key, [{"item_id": r["id"], "slice": r["label"], "score": s}
                                            for r, s in zip(_eval_rows(), item_scores)])


def test_frozen_at_first_deployment_then_extended_only_by_review(flywheel_db):
    key = _experiment(flywheel_db, "run/1", "c", "lora", [0.8] * 6)
    assert anchors.freeze_anchor_set(flywheel_db, workload_id=W, run_key="run/1", candidate="c", strategy="lora",
                                     eval_rows=_eval_rows(), added_by="alice") == 6
    # A second deployment does not move it.
    assert anchors.freeze_anchor_set(flywheel_db, workload_id=W, run_key="run/2", candidate="c", strategy="lora",
                                     eval_rows=_eval_rows(8), added_by="bob") == 0
    rows = anchors.anchor_rows(flywheel_db, W)
    assert [r["id"] for r in rows] == [f"logs.jsonl:{i}" for i in range(6)]
    assert rows[0]["request"]["messages"][0]["content"] == "question 0" and rows[1]["label"] == "cancel_order"
    # The deployed experiment's eval scores are the baseline's anchor scores.
    assert len(store.fetch_all(flywheel_db, "anchor_scores_of_experiment", key)) == 6

    added = anchors.extend_anchor_set(flywheel_db, workload_id=W, run_key="run/2", eval_rows=_eval_rows(8),
                                      item_ids=["logs.jsonl:7", "logs.jsonl:1"], added_by="bob")
    assert added == ["logs.jsonl:7"]  # an item already in the set is not added twice
    with pytest.raises(ValueError, match="not eval items of run/2"):
        anchors.extend_anchor_set(flywheel_db, workload_id=W, run_key="run/2", eval_rows=_eval_rows(8),
                                  item_ids=["logs.jsonl:99"], added_by="bob")
    sources = [(r["item_id"], r["source"], r["added_by"])
               for r in store.fetch_all(flywheel_db, "anchor_items", {"workload_id": W})]
    assert sources[-1] == ("logs.jsonl:7", "review", "bob") and len(sources) == 7
    for sql in ("UPDATE anchor_items SET slice = 'x'", "DELETE FROM anchor_items"):
        with pytest.raises(Exception, match="append-only"):
            with flywheel_db.cursor() as cur:
                cur.execute(sql)
        flywheel_db.rollback()


def test_job_rows_and_predictions_keep_anchor_items_apart():
    rows = anchors.with_anchors(_eval_rows(2), [{**r, "split": "anchor"} for r in _eval_rows(2)])
    assert [(r["id"], r["split"]) for r in rows] == [
        ("logs.jsonl:0", "eval"), ("logs.jsonl:1", "eval"), ("anchor:logs.jsonl:0", "eval"), ("anchor:logs.jsonl:1", "eval")]
    plain, anchored = anchors.split_predictions({"logs.jsonl:0": "a", "anchor:logs.jsonl:0": "b"})
    assert plain == {"logs.jsonl:0": "a"} and anchored == {"logs.jsonl:0": "b"}


def test_guard_checks_active_and_baseline_and_records_verdicts(flywheel_db):
    budgets = GuardBudgets(per_iteration=0.01, cumulative=0.015)
    cand = {"workload_id": W, "candidate": "c", "strategy": "lora"}
    # No deployment yet: nothing to compare with.
    first = anchors.guard_candidate(flywheel_db, cand, budgets, run_key="run/1")
    assert first.passed and "first deployment" in first.reason

    k1 = _experiment(flywheel_db, "run/1", "c", "lora", [0.8] * 6)
    _deployment(flywheel_db, 1, k1, "superseded")
    anchors.freeze_anchor_set(flywheel_db, workload_id=W, run_key="run/1", candidate="c", strategy="lora",
                              eval_rows=_eval_rows(), added_by="alice")
    k2 = _experiment(flywheel_db, "run/2", "c", "lora", [0.8] * 6)
    _anchor_scores(flywheel_db, k2, [0.79] * 6)
    _deployment(flywheel_db, 2, k2, "active")

    # run 3: 0.78 on every anchor item = 0.01 below v2 (within), 0.02 below v1 (over the cumulative budget).
    k3 = _experiment(flywheel_db, "run/3", "c", "lora", [0.9] * 6)
    _anchor_scores(flywheel_db, k3, [0.78] * 6)
    verdict = anchors.guard_candidate(flywheel_db, cand, budgets, run_key="run/3")
    assert not verdict.passed
    assert "first deployed version v1" in verdict.reason and "active version" not in verdict.reason
    # run 4: better than both.
    k4 = _experiment(flywheel_db, "run/4", "c", "lora", [0.9] * 6)
    _anchor_scores(flywheel_db, k4, [0.85] * 6)
    assert anchors.guard_candidate(flywheel_db, cand, budgets, run_key="run/4").passed
    # run 5: not scored on the anchor set at all (fails closed).
    _experiment(flywheel_db, "run/5", "c", "lora", [0.9] * 6)
    assert not anchors.guard_candidate(flywheel_db, cand, budgets, run_key="run/5").passed

    recorded = {r["run_key"]: r for r in (
        {**v, "run_key": rk} for rk in ("run/3", "run/4", "run/5")
        for v in store.fetch_all(flywheel_db, "guard_verdicts_of_run", {"run_key": rk}))}
    assert [recorded[r]["passed"] for r in ("run/3", "run/4", "run/5")] == [False, True, False]
    assert recorded["run/3"]["active_version"] == 2 and recorded["run/3"]["baseline_version"] == 1
    assert recorded["run/3"]["budgets"] == {"per_iteration": 0.01, "cumulative": 0.015}
    failed = [c for c in recorded["run/3"]["checks"] if not c["passed"]]
    assert {(c["against"], c["scope"]) for c in failed} == {
        ("baseline", "anchor set"), ("baseline", "slice get_order_status"), ("baseline", "slice cancel_order")}


def test_a_jobs_answers_on_the_anchor_items_are_scored_apart(flywheel_db, tmp_path):
    """The evaluate step: anchor answers (ids `anchor:...`) get the experiment's own scorer."""
    import json

    from flywheel.config import load_config
    from flywheel.evaluation import Scorer
    from flywheel.experiments import ExperimentSpec

    def router_row(i, tool):
        return {"id": f"logs.jsonl:{i}", "split": "eval", "label": tool,
                "request": {"messages": [{"role": "user", "content": f"order A-{i}"}],
                            "tools": [{"type": "function", "function": {"name": "get_order_status"}},
                                      {"type": "function", "function": {"name": "cancel_order"}}]},
                "response": {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function",
                     "function": {"name": tool, "arguments": json.dumps({"order_id": f"A-{i}"})}}]}}]}}

    rows = [router_row(0, "get_order_status"), router_row(1, "cancel_order"), router_row(2, "cancel_order")]
    anchors.freeze_anchor_set(flywheel_db, workload_id=W, run_key="run/1", candidate="c", strategy="lora",
                              eval_rows=rows, added_by="alice")
    out = tmp_path / "job"
    out.mkdir()
    def call(name, order_id):  # the candidate's raw output, in its family's (hermes) format
        return "<tool_call>" + json.dumps({"name": name, "arguments": {"order_id": order_id}}) + "</tool_call>"

    answers = {"logs.jsonl:9": call("get_order_status", "A-9"),  # this run's own eval item
               "anchor:logs.jsonl:0": call("get_order_status", "A-0"),  # right
               "anchor:logs.jsonl:1": call("get_order_status", "A-1")}  # wrong tool
    (out / "predictions.jsonl").write_text("".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in answers.items()))
    spec = ExperimentSpec(run_key="run/2", workload_id=W, kind="tool_calling", candidate="tiny-lm-1.6m",
                          strategy="lora", dataset_uri="file:///unused")
    n = anchors.score_anchor_predictions(flywheel_db, spec, {"spec": {"output_uri": f"file://{out}"}}, load_config(), Scorer())
    assert n == 2  # logs.jsonl:2 had no answer in this job: left out, not a zero
    scores = {r["item_id"]: r["score"] for r in store.fetch_all(flywheel_db, "anchor_scores_of_experiment", spec.key)}
    assert scores == {"logs.jsonl:0": 1.0, "logs.jsonl:1": pytest.approx(scores["logs.jsonl:1"])}
    assert scores["logs.jsonl:1"] < 0.5
