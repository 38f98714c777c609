"""Benchmark: judge throughput against an OpenAI-compatible endpoint with a fixed latency.

Starts the local rule judge (``flywheel_local.rule_judge``, a real HTTP server in its own process)
with a fixed delay per request (200 ms by default), then runs ``JudgeClient`` (AsyncOpenAI with
its retries, a semaphore bounding the calls in flight, no cache) at several concurrency levels,
side by side in one run. A perfectly concurrent client achieves concurrency / latency requests per
second; the printed ratio is achieved / that ideal. Goal: >= 0.9 at concurrency 32.

Each level sends concurrency x rounds requests through one ``JudgeClient.complete`` call, the way
an evaluate task does, so the ratio includes what a batch pays once (the event loop, the SDK
client, opening `concurrency` connections: about half a second here). The default 30 rounds (6 s
of ideal time per level) keeps that a small share, a steady-state figure; ``--rounds 10`` shows the
start's weight (an evaluate task's batch is its eval items x 2 orders: 40 calls at eval_size 20).

    .venv/bin/python bench/bench_judge.py [--latency 0.2] [--concurrency 1 8 32 64] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request

from flywheel.adapters.judge_client import JudgeClient, endpoint_from_connection
from flywheel.config import JudgeSettings
from flywheel.judge import JudgeItem, plan_calls
from flywheel_local.rule_judge import MODEL_ID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=30, help="requests per run = concurrency x rounds")
    args = parser.parse_args()

    port = int(os.environ.get("FLYWHEEL_BENCH_JUDGE_PORT") or _free_port())
    server = subprocess.Popen([sys.executable, "-m", "flywheel_local.rule_judge", "--port", str(port),
                               "--latency", str(args.latency)], stdout=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait(base_url)
        endpoint = endpoint_from_connection(host=base_url, extra={"model": MODEL_ID})
        print(f"# judge throughput, {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"server latency {args.latency * 1000:.0f} ms")
        print(f"{'concurrency':>11}  {'requests':>8}  {'seconds':>8}  {'req/s':>7}  {'ideal req/s':>11}  {'ratio':>5}")
        # Warm up (imports, the first connection) outside the timed runs.
        JudgeClient(endpoint, JudgeSettings(max_retries=0)).complete(
            plan_calls([JudgeItem(request="q", reference="a", candidate="b")], policy="random"))
        rows = []
        for concurrency in args.concurrency:
            n = concurrency * args.rounds
            items = [JudgeItem(request="user: where is my parcel?", reference="It ships on Friday.",
                               candidate=f"It ships on Friday, item {concurrency}-{i}.") for i in range(n)]
            calls = plan_calls(items, policy="random", seed=0)
            client = JudgeClient(endpoint, JudgeSettings(max_concurrency=concurrency, max_retries=0, timeout_s=30))
            started = time.perf_counter()
            results = client.complete(calls)
            seconds = time.perf_counter() - started
            failed = sum(r.error is not None for r in results)
            achieved = n / seconds
            ideal = concurrency / args.latency
            rows.append((concurrency, achieved / ideal))
            print(f"{concurrency:>11}  {n:>8}  {seconds:>8.2f}  {achieved:>7.1f}  {ideal:>11.1f}  "
                  f"{achieved / ideal:>5.2f}" + (f"  ({failed} failed)" if failed else ""))
        goal = dict(rows).get(32)
        if goal is not None:
            print(f"goal >= 0.90 at concurrency 32: {'met' if goal >= 0.9 else 'NOT met'} ({goal:.2f})")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
