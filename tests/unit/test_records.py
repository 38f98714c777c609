"""Untrusted records: every malformed kind is rejected with the right reason and a usable message."""

from __future__ import annotations

import gzip
import io
import json
import random
from datetime import datetime, timezone

import pytest

from flywheel_local.demo_data import MALFORMED_KINDS, generate_logs, malform
from flywheel.records import (
    REASONS, LogRecord, Rejection, class_label, nesting_depth, parse_line, parse_obj, parse_timestamp,
)


@pytest.fixture(scope="module")
def demo() -> list[dict]:
    lines = generate_logs(n_records=300, seed=5, duplicate_rate=0, malformed_rate=0)
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def router(demo) -> dict:
    return next(r for r in demo if r["workload_id"] == "tool_router")


def _with(record: dict, path: str, value) -> str:
    """The record as a line, with the dotted ``path`` set to ``value`` (or deleted if value is ...)."""
    obj = json.loads(json.dumps(record))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = obj
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return json.dumps(obj)


def _rejected(line: str, source_id: str = "logs.jsonl:7", **kwargs) -> Rejection:
    result = parse_line(source_id, line, **kwargs)
    assert isinstance(result, Rejection), result
    assert result.reason in REASONS
    assert result.detail.startswith(f"record {source_id}")  # names the record
    if result.field:
        assert f"'{result.field}'" in result.detail  # and the field
    return result


def test_good_records_of_every_workload_parse(demo):
    by_workload = {r["workload_id"]: r for r in demo}
    assert set(by_workload) == {"tool_router", "support_qa", "invoice_extraction", "sql_helper"}
    for raw in by_workload.values():
        record = parse_line("f:1", json.dumps(raw))
        assert isinstance(record, LogRecord)
        assert record.workload_id == raw["workload_id"] and record.client_id == raw["client_id"]
        assert record.timestamp.utcoffset().total_seconds() == 0
        assert record.assistant_message == raw["response"]["choices"][0]["message"]
    assert parse_line("f", json.dumps(by_workload["tool_router"])).kind == "tool_calling"
    assert parse_line("f", json.dumps(by_workload["invoice_extraction"])).kind == "json_extraction"
    assert parse_line("f", json.dumps(by_workload["support_qa"])).kind == "chat"


@pytest.mark.parametrize("kind", list(MALFORMED_KINDS))
def test_every_malformed_demo_kind_is_rejected_with_its_reason(router, kind):
    for seed in range(5):  # each kind has random variants (truncation point, hostile id, ...)
        result = _rejected(malform(router, random.Random(seed), kind))
        assert (result.reason, result.field) == MALFORMED_KINDS[kind]


@pytest.mark.parametrize("workload_id", [
    "../../etc/passwd", "x'; DROP TABLE runs;--", "tool_router; rm -rf /", "a b", "", "-x", "_x", ".hidden",
    "a" * 65, "tool_router\n", "tool/router", 'say"hi', "wörk", 42, ["tool_router"],
])
def test_hostile_workload_ids_are_rejected_not_sanitised(router, workload_id):
    result = _rejected(_with(router, "workload_id", workload_id))
    assert (result.reason, result.field) == ("invalid_workload_id", "workload_id")
    assert "letters, digits" in result.detail  # says what is allowed


@pytest.mark.parametrize("workload_id", ["tool_router", "a", "A1.b-c_d", "9lives", "a" * 64])
def test_valid_workload_ids(router, workload_id):
    assert isinstance(parse_line("f", _with(router, "workload_id", workload_id)), LogRecord)


@pytest.mark.parametrize("client_id", ["has space", "", "tab\there", "é", "x" * 129, 7])
def test_invalid_client_ids(router, client_id):
    assert _rejected(_with(router, "client_id", client_id)).reason == "invalid_client_id"


def test_missing_and_null_fields(router):
    for name in ("timestamp", "workload_id", "client_id", "request", "response"):
        for line in (_with(router, name, ...), _with(router, name, None)):
            result = _rejected(line)
            assert (result.reason, result.field) == ("missing_field", name)


def test_not_an_object_and_invalid_json():
    for line in ("[1, 2]", '"a string"', "42", "null"):
        assert _rejected(line).reason == "not_an_object"
    for line in ("", "{", '{"a": 1} trailing', "{'single': 'quotes'}", "[" * 100000):
        assert _rejected(line, max_bytes=10**6).reason == "invalid_json"


def test_nan_and_lone_surrogates_are_invalid_json(router):
    assert _rejected(_with(router, "response.usage.prompt_tokens", float("nan"))).reason == "invalid_json"
    line = _with(router, "request.messages.1.content", "broken \ud800 text")
    assert "\\ud800" in line
    assert _rejected(line).reason == "invalid_json"


def test_size_and_depth_caps(router):
    line = json.dumps(router)
    assert _rejected(line, max_bytes=100).reason == "too_large"
    assert "over the 100-byte limit" in _rejected(line, max_bytes=100).detail
    assert isinstance(parse_line("f", line, max_bytes=len(line.encode())), LogRecord)
    deep = {"type": "text", "text": "x", "extra": json.loads("[" * 80 + "]" * 80)}
    assert _rejected(_with(router, "request.messages.1.content", [deep])).reason == "too_large"


@pytest.mark.parametrize("path, value, field", [
    ("request.messages", [], "request.messages"),
    ("request.messages", "hello", "request.messages"),
    ("request.messages", ["hello"], "request.messages[0]"),
    ("request.messages.1.role", "hacker", "request.messages[1].role"),
    ("request.messages.1.role", ..., "request.messages[1].role"),
    ("request.messages.1.content", 42, "request.messages[1].content"),
    ("request.messages.1.content", {"text": "hi"}, "request.messages[1].content"),
    ("request.messages.1.content", ["hi"], "request.messages[1].content"),
])
def test_invalid_messages(router, path, value, field):
    result = _rejected(_with(router, path, value))
    assert (result.reason, result.field) == ("invalid_messages", field)


@pytest.mark.parametrize("path, value, field", [
    ("request", "where is my order", "request"),
    ("request.tools", {"name": "f"}, "request.tools"),
    ("request.tools.0.function.name", "bad name; rm", "request.tools[0].function.name"),
    ("request.tools.0", "get_order_status", "request.tools[0].function.name"),
])
def test_invalid_requests(router, path, value, field):
    result = _rejected(_with(router, path, value))
    assert (result.reason, result.field) == ("invalid_request", field)


CALL = "response.choices.0.message.tool_calls.0.function"


@pytest.mark.parametrize("path, value, field", [
    ("response", "ok", "response"),
    ("response.choices", [], "response.choices"),
    ("response.choices.0", "ok", "response.choices"),
    ("response.choices.0.message", ..., "response.choices[0].message"),
    (CALL + ".arguments", {"order_id": "A-1"}, "response.choices[0].message.tool_calls[0].function.arguments"),
    (CALL + ".arguments", "[1, 2]", "response.choices[0].message.tool_calls[0].function.arguments"),
    (CALL + ".arguments", ..., "response.choices[0].message.tool_calls[0].function.arguments"),
    (CALL + ".name", "", "response.choices[0].message.tool_calls[0].function.name"),
    (CALL + ".name", "rm -rf", "response.choices[0].message.tool_calls[0].function.name"),
    ("response.choices.0.message.tool_calls", "call it", "response.choices[0].message.tool_calls"),
])
def test_invalid_responses(router, path, value, field):
    result = _rejected(_with(router, path, value))
    assert (result.reason, result.field) == ("invalid_response", field)


def test_content_answers_need_text(demo):
    support = next(r for r in demo if r["workload_id"] == "support_qa")
    for content in ("", "   ", None, 42):
        result = _rejected(_with(support, "response.choices.0.message.content", content))
        assert (result.reason, result.field) == ("invalid_response", "response.choices[0].message.content")


def test_parse_obj_takes_decoded_objects(router):
    assert isinstance(parse_obj("f", json.loads(json.dumps(router))), LogRecord)
    assert parse_obj("f", None).reason == "not_an_object"


def test_timestamps_iso_with_a_zone_or_epoch_seconds_or_milliseconds():
    assert parse_timestamp("2026-11-24T10:00:00Z").isoformat() == "2026-11-24T10:00:00+00:00"
    assert parse_timestamp("2026-11-24T11:00:00+01:00").hour == 10
    assert parse_timestamp("2026-11-24T10:00:00") is None
    assert parse_timestamp("2026-11-24") is None
    assert parse_timestamp("yesterday") is None
    expected = datetime(2026, 11, 24, 10, tzinfo=timezone.utc)
    # The blueprint's integer epoch seconds; milliseconds; floats; numeric strings.
    for value in (1795514400, 1795514400000, 1795514400.0, 1795514400000.0, "1795514400", "1795514400000"):
        assert parse_timestamp(value) == expected, value
    assert parse_timestamp(1795514400.25) == expected.replace(microsecond=250000)
    for value in (True, None, [1], {"s": 1}, float("nan"), float("inf"), "1e9", ""):
        assert parse_timestamp(value) is None, value


@pytest.mark.parametrize("value, reason", [
    ("2026-11-24 10:00:00", "invalid_timestamp"), (True, "invalid_timestamp"), ("yesterday", "invalid_timestamp"),
    (-1, "timestamp_out_of_range"), ("1969-12-31T23:59:59Z", "timestamp_out_of_range"),
    ("2100-01-01T00:00:00Z", "timestamp_out_of_range"), (1764000000123456, "timestamp_out_of_range"),
    (10**30, "timestamp_out_of_range"), ("0001-01-01T00:00:00+05:00", "invalid_timestamp"),
    ("9999-12-31T23:59:59Z", "timestamp_out_of_range"),
])
def test_bad_and_out_of_range_timestamps_are_quarantined(router, value, reason):
    result = _rejected(_with(router, "timestamp", value))
    assert (result.reason, result.field) == (reason, "timestamp")


def test_request_and_response_as_json_strings(router):
    obj = json.loads(json.dumps(router))
    obj["request"], obj["response"] = json.dumps(obj["request"]), json.dumps(obj["response"])
    record = parse_line("f:1", json.dumps(obj))
    assert isinstance(record, LogRecord) and record.request == router["request"] and record.response == router["response"]
    assert record.to_dict()["request"] == router["request"]  # stored as objects
    for field, bad in (("request", "not json"), ("request", "[1, 2]"), ("response", "{")):
        result = _rejected(_with(router, field, bad))
        assert result.field == field and "string" in result.detail


def test_the_blueprint_record_keeps_client_id_and_extra_fields(router):
    obj = {**json.loads(json.dumps(router)), "timestamp": 1795514400, "client_id": "aiva-1", "labels": {"intent": "x"}}
    record = parse_line("f:1", json.dumps(obj))
    assert record.client_id == "aiva-1" and record.extra == {"labels": {"intent": "x"}}
    assert record.to_dict()["timestamp"] == "2026-11-24T10:00:00Z" and record.to_dict()["labels"] == {"intent": "x"}


def test_nesting_depth():
    assert nesting_depth(1) == 0 and nesting_depth([]) == 1 and nesting_depth({"a": [{"b": 1}]}) == 3
    assert nesting_depth(json.loads("[" * 500 + "]" * 500)) == 500


def test_class_labels(demo):
    labels: dict[str, set] = {}
    for obj in demo:
        record = parse_line("f", json.dumps(obj))
        labels.setdefault(obj["workload_id"], set()).add(class_label(record))
    assert labels["support_qa"] == labels["sql_helper"] == {"text"}
    assert labels["invoice_extraction"] == {"json"}
    assert labels["tool_router"] == {"get_order_status", "cancel_order", "track_shipment", "request_refund",
                                     "update_shipping_address"}


def test_a_tool_request_answered_without_a_call_is_labelled_no_call(router):
    line = _with(router, "response.choices.0.message", {"role": "assistant", "content": "Sorry, which order?"})
    assert class_label(parse_line("f", line)) == "no_call"
