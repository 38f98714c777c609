"""`flywheel gold export|import` and `flywheel judge calibrate` on a real PostgreSQL, the last
against the local OpenAI-compatible rule judge over HTTP."""

from __future__ import annotations

import json

import pytest

from flywheel.adapters import postgres as store
from flywheel.adapters import postgres_eval
from flywheel.adapters.judge_client import JudgeClient, endpoint_from_connection
from flywheel.adapters.postgres_eval import PostgresJudgeCache
from flywheel.config import JudgeSettings
from flywheel.gold import parse_gold_line
from flywheel_local.cli import calibrate_judge, export_gold_items, import_gold
from flywheel_local.rule_judge import MODEL_ID, RuleJudgeServer

from test_evaluation import router_case  # pytest puts tests/unit on the path
from test_eval_store import _setup


def test_export_then_import_round_trip(flywheel_db, tmp_path):
    conn = flywheel_db
    _setup(conn)
    rows, _ = router_case()
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with store.transaction(conn) as cur:
        cur.execute("UPDATE datasets SET uri = %s", (f"file://{dataset}",))
    items = export_gold_items(conn, "router")
    assert len(items) == 8 and all(i["request"] and i["reference"] for i in items)
    for item in items:  # the reviewer corrects the tracking slice
        if item["slice"] == "track_shipment":
            item["reference"]["tool_calls"][0]["function"]["name"] = "track_shipment"
    lines = [json.dumps(i) for i in items if i["slice"] == "track_shipment"]
    lines += ["", "not json", json.dumps({"workload_id": "../etc", "request": {}, "reference": "x"}),
              json.dumps({"workload_id": "router", "reference": "x"}),
              json.dumps({"workload_id": "router", "request": {"m": 1}, "reference": 42})]
    stored, errors = import_gold(conn, lines, author="alice")
    assert stored == 4 and len(errors) == 4
    assert errors[0].startswith("line 6: not valid JSON")
    assert "workload_id" in errors[1] and "request_hash" in errors[2] and "reference must be" in errors[3]
    gold = postgres_eval.gold_index(conn, "router")
    assert len(gold) == 4 and gold.find(rows[4]["id"], {})["tool_calls"][0]["function"]["name"] == "track_shipment"
    with pytest.raises(SystemExit, match="no usable dataset"):
        export_gold_items(conn, "nope")


def test_gold_line_accepts_plain_text_and_messages():
    text = parse_gold_line(json.dumps({"workload_id": "w", "request": {"a": 1}, "reference": "Paris."}),
                           line_no=1, author="a")
    assert text.reference == {"role": "assistant", "content": "Paris."} and text.source == "import"


def test_calibrate_against_the_rule_judge(flywheel_db):
    labels = [
        {"request": "q", "reference": "the parcel ships on friday", "candidate": "the parcel ships on friday", "score": 10},
        {"request": "q", "reference": "the parcel ships on friday", "candidate": "the parcel ships monday", "score": 6},
        {"request": "q", "reference": "the parcel ships on friday", "candidate": "bananas", "score": 0},
        {"request": "q", "reference": "the parcel ships on friday", "candidate": "it ships friday", "score": 7,
         "labeler": "bob"},
        {"request": "q", "reference": "r", "candidate": "@@refuse@@", "score": 5},
        {"request": "q", "reference": "r", "candidate": "c", "score": 11},
    ]
    lines = [json.dumps(x) for x in labels]
    with RuleJudgeServer() as srv:
        client = JudgeClient(endpoint_from_connection(host=srv.base_url, extra={"model": MODEL_ID}),
                             JudgeSettings(max_retries=0), PostgresJudgeCache(flywheel_db))
        out = calibrate_judge(flywheel_db, lines, client=client, labeler="alice", pass_mark=0.5)
        again = calibrate_judge(flywheel_db, [], client=client, labeler="alice", pass_mark=0.5)
    assert out["errors"] == ["line 6: score must be a number of rubric points from 0 to 10"]
    assert out["n"] == 4 and out["n_unscored"] == 1  # the refusal is counted, not scored 0
    # rule judge: 10, 5, 0, round(10 * 2/6) = 3 -> pass/fail 1 1 0 0 vs humans 1 1 0 1
    assert out["kappa"] == pytest.approx(0.5) and out["spearman"] == pytest.approx(0.8)
    assert again["cached"] == again["judge_calls"] == 10  # the second calibration makes no call
    latest = postgres_eval.latest_calibration(flywheel_db, MODEL_ID, "v1")
    assert latest["n"] == 4 and latest["kappa"] == pytest.approx(0.5)
