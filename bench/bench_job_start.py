"""Benchmark: a CPU job of the local backend started as a fresh process against the same job forked
by the warm trainer server (flywheel_trainer.warm), side by side in one run.

The job is a zero-shot (`base`) job of the demo student on tool_router eval items, the shortest job
of `make demo`, where start-up weighs most; both sides go through the operator's own code path
(`LocalGpuJobOperator._run`) with the trainer's allow-listed environment and one thread. The runs
alternate and the medians are compared (these machines are shared and noisy: only the ratio is
meant to travel). CPU-seconds are the job process's own (for the fresh side this process's
children; for the warm side the server's reaped children).

    .venv/bin/python bench/bench_job_start.py [--model .flywheel/models/tiny-lm-1.6m] [--items 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _demo import add_model_arg, require_model, router_records


def _children_cpu_of(pid: int) -> float:
    """CPU-seconds of the reaped children of ``pid`` (cutime + cstime in /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _own_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    add_model_arg(ap)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    require_model(args.model)
    from flywheel.prompts import eval_item
    from flywheel_operators.local import WARM_SOCKET_ENV, LocalGpuJobOperator, trainer_environment

    root = Path(tempfile.mkdtemp(prefix="bench-job-start-"))
    items = [eval_item({"id": r.source_id, "request": r.request}) for r in router_records(600, 2)[: args.items]]
    (root / "eval.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = {"job_name": "tool_router · student · base", "candidate": args.model.name, "strategy": "base",
            "model_uri": str(args.model.resolve()), "eval_uri": f"file://{root / 'eval.jsonl'}",
            "output_uri": f"file://{root / 'out'}", "generation": {"max_new_tokens": 48}}
    (root / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "flywheel_trainer", "run", "--spec", str(root / "spec.json")]
    env = trainer_environment(extra={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

    sock = root / "warm.sock"
    server = subprocess.Popen([sys.executable, "-m", "flywheel_trainer", "warm-server", "--socket", str(sock)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    while not sock.exists():
        if server.poll() is not None or time.monotonic() - started > 180:
            raise SystemExit("the warm server did not start")
        time.sleep(0.1)
    print(f"warm server ready in {time.monotonic() - started:.1f}s (imports paid once); "
          f"{len(items)} eval items, model {args.model}, 1 thread per job")
    op = LocalGpuJobOperator(task_id="bench", job={})
    results: dict[str, list[tuple[float, float]]] = {"fresh": [], "warm": []}
    try:
        for _ in range(args.repeats):
            for side in ("fresh", "warm"):
                if side == "warm":
                    os.environ[WARM_SOCKET_ENV] = str(sock)
                    cpu_before = _children_cpu_of(server.pid)
                else:
                    os.environ.pop(WARM_SOCKET_ENV, None)
                    cpu_before = _own_children_cpu()
                t0 = time.perf_counter()
                rc, tail, _ = op._run(cmd, env)
                wall = time.perf_counter() - t0
                cpu = (_children_cpu_of(server.pid) if side == "warm" else _own_children_cpu()) - cpu_before
                if rc != 0:
                    raise SystemExit(f"{side} job failed ({rc}): {tail[-3:]}")
                results[side].append((wall, cpu))
                print(f"  {side:5s} job: {wall:6.2f} s wall, {cpu:6.2f} CPU-s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = {side: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for side, r in results.items()}
    print(f"\nmedian fresh process: {med['fresh'][0]:.2f} s wall, {med['fresh'][1]:.2f} CPU-s")
    print(f"median warm fork:     {med['warm'][0]:.2f} s wall, {med['warm'][1]:.2f} CPU-s")
    print(f"fresh / warm: {med['fresh'][0] / med['warm'][0]:.2f}x wall, {med['fresh'][1] / med['warm'][1]:.2f}x CPU; "
          f"saved per job: {med['fresh'][1] - med['warm'][1]:.2f} CPU-s")
    print(f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
