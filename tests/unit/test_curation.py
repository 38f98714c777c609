"""Curation on the real demo data: counts add up (checked against an independent count), the
splits are disjoint, class-balanced, deterministic."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from flywheel.curation import curate
from flywheel.demo_data import generate_logs
from flywheel.records import LogRecord, class_label, parse_line


@pytest.fixture(scope="module")
def router_items():
    lines = generate_logs(n_records=1200, days=3, seed=21)
    items = []
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("workload_id") == "tool_router":
            items.append((f"f:{i}", line))
    return items


def test_counts_add_up(router_items):
    parsed = [parse_line(ref, line) for ref, line in router_items]
    result = curate(parsed, eval_size=20, val_ratio=0.1, seed=42)
    # Independent count: rejections, and distinct (request, response) among the valid ones.
    rejected = sum(1 for p in parsed if not isinstance(p, LogRecord))
    distinct = len({json.dumps([p.request, p.response], sort_keys=True) for p in parsed if isinstance(p, LogRecord)})
    assert result.n_in == len(router_items)
    assert result.n_quarantined == rejected == len(result.quarantine)
    assert result.n_accepted == distinct
    assert result.n_duplicates == len(router_items) - rejected - distinct > 0
    assert result.n_in == result.n_accepted + result.n_quarantined + result.n_duplicates
    assert result.n_eval + result.n_train + result.n_val == result.n_accepted


def test_splits(router_items):
    result = curate([parse_line(r, l) for r, l in router_items], eval_size=20, val_ratio=0.1, seed=42)
    ids = {s: {r.source_id for r in getattr(result, s)} for s in ("eval", "train", "val")}
    assert not (ids["eval"] & ids["train"]) and not (ids["eval"] & ids["val"]) and not (ids["train"] & ids["val"])
    assert result.n_eval == 20
    assert result.n_val == round((result.n_accepted - 20) * 0.1)
    # Class-balanced eval: 5 tools, 20 items -> 4 each.
    assert Counter(class_label(r) for r in result.eval) == {t: 4 for t in (
        "get_order_status", "cancel_order", "track_shipment", "request_refund", "update_shipping_address")}
    assert result.val_stratified
    again = curate([parse_line(r, l) for r, l in reversed(router_items)], eval_size=20, val_ratio=0.1, seed=42)
    assert again.dataset_hash == result.dataset_hash  # input order does not matter
    other = curate([parse_line(r, l) for r, l in router_items], eval_size=20, val_ratio=0.1, seed=7)
    assert other.dataset_hash != result.dataset_hash


def test_pii_is_redacted_before_anything_is_kept(router_items):
    result = curate([parse_line(r, l) for r, l in router_items])
    assert result.pii["email"] > 0 and result.pii["phone"] > 0
    text = json.dumps(result.to_rows())
    assert "@example.com" not in text and "<EMAIL>" in text


def test_too_few_records_is_unusable_with_reason(router_items):
    result = curate([parse_line(r, l) for r, l in router_items[:8]], min_train=10)
    assert not result.usable and "at least 12" in result.reason
    small = curate([parse_line(r, l) for r, l in router_items[:25]], eval_size=20, min_train=10)
    assert small.usable and small.n_eval + small.n_train + small.n_val == small.n_accepted
    assert small.n_train + small.n_val >= 10 and small.warnings


def test_rows_carry_prompt_and_completion(router_items):
    rows = curate([parse_line(r, l) for r, l in router_items]).to_rows()
    assert {r["split"] for r in rows} == {"eval", "train", "val"}
    assert all(r["prompt"].endswith("<assistant>") and r["completion"].startswith("call ") for r in rows)
