from collections import Counter
from datetime import datetime, timezone

from flywheel.demo_data import generate_logs, generic_corpus
from flywheel.pii import redact_text
from flywheel.records import LogRecord, parse_line

END = datetime(2026, 11, 20, tzinfo=timezone.utc)


def test_deterministic_for_a_seed():
    assert generate_logs(end=END, seed=3) == generate_logs(end=END, seed=3)
    assert generate_logs(end=END, seed=3) != generate_logs(end=END, seed=4)


def test_default_demo_shape():
    lines = generate_logs(end=END)
    assert len(lines) >= 2000
    parsed = [parse_line(str(i), l) for i, l in enumerate(lines)]
    per_day: Counter = Counter()
    for p in parsed:
        if isinstance(p, LogRecord):
            per_day[(p.workload_id, p.timestamp.date())] += 1
    days = {d for _, d in per_day}
    assert len(days) == 7
    for workload in ("tool_router", "support_qa", "invoice_extraction"):
        assert min(per_day[(workload, d)] for d in days) >= 50, workload
    assert sum(per_day[("sql_helper", d)] for d in days) < 50  # below the minimum even over a week
    assert len(lines) - len(set(lines)) >= 0.02 * len(lines)  # exact duplicates
    rejected = [p for p in parsed if not isinstance(p, LogRecord)]
    assert len({r.reason for r in rejected}) >= 5
    pii = sum(1 for l in lines if redact_text(l)[1])
    assert pii >= 0.05 * len(lines)
    times = [p.timestamp for p in parsed if isinstance(p, LogRecord)]
    assert times == sorted(times) and times[0] >= END.replace(day=13) and times[-1] < END


def test_generic_corpus_never_contains_production_tools():
    corpus = generic_corpus(n_texts=600)
    text = "\n".join(corpus)
    for tool in ("get_order_status", "cancel_order", "track_shipment", "request_refund", "update_shipping_address"):
        assert tool not in text
    assert any(t.startswith("<tools>") for t in corpus) and "call " in text
    assert all(t.count("<assistant>") == 1 for t in corpus)
