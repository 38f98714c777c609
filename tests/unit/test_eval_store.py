"""Evaluation tables on a real PostgreSQL: scores, slices, traffic, gold references, human labels,
calibration, and the leaderboard query that issue 10's review reads."""

from __future__ import annotations

from datetime import datetime, timezone

from flywheel.adapters import postgres as store
from flywheel.adapters import postgres_eval
from flywheel.calibration import calibrate
from flywheel.config import load_config
from flywheel.costs import workload_traffic
from flywheel.evaluation import Scorer, evaluate
from flywheel.gold import request_hash
from flywheel.judge import JudgeItem, JudgeStats, Verdict

from test_evaluation import router_case, spec, tokens  # pytest puts tests/unit on the path

CFG = load_config()


def _setup(conn):
    store.execute(conn, "upsert_run", {"run_key": "r/1", "dag_id": "d", "airflow_run_id": "1",
                                       "interval_start": datetime(2026, 11, 1, tzinfo=timezone.utc),
                                       "interval_end": datetime(2026, 11, 4, tzinfo=timezone.utc),
                                       "params": {"threshold": 0.8}})
    store.execute(conn, "upsert_workload", {"run_key": "r/1", "workload_id": "router", "n_records": 3000,
                                            "selected": True, "reason": None})
    store.execute(conn, "upsert_dataset", {"run_key": "r/1", "workload_id": "router", "kind": "tool_calling",
                                           "n_in": 3000, "n_accepted": 9, "n_quarantined": 0, "n_duplicates": 2991,
                                           "n_eval": 8, "n_train": 1, "n_val": 0, "usable": True, "reason": None,
                                           "pii": {}, "dataset_hash": "h", "uri": "file:///x", "n_over_limit": 0,
                                           "class_counts": {}, "warnings": []})
    key = spec().key
    store.execute(conn, "upsert_experiment", {**key, "status": "succeeded", "backend": "local", "gpus": 1})
    return key


def test_evaluation_round_trip_and_gold_from_the_review(flywheel_db):
    conn = flywheel_db
    key = _setup(conn)
    rows, preds = router_case()
    window = postgres_eval.run_window(conn, "r/1", "router")
    assert window["n_records"] == 3000
    traffic = workload_traffic("router", [r["response"] for r in rows], requests_in_window=3000, window_days=3,
                               prices=CFG.production_prices)
    postgres_eval.save_traffic(conn, "r/1", traffic)
    for r in rows:  # what the review would do (issue 10 calls this function)
        if r["label"] == "track_shipment":
            n = r["id"].split(":")[1]
            postgres_eval.add_gold_reference(conn, workload_id="router", request=r["request"], item_id=r["id"],
                                             reference={"tool_calls": [{"type": "function", "function": {
                                                 "name": "track_shipment", "arguments": f'{{"order_id": "T-{n}"}}'}}]},
                                             author="alice")
    gold = postgres_eval.gold_index(conn, "router")
    assert len(gold) == 4
    ev = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG, scorer=Scorer(), count_tokens=tokens, gold=gold,
                  traffic=traffic)
    for _ in range(2):  # a retried task rewrites, never duplicates
        postgres_eval.save_evaluation(conn, key, ev)
    (lb,) = store.fetch_all(conn, "leaderboard", {"run_key": "r/1"})
    assert lb["score"] == 1.0 and lb["score_vs_prod"] == 0.5 and lb["n_gold"] == 4
    assert lb["worst_slice"] in ("refund", "track_shipment") and lb["tool_metrics"]["exact_match"] == 1.0
    assert lb["requests_per_month"] == 30000 and lb["prod_cost_per_1k"] > lb["cost_per_1k"] > 0
    assert lb["monthly_savings"] > 0 and lb["scorer"] == "deterministic" and lb["judge_kappa"] is None
    slices = store.fetch_all(conn, "experiment_slices_for_run", {"run_key": "r/1"})
    assert sorted(s["slice"] for s in slices) == ["refund", "track_shipment"]
    items = store.fetch_all(conn, "evaluation_items", {**key})
    assert len(items) == 8 and {i["reference_source"] for i in items} == {"gold", "production"}
    # A second correction of the same item replaces the first.
    r4 = rows[4]
    postgres_eval.add_gold_reference(conn, workload_id="router", request_hash_=request_hash(r4["request"]),
                                     reference="no tool needed", author="bob", source="import")
    assert postgres_eval.gold_index(conn, "router").find("nope", r4["request"])["content"] == "no tool needed"


def test_human_labels_and_calibration_are_stored_per_judge(flywheel_db):
    conn = flywheel_db
    items = [JudgeItem(request="q", reference="a b c d", candidate=c) for c in ("a b c d", "a b", "x", "a b c")]
    for item, score in zip(items, (1.0, 0.6, 0.0, 0.9)):
        postgres_eval.add_human_label(conn, item=item, score=score, labeler="alice", workload_id="w")
    postgres_eval.add_human_label(conn, item=items[1], score=0.2, labeler="bob", workload_id="w")
    labels = postgres_eval.human_labels(conn, "w")
    assert len(labels) == 5

    def judge(batch):
        scores = {"a b c d": 1.0, "a b": 0.5, "x": 0.1, "a b c": None}
        return [Verdict(score=scores[i.candidate], failure=None if scores[i.candidate] is not None else "refusal")
                for i in batch], JudgeStats(items=len(batch))

    result = calibrate(labels, judge, pass_mark=0.5)
    assert result.n_items == 4 and result.n_unscored == 1 and result.agreement.n == 3
    assert result.agreement.spearman == 1.0  # judge 1.0 > 0.5 > 0.1 as humans 1.0 > 0.4 (mean) > 0.0
    saved = postgres_eval.save_calibration(conn, judge_model="judge-70b", prompt_version="v1", n=result.agreement.n,
                                           kappa=result.agreement.kappa, spearman=result.agreement.spearman,
                                           pass_mark=0.5, n_unscored=result.n_unscored, note=result.agreement.note)
    assert saved["id"]
    latest = postgres_eval.latest_calibration(conn, "judge-70b", "v1")
    assert latest["n"] == 3 and latest["spearman"] == 1.0
    assert postgres_eval.latest_calibration(conn, "judge-70b", "v2") is None
