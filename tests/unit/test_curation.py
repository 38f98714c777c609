"""Curation on the real demo data: counts add up (checked against an independent count), the
splits are disjoint, class-balanced and deterministic; edge cases on small synthetic sets."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from flywheel.curation import curate
from flywheel_local.demo_data import generate_logs
from flywheel.pii import redact_text
from flywheel.records import LogRecord, Rejection, class_label, parse_line

END = datetime(2026, 11, 20, tzinfo=timezone.utc)
ROUTER_TOOLS = ("get_order_status", "cancel_order", "track_shipment", "request_refund", "update_shipping_address")


@pytest.fixture(scope="module")
def demo_by_workload() -> dict[str, list[tuple[str, str]]]:
    """(source ref, raw line) per workload, as the log source hands them to curation."""
    by_workload: dict[str, list[tuple[str, str]]] = {}
    for i, line in enumerate(generate_logs(end=END), start=1):
        try:
            workload_id = json.loads(line).get("workload_id")
        except ValueError:
            continue  # no workload to route it to: quarantined at ingest, never curated
        if isinstance(workload_id, str):
            by_workload.setdefault(workload_id, []).append((f"demo.jsonl:{i}", line))
    return by_workload


@pytest.fixture(scope="module")
def router_items(demo_by_workload):
    return demo_by_workload["tool_router"]


def _curate(items, **kwargs):
    return curate((parse_line(ref, line) for ref, line in items), **kwargs)


@pytest.mark.parametrize("workload", ["tool_router", "support_qa", "invoice_extraction", "sql_helper"])
def test_counts_add_up_on_the_demo_data(demo_by_workload, workload):
    items = demo_by_workload[workload]
    result = _curate(items)
    # Independent count: a line is valid or not; valid lines that are byte-identical are duplicates
    # (the demo's duplicates are client retries logging the same line twice).
    valid = [line for ref, line in items if isinstance(parse_line(ref, line), LogRecord)]
    assert result.n_in == len(items)
    assert result.n_quarantined == len(items) - len(valid) == len(result.quarantine)
    assert result.n_quarantined > 0 or workload == "sql_helper"  # malformed lines land in every big workload
    assert result.n_accepted == len(set(valid))
    assert result.n_duplicates == len(valid) - len(set(valid))
    assert result.n_in == result.n_accepted + result.n_quarantined + result.n_duplicates
    assert sum(result.split_sizes.values()) == result.n_accepted
    assert all(isinstance(q, Rejection) for q in result.quarantine)


def test_demo_totals(demo_by_workload):
    """Known by construction: the demo's 72 duplicates are copies of valid records, and of its 48
    malformed lines (6 per kind) the ones that still name a real workload are quarantined here."""
    results = [_curate(demo_by_workload[w]) for w in ("tool_router", "support_qa", "invoice_extraction", "sql_helper")]
    assert sum(r.n_duplicates for r in results) == 72
    reasons = Counter(q.reason for r in results for q in r.quarantine)
    # bad timestamp; response without choices, bad tool arguments, empty answer; messages not a list
    assert reasons == {"invalid_timestamp": 6, "invalid_response": 18, "invalid_messages": 6}
    assert all(r.usable for r in results[:3]) and results[3].n_accepted < 50


def test_splits_are_disjoint_balanced_and_stratified(router_items):
    result = _curate(router_items, eval_size=20, val_ratio=0.1, seed=42)
    ids = {s: [r.source_id for r in getattr(result, s)] for s in ("eval", "train", "val")}
    assert all(len(v) == len(set(v)) for v in ids.values())
    assert not (set(ids["eval"]) & set(ids["train"]) or set(ids["eval"]) & set(ids["val"])
                or set(ids["train"]) & set(ids["val"]))
    assert result.usable and result.reason is None and not result.warnings
    assert result.split_sizes == {"eval": 20, "train": result.n_accepted - 20 - result.n_val,
                                  "val": round((result.n_accepted - 20) * 0.1)}
    # Class-balanced eval although the traffic is skewed: 5 tools, 20 items -> 4 each.
    assert result.label_counts("eval") == {tool: 4 for tool in ROUTER_TOOLS}
    # Stratified validation: each class within one record of its share of the rest.
    assert result.val_stratified
    rest = result.label_counts("train") + result.label_counts("val")
    for tool, n in rest.items():
        assert abs(result.label_counts("val")[tool] - n * result.n_val / sum(rest.values())) <= 1


def test_split_is_deterministic_and_independent_of_input_order(router_items):
    result = _curate(router_items, seed=42)
    again = _curate(list(reversed(router_items)), seed=42)
    assert again.dataset_hash == result.dataset_hash
    assert again.to_rows() == result.to_rows()
    other = _curate(router_items, seed=7)
    assert other.dataset_hash != result.dataset_hash
    assert other.n_accepted == result.n_accepted


def test_pii_is_redacted_before_anything_is_kept(demo_by_workload):
    for workload in ("tool_router", "support_qa"):
        result = _curate(demo_by_workload[workload])
        assert result.pii["email"] > 0 and result.pii["phone"] > 0
        rows = result.to_rows()
        text = json.dumps(rows)
        assert "@example.com" not in text and "<EMAIL>" in text and "<PHONE>" in text
        assert all(redact_text(r["prompt"] + " " + r["completion"]) == (r["prompt"] + " " + r["completion"], {})
                   for r in rows)


def test_rows_carry_prompt_completion_and_label(router_items):
    result = _curate(router_items)
    rows = result.to_rows()
    assert [r["split"] for r in rows] == ["eval"] * 20 + ["train"] * result.n_train + ["val"] * result.n_val
    assert set(rows[0]) == {"id", "split", "label", "request", "response", "prompt", "completion"}
    assert all(r["prompt"].endswith("\n<assistant>") and r["completion"].startswith(f"call {r['label']} ")
               for r in rows)


# ---------------------------------------------------------------- small synthetic sets

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _record(i: int, label: str, *, source_id: str | None = None, minutes: int | None = None) -> LogRecord:
    """A tool_router-like record whose first call is ``label``."""
    call = {"id": "c", "type": "function", "function": {"name": label, "arguments": json.dumps({"n": i})}}
    return LogRecord(
        source_id=source_id or f"s:{i}", timestamp=T0 + timedelta(minutes=i if minutes is None else minutes),
        workload_id="w", client_id="c",
        request={"messages": [{"role": "user", "content": f"request {i}"}],
                 "tools": [{"type": "function", "function": {"name": label}}]},
        response={"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]},
    )


def _records(counts: dict[str, int]) -> list[LogRecord]:
    out, i = [], 0
    for label, n in counts.items():
        for _ in range(n):
            out.append(_record(i, label))
            i += 1
    return out


def test_the_earliest_duplicate_is_kept():
    first, later = _record(1, "a", source_id="f:9", minutes=5), _record(1, "a", source_id="f:2", minutes=9)
    same_time = _record(1, "a", source_id="f:10", minutes=5)  # f:9 comes before f:10 in the file
    result = curate([later, same_time, first], eval_size=0, min_train=0)
    assert (result.n_accepted, result.n_duplicates) == (1, 2)
    assert [r.source_id for r in result.train + result.val + result.eval] in ([], ["f:9"])


def test_rare_classes_are_evaluated_and_singletons_stay_in_training():
    records = _records({"common": 60, "rare": 3, "single": 1})
    result = curate(records, eval_size=10, val_ratio=0.1, seed=1, min_train=10)
    assert result.label_counts("eval") == {"common": 8, "rare": 2}  # round-robin, one rare kept for training
    assert result.label_counts("train")["single"] == 1
    assert result.label_counts("train")["rare"] + result.label_counts("val")["rare"] == 1
    # "rare" has a single record left and "single" one: stratification is impossible, and it says so.
    assert not result.val_stratified and any("not stratified" in w for w in result.warnings)
    assert result.n_val == round(54 * 0.1)


def test_eval_shrinks_to_keep_min_train_with_a_warning():
    result = curate(_records({"a": 13, "b": 12}), eval_size=20, min_train=10)
    assert result.usable and result.n_eval == 15 and result.n_train + result.n_val == 10
    assert any("shrunk from 20 to 15" in w for w in result.warnings)


def test_too_few_records_is_unusable_with_a_reason():
    records = _records({"a": 6, "b": 5})
    result = curate([*records, Rejection("bad:1", "invalid_json", "", "record bad:1: not valid JSON")], min_train=10)
    assert not result.usable and "only 11 usable records; at least 12" in result.reason
    assert result.n_in == 12 and result.n_quarantined == 1 and result.split_sizes == {"eval": 0, "train": 0, "val": 0}
    assert result.to_rows() == []


def test_only_singleton_classes_cannot_be_evaluated():
    result = curate(_records({f"t{i}": 1 for i in range(15)}), eval_size=5, min_train=10)
    assert not result.usable and "no class has two" in result.reason


def test_class_label_of_rows_matches_records(router_items):
    result = _curate(router_items[:200], eval_size=10)
    for row, record in zip(result.to_rows(), result.eval + result.train + result.val):
        assert row["id"] == record.source_id and row["label"] == class_label(record)
