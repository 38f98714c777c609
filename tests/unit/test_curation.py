"""Curation: counts add up (against an independent count), dedup by the normalized request keeps
the newest, no eval request ever reaches train/val (on data built to tempt it), splits are
disjoint, class-balanced, stratified and deterministic; settings are validated; the streaming
path (scan, plan, fetch again) gives the same dataset as the in-memory one; property tests."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flywheel.curation import (
    OTHERS, CurationSettings, SettingsError, SourceItem, curate, curate_stream, normalized_request, request_key,
)
from flywheel.prompts import train_item
from flywheel.pii import redact_text
from flywheel.records import LogRecord, Rejection, class_label, parse_line
from flywheel_local.demo_data import generate_logs

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
            continue  # no workload to route it to: quarantined at import, never curated
        if isinstance(workload_id, str):
            by_workload.setdefault(workload_id, []).append((f"demo.jsonl:{i}", line))
    return by_workload


@pytest.fixture(scope="module")
def router_items(demo_by_workload):
    return demo_by_workload["tool_router"]


def _curate(items, **kwargs):
    return curate((parse_line(ref, line) for ref, line in items), **kwargs)


@pytest.fixture(scope="module")
def results(demo_by_workload):
    """Each workload curated once with the defaults (Presidio on every kept record is the cost)."""
    return {w: _curate(items) for w, items in demo_by_workload.items()}


@pytest.mark.parametrize("workload", ["tool_router", "support_qa", "invoice_extraction", "sql_helper"])
def test_counts_add_up_on_the_demo_data(demo_by_workload, results, workload):
    items = demo_by_workload[workload]
    result = results[workload]
    # Independent count: valid records with the same normalized request are duplicates.
    valid = [r for r in (parse_line(ref, line) for ref, line in items) if isinstance(r, LogRecord)]
    distinct = {json.dumps(normalized_request(r.request), sort_keys=True) for r in valid}
    assert result.n_in == len(items)
    assert result.n_quarantined == len(items) - len(valid) == len(result.quarantine)
    assert result.n_quarantined > 0 or workload == "sql_helper"  # malformed lines land in every big workload
    assert result.n_accepted == len(distinct)
    assert result.n_duplicates == len(valid) - len(distinct)
    assert result.n_in == result.n_accepted + result.n_quarantined + result.n_duplicates
    if result.usable:
        assert sum(result.split_sizes.values()) == result.n_accepted
    assert all(isinstance(q, Rejection) for q in result.quarantine)


def test_demo_totals(results):
    results = [results[w] for w in ("tool_router", "support_qa", "invoice_extraction", "sql_helper")]
    reasons = Counter(q.reason for r in results for q in r.quarantine)
    # bad / out-of-range timestamps; response without choices, bad tool arguments, empty answer;
    # messages not a list (the ones that still name a real workload reach curation)
    assert set(reasons) == {"invalid_timestamp", "timestamp_out_of_range", "invalid_response", "invalid_messages"}
    assert all(r.usable for r in results[:3]) and results[3].n_accepted < 50
    # support_qa asks a few dozen questions over and over: most of its traffic is repeats.
    support = results[1]
    assert support.n_duplicates > support.n_accepted / 4


def test_splits_are_disjoint_balanced_and_stratified(results):
    result = results["tool_router"]  # eval_size 20, val_ratio 0.1, seed 42
    ids = {s: [r.source_id for r in getattr(result, s)] for s in ("eval", "train", "val")}
    assert all(len(v) == len(set(v)) for v in ids.values())
    assert not (set(ids["eval"]) & set(ids["train"]) or set(ids["eval"]) & set(ids["val"])
                or set(ids["train"]) & set(ids["val"]))
    assert result.usable and result.reason is None and not result.warnings
    assert result.split_sizes == {"eval": 20, "train": result.n_accepted - 20 - result.n_val,
                                  "val": round((result.n_accepted - 20) * 0.1)}
    # Class-balanced eval although the traffic is skewed: 5 tools, 20 items -> 4 each.
    assert result.label_counts("eval") == {tool: 4 for tool in ROUTER_TOOLS}
    assert result.val_stratified
    rest = result.label_counts("train") + result.label_counts("val")
    for tool, n in rest.items():
        assert abs(result.label_counts("val")[tool] - n * result.n_val / sum(rest.values())) <= 1
    table = result.class_table()
    assert list(table.columns) == ["eval", "train", "val"] and table["eval"].sum() == 20
    assert table.loc["cancel_order"].sum() == rest["cancel_order"] + 4


def test_split_is_deterministic_and_independent_of_input_order(router_items):
    items = router_items[:300]
    result = _curate(items, seed=42)
    again = _curate(list(reversed(items)), seed=42)
    assert again.dataset_hash == result.dataset_hash
    assert again.to_rows() == result.to_rows()
    other = _curate(items, seed=7)
    assert other.dataset_hash != result.dataset_hash
    assert other.n_accepted == result.n_accepted


def test_pii_is_redacted_before_anything_is_kept(results):
    for workload in ("tool_router", "support_qa"):
        result = results[workload]
        assert result.pii["email"] > 0 and result.pii["phone"] > 0
        rows = result.to_rows()
        text = json.dumps(rows)
        assert "@example.com" not in text and "<EMAIL_1>" in text and "<PHONE_1>" in text
        for r in rows:  # what the candidates are prompted and trained with is redacted too
            assert redact_text(json.dumps(train_item(r), ensure_ascii=False))[1] == Counter()


def test_rows_carry_the_seam_fields(results):
    result = results["tool_router"]
    rows = result.to_rows()
    assert [r["split"] for r in rows] == ["eval"] * 20 + ["train"] * result.n_train + ["val"] * result.n_val
    assert set(rows[0]) == {"id", "split", "label", "client_id", "timestamp", "request", "response"}
    assert all(r["response"]["usage"]["prompt_tokens"] > 0 for r in rows)  # usage is kept (cost)
    assert all(train_item(r)["messages"][-1]["tool_calls"][0]["function"]["name"] == r["label"] for r in rows)


# ---------------------------------------------------------------- small synthetic sets

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _record(i: int, label: str, *, source_id: str | None = None, minutes: int | None = None, text: str | None = None,
            answer_args: dict | None = None, call_id: str = "c") -> LogRecord:
    """A tool_router-like record whose first call is ``label``."""
    call = {"id": call_id, "type": "function",
            "function": {"name": label, "arguments": json.dumps(answer_args or {"n": i})}}
    return LogRecord(
        source_id=source_id or f"s:{i}", timestamp=T0 + timedelta(minutes=i if minutes is None else minutes),
        workload_id="w", client_id="c",
        request={"messages": [{"role": "user", "content": text or f"request {i}"}],
                 "tools": [{"type": "function", "function": {"name": label}}]},
        response={"id": f"chatcmpl-{i}", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": None, "tool_calls": [call]}}], "usage": {"prompt_tokens": i}},
    )


def _records(counts: dict[str, int]) -> list[LogRecord]:
    out, i = [], 0
    for label, n in counts.items():
        for _ in range(n):
            out.append(_record(i, label))
            i += 1
    return out


def test_the_newest_duplicate_is_kept_and_ids_usage_timestamps_do_not_matter():
    old = _record(1, "a", source_id="f:9", minutes=5, call_id="call_1")
    new = _record(1, "a", source_id="f:2", minutes=9, call_id="call_2")  # new completion id, usage, time
    new.request["messages"][0]["content"] = "  request   1 "                # whitespace differs
    new.request["tools"][0] = {"function": {"name": "a"}, "type": "function"}  # key order differs
    result = curate([new, old], eval_size=2, min_train=1, val_ratio=0.1, settings=None)
    assert (result.n_accepted, result.n_duplicates) == (1, 1)
    assert request_key(old) == request_key(new)


def test_dedup_can_include_the_answer():
    a = _record(1, "a", answer_args={"x": 1})
    b = _record(1, "a", minutes=50, answer_args={"x": 2})
    assert request_key(a) == request_key(b)
    assert request_key(a, with_answer=True) != request_key(b, with_answer=True)
    same_answer = _record(1, "a", minutes=60, answer_args={"x": 1}, call_id="other")
    assert request_key(a, with_answer=True) == request_key(same_answer, with_answer=True)


def test_no_eval_request_reaches_train_or_val_even_when_redaction_makes_them_equal():
    # Built to tempt leakage: pairs of requests that differ only in an e-mail address (different
    # before redaction, identical after), plus exact twins with a new completion id and time.
    records = []
    for i in range(40):
        label = "ab"[i % 2]
        records.append(_record(i, label, text=f"refund order {i} to user{i}@example.com", minutes=i))
        records.append(_record(1000 + i, label, text=f"refund order {i} to other{i}@example.org", minutes=100 + i))
        records.append(_record(2000 + i, label, text=f"refund order {i} to user{i}@example.com", minutes=200 + i,
                               call_id=f"twin{i}"))
    result = curate(records, eval_size=20, min_train=10, val_ratio=0.2, seed=3)
    assert result.usable
    keys = {split: {json.dumps(normalized_request(r.request), sort_keys=True) for r in getattr(result, split)}
            for split in ("eval", "train", "val")}
    assert not keys["eval"] & (keys["train"] | keys["val"])
    assert not keys["train"] & keys["val"]
    assert len(keys["train"]) == result.n_train and len(keys["val"]) == result.n_val
    assert result.n_in == 120 and result.n_duplicates == 80 and result.n_accepted == 40  # 40 distinct after redaction
    assert any("after redaction" in w for w in result.warnings)


def test_rare_classes_are_merged_into_others_and_singletons_stay_in_training():
    records = _records({"common": 60, "rare": 3, "single": 1, "other": 30})
    result = curate(records, eval_size=10, val_ratio=0.1, seed=1, min_train=10, min_class_size=5)
    assert result.merged_classes == ["rare", "single"]
    assert set(result.label_counts("eval")) == {"common", "other", OTHERS}
    assert sum(result.label_counts(s)[OTHERS] for s in ("eval", "train", "val")) == 4
    assert any("merged into 'others'" in w for w in result.warnings)


def test_stratification_fallback_is_logged():
    result = curate(_records({"common": 60, "rare": 3, "single": 1}), eval_size=10, val_ratio=0.1, seed=1,
                    min_train=10, min_class_size=1)
    assert result.label_counts("train")["single"] == 1
    assert not result.val_stratified and any("not stratified" in w for w in result.warnings)


def test_max_records_keeps_the_newest_and_counts_the_rest():
    records = _records({"a": 30, "b": 30})
    result = curate(records, eval_size=4, min_train=10, val_ratio=0.1, max_records=20)
    assert result.usable and result.n_over_limit == 40 and result.n_accepted == 60
    assert result.n_eval + result.n_train + result.n_val == 20
    kept_minutes = sorted(r.timestamp for s in ("eval", "train", "val") for r in getattr(result, s))
    assert kept_minutes[0] >= T0 + timedelta(minutes=40)  # the 20 newest


def test_stratify_by_a_configured_key():
    records = _records({"a": 40})
    for i, r in enumerate(records):
        r.extra["labels"] = {"intent": "refund" if i % 4 else "cancel"}
    result = curate(records, eval_size=8, min_train=10, stratify_key="labels.intent")
    assert result.label_counts("eval") == {"refund": 4, "cancel": 4}
    assert class_label(records[0], "labels.missing") == "unlabelled"


def test_eval_shrinks_to_keep_min_train_with_a_warning():
    result = curate(_records({"a": 13, "b": 12}), eval_size=20, min_train=10, max_records=100)
    assert result.usable and result.n_eval == 15 and result.n_train + result.n_val == 10
    assert any("shrunk from 20 to 15" in w for w in result.warnings)


def test_too_few_records_is_unusable_with_a_reason():
    records = _records({"a": 6, "b": 5})
    result = curate([*records, Rejection("bad:1", "invalid_json", "", "record bad:1: not valid JSON")], min_train=10)
    assert not result.usable and "only 11 usable records; at least 12" in result.reason
    assert result.n_in == 12 and result.n_quarantined == 1 and result.split_sizes == {"eval": 0, "train": 0, "val": 0}
    assert result.to_rows() == []


def test_only_singleton_classes_cannot_be_evaluated():
    result = curate(_records({f"t{i}": 1 for i in range(15)}), eval_size=5, min_train=10, min_class_size=1)
    assert not result.usable and "no class has two" in result.reason


@pytest.mark.parametrize("kwargs, message", [
    ({"val_ratio": 0}, "val_ratio=0 is invalid: it must be in (0, 0.5]"),
    ({"val_ratio": 0.6}, "val_ratio=0.6"),
    ({"val_ratio": -0.1}, "val_ratio=-0.1"),
    ({"eval_size": 1}, "eval_size=1 is invalid"),
    ({"eval_size": 0}, "eval_size=0"),
    ({"min_train": 0}, "min_train=0"),
    ({"max_records": 5}, "max_records=5 is invalid: it must be at least eval_size + min_train = 30"),
    ({"stratify_key": "  "}, "stratify_key"),
])
def test_settings_are_validated_with_clear_errors(kwargs, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        CurationSettings(**kwargs).check()


def test_config_refuses_bad_curation_settings(tmp_path):
    import yaml

    from flywheel.config import DEFAULT_CONFIG, ConfigError, load_config

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["curation"]["val_ratio"] = 0.9
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="val_ratio=0.9"):
        load_config(path)


# ---------------------------------------------------------------- streaming = in memory

def test_the_streaming_path_builds_the_same_dataset(router_items, results):
    settings = CurationSettings(eval_size=20, val_ratio=0.1, seed=42)
    memory = results["tool_router"]
    store = {i: SourceItem(i, ref, line) for i, (ref, line) in enumerate(router_items)}
    fetched: list[int] = []

    def fetch(keys):
        fetched.extend(keys)
        for k in reversed(keys):  # any order
            yield store[k]

    rows, rejections = [], []
    streamed = curate_stream(iter(store.values()), fetch, settings, on_rejection=rejections.append,
                             on_row=rows.append, batch=64)
    assert rows == memory.to_rows() and streamed.dataset_hash == memory.dataset_hash
    assert [r.reason for r in rejections] == [q.reason for q in memory.quarantine]
    assert (streamed.n_in, streamed.n_accepted, streamed.n_duplicates) == (memory.n_in, memory.n_accepted,
                                                                            memory.n_duplicates)
    # Only the kept records are fetched again (and redacted).
    assert len(fetched) == memory.n_eval + memory.n_train + memory.n_val


def test_a_record_gone_before_the_fetch_is_quarantined_not_lost(router_items):
    settings = CurationSettings(eval_size=20, val_ratio=0.1, seed=42)
    store = {i: SourceItem(i, ref, line) for i, (ref, line) in enumerate(router_items[:200])}
    gone: set = set()

    def fetch(keys):
        if not gone:
            gone.add(keys[0])
        return (store[k] for k in keys if k not in gone)

    rejections: list[Rejection] = []
    result = curate_stream(iter(store.values()), fetch, settings, on_rejection=rejections.append,
                           on_row=lambda row: None)
    assert rejections[-1].reason == "changed_during_run" and result.reasons["changed_during_run"] == 1
    assert result.n_in == result.n_accepted + result.n_quarantined + result.n_duplicates


# ---------------------------------------------------------------- properties

def _random_records(draw_ints: list[int], seed: int) -> list[LogRecord | Rejection]:
    rng = random.Random(seed)
    out: list[LogRecord | Rejection] = []
    for i, n in enumerate(draw_ints):
        if n % 11 == 0:
            out.append(Rejection(f"s:{i}", "invalid_json", "", "bad"))
            continue
        label = "abcd"[n % 4]
        # Few distinct texts so that duplicates (with new ids, times, whitespace) are frequent.
        text = f"ask {n % 17}" + (" " * rng.randint(0, 2))
        out.append(_record(i, label, text=text, minutes=rng.randint(0, 10_000), call_id=f"id{i}",
                           answer_args={"v": n % 3}))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=120), st.integers(0, 5),
       st.integers(2, 10), st.sampled_from([0.1, 0.25, 0.5]), st.booleans())
def test_invariants(ints, seed, eval_size, val_ratio, with_answer):
    records = _random_records(ints, seed)
    result = curate(records, eval_size=eval_size, val_ratio=val_ratio, seed=seed, min_train=3, min_class_size=2,
                    dedup_on_answer=with_answer)
    # in = accepted + quarantined + duplicates, always
    assert result.n_in == len(records) == result.n_accepted + result.n_quarantined + result.n_duplicates
    assert result.n_quarantined == sum(isinstance(r, Rejection) for r in records)
    if result.usable:
        assert result.n_accepted == result.n_eval + result.n_train + result.n_val + result.n_over_limit
        assert result.n_eval >= 2
        # No eval request in train or val, and nothing twice anywhere.
        def key(r):
            return request_key(r)
        eval_keys = {key(r) for r in result.eval}
        assert not eval_keys & {key(r) for r in result.train + result.val}
        kept = [request_key(r, with_answer=with_answer) for r in result.eval + result.train + result.val]
        assert len(kept) == len(set(kept))
    else:
        assert result.to_rows() == [] and result.reason
