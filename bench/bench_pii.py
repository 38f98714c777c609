"""PII redaction: recall and precision per entity type on the seeded PII corpus, redaction speed
(records/s per core, 1 and 2 processes measured side by side), and the 64 KB record.

    .venv/bin/python bench/bench_pii.py [--records 5000] [--seed 99]

The corpus (flywheel_local.pii_corpus) plants PII in user text, tool-call arguments (numbers as
values too), message names, request.user, tool descriptions and extra fields, with look-alike
decoys. The redactor was developed against seed 17; report a different seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date


def _redact_chunk(records: list[dict]) -> int:
    from flywheel.pii import redact_obj

    for record in records:
        redact_obj(record)
    return len(records)


def _warm(_: int) -> int:
    from flywheel.pii import default_redactor

    default_redactor().find("warm up 415-555-0132")
    return os.getpid()


def throughput(records: list[dict], workers: int) -> float:
    chunks = [records[i::workers * 4] for i in range(workers * 4)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_warm, range(workers)))  # Presidio is built in each worker before timing
        started = time.perf_counter()
        done = sum(pool.map(_redact_chunk, chunks))
        return done / (time.perf_counter() - started)


def big_record(n_bytes: int = 65536) -> dict:
    words = "the parcel arrived late and the box was damaged please advise about my refund".split()
    messages, i = [{"role": "system", "content": "You are ShopCo's support assistant."}], 0
    while len(json.dumps(messages)) < n_bytes - 400:
        text = " ".join(words[(i + k) % len(words)] for k in range(120))
        if i % 3 == 0:
            text += f" mail me at user{i}@example.com or call +1 415-555-{1000 + i:04d}; order A-{100000 + i}"
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        i += 1
    return {"request": {"messages": messages}, "response": {"choices": [{"message": {"role": "assistant",
                                                                                      "content": "ok"}}]}}


def timed(fn, repeat: int = 7) -> float:
    from flywheel import pii

    times = []
    for _ in range(repeat):
        pii._FIND_CACHE.clear()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from flywheel.pii import default_redactor, redact_obj, redact_text
    from flywheel_local.pii_corpus import corpus, evaluate

    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=99)
    args = parser.parse_args()
    print(f"# bench_pii {date.today()} on {platform.machine()}, {os.cpu_count()} cores (shared machine)")
    items = corpus(args.records, seed=args.seed)
    default_redactor()
    result = evaluate(items)
    print(f"\ncorpus: {result['records']} records, seed {args.seed}; decoys {result['decoys']}, "
          f"decoys redacted {result['decoys_redacted']}; raw planted values left in redacted records: "
          f"{result['raw_values_left']}\n")
    print("| entity | planted | found | missed | false positives | recall | precision |")
    print("|---|---|---|---|---|---|---|")
    for entity, row in result["entities"].items():
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {entity} | {row['planted']} | {row['found']} | {row['missed']} | {row['false_positives']} | "
              f"{fmt(row['recall'])} | {fmt(row['precision'])} |")
    records = [i.record for i in items]
    one = throughput(records, 1)
    two = throughput(records, 2)
    print(f"\nredaction throughput on the corpus: 1 process {one:,.0f} records/s; 2 processes {two:,.0f} records/s "
          f"= {two / 2:,.0f} per core (x{two / one:.2f})")
    record = big_record()
    size = len(json.dumps(record))
    t_record = timed(lambda: redact_obj(record))
    text = " ".join(m["content"] for m in record["request"]["messages"])[:65536]
    t_text = timed(lambda: redact_text(text))
    digits = ("1234 " * 13108)[:65536]
    t_digits = timed(lambda: redact_text(digits))
    letters = "a" * 65536
    t_letters = timed(lambda: redact_text(letters))
    print(f"64 KB: a {size:,}-byte record of {len(record['request']['messages'])} messages {t_record * 1000:.1f} ms; "
          f"one 64 KB text {t_text * 1000:.1f} ms; 64 KB of digit groups {t_digits * 1000:.1f} ms; "
          f"64 KB of one letter {t_letters * 1000:.1f} ms (median of 7, cache cleared)")


if __name__ == "__main__":
    main()
