"""The evaluate task's wiring without a scheduler: artifacts in, the judge chosen by whether the
`flywheel_judge` connection exists (an AIRFLOW_CONN_ variable here), scores/slices/traffic/cost
out in PostgreSQL. The full DAG run is the e2e test's."""

from __future__ import annotations

import json

import pytest

from flywheel.adapters import airflow_tasks, postgres as store
from flywheel.config import load_config
from flywheel.prompts import eval_item
from flywheel_local.rule_judge import MODEL_ID, RuleJudgeServer

from test_eval_store import _setup  # pytest puts tests/unit on the path
from test_evaluation import hermes, router_case, spec


@pytest.fixture
def job(tmp_path):
    rows, preds = router_case()
    rows[0]["response"]["choices"][0]["message"] = {
        "role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
            "name": "refund", "arguments": json.dumps({"order_id": "A-0", "note": "customer was charged twice today"})}}]}
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    out.mkdir()
    preds["logs.jsonl:0"].output = hermes("refund", order_id="A-0", note="charged twice today")
    (out / "predictions.jsonl").write_text("".join(
        json.dumps({"id": k, "output": p.output, "prompt_tokens": 120, "completion_tokens": 12}) + "\n"
        for k, p in preds.items()))
    (out / "metrics.json").write_text(json.dumps({"train_seconds": 720.0, "generate_seconds": 5.0}))
    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps(eval_item(r)) + "\n" for r in rows))
    experiment = {**spec().to_dict(), "dataset_uri": f"file://{dataset}"}
    return {"experiment": experiment, "gpus": 1, "inputs": {"eval": f"file://{evals}"},
            "outputs": {"predictions": f"file://{out}/predictions.jsonl"}, "spec": {"output_uri": f"file://{out}"}}


def _run(flywheel_db, monkeypatch, job):
    _setup(flywheel_db)

    class Borrowed:  # the task closes its connection; the test keeps the fixture's
        def __getattr__(self, name):
            return getattr(flywheel_db, name)

        def close(self):
            pass

    monkeypatch.setattr(airflow_tasks, "get_conn", lambda: Borrowed())
    return airflow_tasks.evaluate_experiment(job, load_config())


def test_with_the_judge_connection_every_free_text_goes_to_the_judge(flywheel_db, monkeypatch, job):
    with RuleJudgeServer() as judge:
        monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_JUDGE", json.dumps(
            {"conn_type": "http", "host": judge.base_url, "password": "k", "extra": {"model": MODEL_ID}}))
        out = _run(flywheel_db, monkeypatch, job)
        calls = len(judge.completion_requests())
    assert out["scorer"] == "judge" and out["method"] == "tool_call_judged"
    assert calls == 2  # one free-text argument ("note"), both orders
    (row,) = store.fetch_all(flywheel_db, "leaderboard", {"run_key": "r/1"})
    assert row["judge"]["model"] == MODEL_ID and row["judge"]["calls"] == 2
    assert row["tokens_source"] == "measured" and row["avg_prompt_tokens"] == 120
    assert row["training_gpu_seconds"] == 720.0 and row["payback_days"] is not None
    assert row["requests_per_month"] == 30000 and row["status"] == "succeeded"


def test_without_it_the_deterministic_scorers(flywheel_db, monkeypatch, job):
    monkeypatch.delenv("AIRFLOW_CONN_FLYWHEEL_JUDGE", raising=False)
    out = _run(flywheel_db, monkeypatch, job)
    assert out["scorer"] == "deterministic" and out["method"] == "tool_call_exact"
    (row,) = store.fetch_all(flywheel_db, "leaderboard", {"run_key": "r/1"})
    assert row["judge"] is None and row["worst_slice"] == "track_shipment"
