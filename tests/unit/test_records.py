"""Untrusted records: every malformed kind is rejected with the right reason and a usable message."""

from __future__ import annotations

import json

import pytest

from flywheel.demo_data import _malformed, generate_logs
from flywheel.records import REASONS, LogRecord, Rejection, class_label, parse_line, parse_timestamp


@pytest.fixture(scope="module")
def good() -> dict:
    return json.loads(generate_logs(n_records=50, seed=1, duplicate_rate=0, malformed_rate=0)[0])


def test_a_good_record_parses(good):
    record = parse_line("f:1", json.dumps(good))
    assert isinstance(record, LogRecord)
    assert record.workload_id == good["workload_id"]
    assert record.timestamp.tzinfo is not None


@pytest.mark.parametrize("kind, reason, field", [
    ("truncated_json", "invalid_json", ""),
    ("missing_workload_id", "missing_field", "workload_id"),
    ("bad_timestamp", "invalid_timestamp", "timestamp"),
    ("injection_workload_id", "invalid_workload_id", "workload_id"),
    ("response_without_choices", "invalid_response", "response.choices"),
    ("messages_not_a_list", "invalid_messages", "request.messages"),
])
def test_malformed_kinds_are_rejected_with_reason(good, kind, reason, field):
    import random

    result = parse_line("logs.jsonl:7", _malformed(good, random.Random(0), kind))
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == (reason, field)
    assert result.reason in REASONS
    assert result.detail.startswith("record logs.jsonl:7")  # names the record
    if field:
        assert f"'{field}'" in result.detail  # and the field


def test_bad_tool_arguments_are_rejected():
    line = generate_logs(n_records=200, seed=3, duplicate_rate=0, malformed_rate=0)
    router = next(json.loads(l) for l in line if '"tool_router"' in l)
    router["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{order_id: A-1"
    result = parse_line("x:1", json.dumps(router))
    assert isinstance(result, Rejection) and result.reason == "invalid_response"
    assert result.field.endswith("function.arguments")


@pytest.mark.parametrize("workload_id", ["../../etc/passwd", "x'; DROP TABLE runs;--", "a b", "", "-x", "a" * 65, 42])
def test_hostile_workload_ids_are_rejected_not_sanitised(good, workload_id):
    result = parse_line("f:2", json.dumps({**good, "workload_id": workload_id}))
    assert isinstance(result, Rejection) and result.reason == "invalid_workload_id"


def test_size_cap(good):
    result = parse_line("f:3", json.dumps(good), max_bytes=100)
    assert isinstance(result, Rejection) and result.reason == "too_large"


def test_not_an_object_and_missing_fields(good):
    assert parse_line("f:4", "[1, 2]").reason == "not_an_object"
    for name in ("timestamp", "client_id", "request", "response"):
        obj = dict(good)
        del obj[name]
        r = parse_line("f:5", json.dumps(obj))
        assert (r.reason, r.field) == ("missing_field", name)


def test_timestamps_need_a_zone():
    assert parse_timestamp("2026-11-24T10:00:00Z").isoformat() == "2026-11-24T10:00:00+00:00"
    assert parse_timestamp("2026-11-24T11:00:00+01:00").hour == 10
    assert parse_timestamp("2026-11-24T10:00:00") is None
    assert parse_timestamp(1732500000) is None


def test_class_labels():
    lines = [json.loads(l) for l in generate_logs(n_records=300, seed=5, duplicate_rate=0, malformed_rate=0)]
    labels = {}
    for obj in lines:
        rec = parse_line("f", json.dumps(obj))
        labels.setdefault(obj["workload_id"], set()).add(class_label(rec))
    assert labels["support_qa"] == {"text"}
    assert labels["invoice_extraction"] == {"json"}
    assert labels["tool_router"] == {"get_order_status", "cancel_order", "track_shipment", "request_refund",
                                     "update_shipping_address"}
