"""The demo log generator and the generic pre-training corpus."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from flywheel_local.demo_data import MALFORMED_KINDS, ROUTER_TOOLS, generate_logs, generic_corpus, write_jsonl
from flywheel.pii import redact_text
from flywheel.records import LogRecord, parse_line

END = datetime(2026, 11, 20, tzinfo=timezone.utc)
MAIN_WORKLOADS = ("tool_router", "support_qa", "invoice_extraction")


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return generate_logs(end=END)


@pytest.fixture(scope="module")
def parsed(lines) -> list[LogRecord | object]:
    return [parse_line(f"demo:{i}", line) for i, line in enumerate(lines, start=1)]


@pytest.fixture(scope="module")
def records(parsed) -> list[LogRecord]:
    return [p for p in parsed if isinstance(p, LogRecord)]


def _user_text(record: LogRecord) -> str:
    return next(m["content"] for m in record.request["messages"] if m["role"] == "user")


def test_deterministic_for_a_seed(lines):
    assert generate_logs(end=END) == lines
    assert generate_logs(end=END, seed=8) != lines


def test_default_size_and_workloads_per_day(lines, records):
    assert len(lines) == 2400
    per_day = Counter((r.workload_id, r.timestamp.date()) for r in records)
    days = sorted({d for _, d in per_day})
    assert days == [(END - timedelta(days=n)).date() for n in range(7, 0, -1)]
    for workload in MAIN_WORKLOADS:
        assert min(per_day[(workload, d)] for d in days) >= 50, workload
    # sql_helper stays under the 50-record minimum even over the whole week (the on-demand window).
    assert 0 < sum(per_day[("sql_helper", d)] for d in days) < 50
    assert len({r.client_id for r in records}) >= 5


def test_sorted_by_time_inside_the_window(records):
    times = [r.timestamp for r in records]
    assert times == sorted(times)
    assert END - timedelta(days=7) <= times[0] and times[-1] < END


def test_exact_duplicates(lines):
    assert len(lines) - len(set(lines)) == int(2400 * 0.03)


def test_malformed_lines_of_every_kind(parsed):
    rejections = Counter((p.reason, p.field) for p in parsed if not isinstance(p, LogRecord))
    kinds = list(MALFORMED_KINDS.values())
    assert rejections == Counter(kinds[i % len(kinds)] for i in range(int(2400 * 0.02)))


def test_pii_in_about_a_tenth_of_user_texts(records):
    found = Counter()
    with_pii = 0
    for record in records:
        _, counts = redact_text(_user_text(record))
        found.update(counts)
        with_pii += bool(counts)
    assert 0.07 * len(records) <= with_pii <= 0.13 * len(records)
    assert found["email"] > 50 and found["phone"] > 50 and found["card"] > 0


def test_answers_copy_values_verbatim_from_the_user_text(records):
    """What the model must output is in the input as written: order ids, amounts, addresses, totals."""
    for record in records:
        text = _user_text(record)
        if record.workload_id == "tool_router":
            args = json.loads(record.assistant_message["tool_calls"][0]["function"]["arguments"])
            values = [json.dumps(v) if isinstance(v, (int, float)) else v for v in args.values()]
        elif record.workload_id == "invoice_extraction":
            answer = json.loads(record.assistant_message["content"])
            values = [json.dumps(v) if isinstance(v, float) else v for v in answer.values()]
        else:
            continue
        assert all(v in text for v in values), (text, values)


def test_tool_router_requests_and_compact_texts(records):
    router = [r for r in records if r.workload_id == "tool_router"]
    assert all(r.request["tools"] == ROUTER_TOOLS for r in router)
    assert all(r.request["messages"][0]["role"] == "system" for r in router)
    labels = Counter(r.assistant_message["tool_calls"][0]["function"]["name"] for r in router)
    assert len(labels) == 5 and min(labels.values()) >= 50
    words = [len(_user_text(r).split()) for r in records if r.workload_id in MAIN_WORKLOADS]
    assert max(words) <= 40 and 10 <= sum(words) / len(words) <= 25
    assert len({_user_text(r) for r in router}) > 0.9 * len(router)  # varied phrasings


def test_epoch_timestamps_in_the_blueprint_format():
    epoch = generate_logs(end=END, n_records=50, malformed_rate=0, timestamps="epoch")
    iso = generate_logs(end=END, n_records=50, malformed_rate=0)
    for e, i in zip(epoch, iso):
        e, i = json.loads(e), json.loads(i)
        assert isinstance(e["timestamp"], int)
        assert parse_line("e", json.dumps(e)).timestamp == parse_line("i", json.dumps(i)).timestamp
        assert {k: v for k, v in e.items() if k != "timestamp"} == {k: v for k, v in i.items() if k != "timestamp"}


def test_write_jsonl(tmp_path, lines):
    path = tmp_path / "nested" / "logs.jsonl"
    write_jsonl(path, lines[:3])
    assert path.read_text(encoding="utf-8").splitlines() == lines[:3]


def test_generic_corpus_teaches_the_format_not_the_production_tasks():
    corpus = generic_corpus(n_texts=600)
    assert corpus == generic_corpus(n_texts=600)
    text = json.dumps(corpus)
    production = [t["function"]["name"] for t in ROUTER_TOOLS]
    production += [p for t in ROUTER_TOOLS for p in t["function"]["parameters"]["properties"]]
    production += ["invoice_number", "due_date", "vendor", "ShopCo"]
    for word in production:
        assert f'\\"{word}\\"' not in text and f'"{word}"' not in text and f" {word} " not in text, word
    # Conversations ending with the assistant's answer, in the shape every prompt and example has.
    assert all(d["messages"][-1]["role"] == "assistant" and d["messages"][-2]["role"] == "user" for d in corpus)
    kinds = Counter("call" if d["messages"][-1].get("tool_calls") else
                    "json" if (d["messages"][-1]["content"] or "").startswith("{") else "text" for d in corpus)
    assert kinds == {"text": 200, "call": 200, "json": 200}
    # Tool calls always come with the tools' JSON schemas, the called one among them.
    for d in corpus:
        for call in d["messages"][-1].get("tool_calls", []):
            assert call["function"]["name"] in [t["function"]["name"] for t in d["tools"]]
            assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_same_bytes_in_every_process():
    """The logs and the pre-training corpus must not depend on PYTHONHASHSEED (set order): the
    student model built from the corpus, and so every score, must be the same on every machine."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib; from datetime import datetime, timezone;"
            "from flywheel_local.demo_data import generate_logs, generic_corpus;"
            "logs = generate_logs(n_records=300, days=2, end=datetime(2026, 11, 20, tzinfo=timezone.utc), seed=7);"
            "import json; print(hashlib.sha256('\\n'.join(logs + [json.dumps(d) for d in generic_corpus(n_texts=600)]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": s}).stdout.strip() for s in ("1", "2")}
    assert len(digests) == 1 and len(next(iter(digests))) == len(hashlib.sha256().hexdigest()), digests
