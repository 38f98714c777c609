"""bench/parallel: several flywheel runs at once on a real Airflow scheduler, against the blueprint's
one-at-a-time queue, and the scheduler's cost per mapped task.

    .venv/bin/python bench/parallel/run.py            # (make bench-parallel), about 80 minutes

A real Airflow 3 (scheduler, dag-processor, api-server, LocalExecutor) on the embedded PostgreSQL,
in a temporary FLYWHEEL_HOME; the DAGs are bench/parallel/dags/bench_dags.py: the flywheel's shape
with each GPU job replaced by a job of known duration (bench/parallel/sleep_job.py) that goes
through the real LocalGpuJobOperator, the pool `flywheel_gpu` (G slots) and its slots. In one run
of this script it measures, side by side:

  (a) the blueprint's way: the same runs one after another, one GPU job at a time;
  (b) ours: the runs at once, GPU work bounded by the pool;
  (c) the ideal lower bound: max(critical path, total slot-seconds / G);

with goals (b) <= 1.15 x (c) and (a)/(b) >= 0.8 x (a)/(c); the per-task overhead Airflow adds; the
parse time of the DAG files; and, for one run that maps 1,000 experiments, the scheduler's time
per mapped task (goal < 2 s). It writes a plot of busy GPU slots over time (PNG) and prints a
Markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def parse_seconds(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in text.split(","))}


def ideal_makespan(seconds: dict[str, float], slots: dict[str, int], *, runs: int, workloads: int,
                   candidates: int, gpus: int) -> tuple[float, float, float]:
    """(c) = max(critical path, total slot-seconds / G), with zero scheduling overhead."""
    per = runs * workloads * candidates
    slot_seconds = sum(per * seconds[s] * slots[s] for s in seconds)
    critical = max(seconds.values())
    return max(critical, slot_seconds / gpus), critical, slot_seconds


def busy_slots(jobs: list[dict]) -> list[tuple[float, int]]:
    """(time, slots busy from then on) steps from the jobs' [start, end] and slots."""
    events = sorted([(j["start"], j["slots"]) for j in jobs] + [(j["end"], -j["slots"]) for j in jobs],
                    key=lambda e: (e[0], e[1]))
    steps, busy = [], 0
    for t, delta in events:
        busy += delta
        steps.append((t, busy))
    return steps


def gpu_jobs(api, dag_id: str, runs: list[dict], seconds: dict[str, float]) -> list[dict]:
    jobs = []
    for r in runs:
        for ti in api.task_instances(dag_id, r["dag_run_id"]):
            if ti["task_id"].endswith(".gpu_job"):
                strategy = (ti.get("rendered_map_index") or "").rsplit(" · ", 1)[-1]
                jobs.append({"run": r["dag_run_id"], "state": ti["state"], "start": _ts(ti["start_date"]),
                             "end": _ts(ti["end_date"]), "queued": _ts(ti.get("queued_when")),
                             "slots": ti["pool_slots"], "strategy": strategy,
                             "nominal": seconds.get(strategy)})
    return jobs


def other_tasks(api, dag_id: str, runs: list[dict]) -> list[float]:
    out = []
    for r in runs:
        for ti in api.task_instances(dag_id, r["dag_run_id"]):
            if not ti["task_id"].endswith(".gpu_job") and ti["start_date"] and ti["end_date"]:
                out.append(_ts(ti["end_date"]) - _ts(ti["start_date"]))
    return out


def wait_runs(api, dag_id: str, run_ids: list[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [api.dag_run(dag_id, r) for r in run_ids]
        if all(r["state"] in ("success", "failed") for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id}: {[(r['dag_run_id'], r['state']) for r in runs]}")
        time.sleep(2)


def trigger_runs(api, dag_id: str, n: int, label: str) -> tuple[list[dict], float]:
    started = time.time()
    ids = [api.trigger(dag_id, run_id=f"{label}__{i}__{int(started)}")["dag_run_id"] for i in range(n)]
    return ids, started


def makespan(runs: list[dict], triggered: float) -> float:
    return max(_ts(r["end_date"]) for r in runs) - triggered


def parse_time(folder: Path, env: dict[str, str], repeats: int = 3) -> float:
    """Median wall seconds to parse a DAG folder in a fresh interpreter (what a DAG processor pays),
    timed inside that interpreter after Airflow itself is imported: Airflow's own import takes 2.5-3.5 s
    here and varies more between processes than a DAG file's parse takes."""
    code = ("import time; from airflow.dag_processing.dagbag import DagBag; t=time.perf_counter(); "
            f"b=DagBag({str(folder)!r}); assert not b.import_errors, b.import_errors; "
            "print(time.perf_counter()-t)")
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                                  capture_output=True, text=True).stdout.split()[-1])
                             for _ in range(repeats))


def plot(path: Path, series: dict[str, list[tuple[float, int]]], gpus: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), sharey=True, squeeze=False)
    axes = axes[:, 0]  # one panel (--skip-blueprint) or two
    for ax, (title, steps) in zip(axes, series.items()):
        t0 = steps[0][0] if steps else 0
        xs = [t - t0 for t, _ in steps]
        ax.step(xs, [b for _, b in steps], where="post")
        ax.axhline(gpus, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("busy GPU slots")
        ax.set_ylim(0, gpus + 1)
    axes[-1].set_xlabel("seconds since the first GPU job started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=8, help="G: slots of the flywheel_gpu pool")
    parser.add_argument("--seconds", default="base=24,icl=32,lora=80",
                        help="GPU job durations per strategy (seconds)")
    parser.add_argument("--lora-slots", type=int, default=2)
    parser.add_argument("--mapped", type=int, default=1000, help="mapped experiments of the one-run test (0: skip)")
    parser.add_argument("--parallelism", type=int, default=16, help="LocalExecutor worker processes")
    parser.add_argument("--skip-blueprint", action="store_true")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench_parallel_slots.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from flywheel_local import cli, stack

    seconds = parse_seconds(args.seconds)
    slots = {s: (args.lora_slots if s == "lora" else 1) for s in seconds}
    home = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    config = {"runs": args.runs, "workloads": args.workloads, "candidates": args.candidates, "gpus": args.gpus,
              "strategies": list(seconds), "seconds": seconds, "slots": slots, "mapped": args.mapped,
              "sleep_job": str(HERE / "sleep_job.py"), "outputs": str(home / "outputs")}
    (home / "config.json").write_text(json.dumps(config))
    os.environ.update({"FLYWHEEL_HOME": str(home), "FLYWHEEL_GPU_SLOTS": str(args.gpus),
                       "FLYWHEEL_API_PORT": os.environ.get("FLYWHEEL_API_PORT", "8107"),
                       "XDG_RUNTIME_DIR": str(home / "run")})
    paths = stack.StackPaths.from_env()
    print(f"# bench_parallel {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
          f"{os.cpu_count()} cores (a shared machine: ratios, not absolute times); home {home}", flush=True)
    try:
        socket_dir = stack.start_postgres(paths)
        env = stack.airflow_env(paths, socket_dir)
        env.update({"AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags"), "BENCH_PARALLEL_CONFIG": str(home / "config.json"),
                    "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
                    "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "256",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                    "FLYWHEEL_ARTIFACTS": f"file://{home}/artifacts"})
        stack.migrate_airflow(env)
        stack.airflow_cli(env, "pools", "set", "flywheel_gpu", str(args.gpus), "bench: G GPU slots")
        stack.start_airflow(paths, env)
        stack.wait_for_api()
        api = cli.api_client(paths)
        for dag_id in ("bench_flywheel", "bench_blueprint", "bench_mapped"):
            api.wait_for_dag(dag_id, timeout=300)
            api.unpause(dag_id)

        results: dict = {"config": config}
        parse_env = {**env, "AIRFLOW_HOME": str(paths.airflow_home)}
        results["parse_s"] = {"flywheel_dags.py": parse_time(ROOT / "dags", {**parse_env, "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags")}),
                              "bench_dags.py": parse_time(HERE / "dags", parse_env)}

        c, critical, slot_seconds = ideal_makespan(seconds, slots, runs=args.runs, workloads=args.workloads,
                                                   candidates=args.candidates, gpus=args.gpus)
        n_jobs = args.runs * args.workloads * args.candidates * len(seconds)
        results["c"] = {"makespan_s": c, "critical_path_s": critical, "slot_seconds": slot_seconds, "jobs": n_jobs}

        print(f"(b) ours: {args.runs} runs at once, {n_jobs} GPU jobs, pool of {args.gpus} ...", flush=True)
        ids, t0 = trigger_runs(api, "bench_flywheel", args.runs, "ours")
        runs_b = wait_runs(api, "bench_flywheel", ids, timeout=3600)
        jobs_b = gpu_jobs(api, "bench_flywheel", runs_b, seconds)
        b = makespan(runs_b, t0)
        starts = [j["start"] for j in jobs_b if j["start"]]
        ends = [j["end"] for j in jobs_b if j["end"]]
        results["b"] = {"makespan_s": b, "states": sorted({r["state"] for r in runs_b}),
                        # Where the makespan goes: before the first GPU job (register, curate, plan,
                        # prepare), the GPU jobs' span, and after the last one (evaluate, leaderboard).
                        "first_gpu_job_after_s": min(starts) - t0, "gpu_span_s": max(ends) - min(starts),
                        "after_last_gpu_job_s": max(_ts(r["end_date"]) for r in runs_b) - max(ends)}
        overhead = [j["end"] - j["start"] - j["nominal"] for j in jobs_b if j["end"] and j["nominal"] is not None]
        others = other_tasks(api, "bench_flywheel", runs_b)
        results["overhead"] = {
            "gpu_job_median_s": statistics.median(overhead), "gpu_job_p90_s": sorted(overhead)[int(0.9 * len(overhead))],
            "other_task_median_s": statistics.median(others), "other_tasks": len(others),
            "max_busy_slots": max(bz for _, bz in busy_slots(jobs_b)),
        }
        series = {f"(b) ours: {args.runs} runs at once, makespan {b:.0f} s (ideal {c:.0f} s)": busy_slots(jobs_b)}
        print(f"(b) {b:.0f} s = {b / c:.2f} x (c) {c:.0f} s; first GPU job after "
              f"{results['b']['first_gpu_job_after_s']:.0f} s, GPU span {results['b']['gpu_span_s']:.0f} s", flush=True)
        save(results, args.json)

        # The mapped run before the blueprint's: (a) is the long leg (its jobs one at a time).
        if args.mapped:
            print(f"one run mapping {args.mapped} experiments ...", flush=True)
            ids, t0 = trigger_runs(api, "bench_mapped", 1, "mapped")
            run = wait_runs(api, "bench_mapped", ids, timeout=4 * 3600)[0]
            tis = api.task_instances("bench_mapped", run["dag_run_id"])
            source = next(t for t in tis if t["task_id"] == "experiments")
            mapped = [t for t in tis if t["task_id"] == "experiment"]
            expanded = _ts(source["end_date"])
            queued = [_ts(t.get("queued_when")) for t in mapped if t.get("queued_when")]
            ends = [_ts(t["end_date"]) for t in mapped if t["end_date"]]
            results["mapped"] = {
                "n": len(mapped), "succeeded": sum(t["state"] == "success" for t in mapped),
                "all_queued_after_s": max(queued) - expanded,
                "all_done_after_s": max(ends) - expanded,
                "per_task_s": (max(ends) - expanded) / len(mapped),
                "run_state": run["state"],
            }
            save(results, args.json)

        if not args.skip_blueprint:
            print("(a) the blueprint's way: one run, one GPU job at a time ...", flush=True)
            ids, t0 = trigger_runs(api, "bench_blueprint", args.runs, "blueprint")
            runs_a = wait_runs(api, "bench_blueprint", ids, timeout=4 * 3600)
            jobs_a = gpu_jobs(api, "bench_blueprint", runs_a, seconds)
            a = makespan(runs_a, t0)
            serial = sum(j["nominal"] for j in jobs_a)
            results["a"] = {"makespan_s": a, "states": sorted({r["state"] for r in runs_a}),
                            "sum_of_job_seconds": serial, "overhead_per_job_s": (a - serial) / len(jobs_a)}
            # Each job holds the whole pool; what it uses is its own slots.
            series[f"(a) the blueprint's way: makespan {a:.0f} s"] = busy_slots(
                [{**j, "slots": slots.get(j["strategy"], 1)} for j in jobs_a])
        plot(args.plot, series, args.gpus)

        report(results, args)
        save(results, args.json)
        return 0
    finally:
        stack.stop_airflow(paths)
        stack.stop_postgres(paths)
        shutil.rmtree(home, ignore_errors=True)


def save(results: dict, path: Path | None) -> None:
    """The figures so far (after each leg: a long run that stops early keeps what it measured)."""
    if path:
        path.write_text(json.dumps(results, indent=2))


def report(r: dict, args) -> None:
    c = r["c"]["makespan_s"]
    lines = ["", "| measure | value |", "|---|---|",
             f"| jobs | {r['c']['jobs']} GPU jobs ({args.runs} runs x {args.workloads} workloads x {args.candidates} "
             f"candidates x {len(r['config']['seconds'])} strategies), {r['config']['seconds']} s, LoRA "
             f"{args.lora_slots} slots, G = {args.gpus} |",
             f"| (c) ideal: max(critical path {r['c']['critical_path_s']:.0f} s, slot-seconds {r['c']['slot_seconds']:.0f} / G) | {c:.0f} s |",
             f"| (b) ours, {args.runs} runs at once | {r['b']['makespan_s']:.0f} s = {r['b']['makespan_s'] / c:.2f} x (c) (goal <= 1.15) |",
             f"| (b) where it went | {r['b']['first_gpu_job_after_s']:.0f} s to the first GPU job, GPU jobs over "
             f"{r['b']['gpu_span_s']:.0f} s ({r['b']['gpu_span_s'] / c:.2f} x (c)), {r['b']['after_last_gpu_job_s']:.0f} s after the last |"]
    if "a" in r:
        a, b = r["a"]["makespan_s"], r["b"]["makespan_s"]
        lines += [f"| (a) blueprint, one run and one job at a time | {a:.0f} s ({r['a']['sum_of_job_seconds']:.0f} s of jobs + "
                  f"{r['a']['overhead_per_job_s']:.1f} s per job) |",
                  f"| (a)/(b) vs (a)/(c) | {a / b:.2f} vs {a / c:.2f}: {a / b / (a / c):.2f} of the ideal speed-up (goal >= 0.8) |"]
    o = r["overhead"]
    lines += [f"| per-task overhead | GPU job: median {o['gpu_job_median_s']:.1f} s, p90 {o['gpu_job_p90_s']:.1f} s beyond its "
              f"duration; other tasks: median {o['other_task_median_s']:.1f} s each ({o['other_tasks']}) |",
              f"| most GPU slots busy at once (pool {args.gpus}) | {o['max_busy_slots']} |",
              f"| DAG parse time | dags/flywheel_dags.py {r['parse_s']['flywheel_dags.py']:.2f} s, bench {r['parse_s']['bench_dags.py']:.2f} s |"]
    if "mapped" in r:
        m = r["mapped"]
        lines += [f"| one run, {m['n']} mapped experiments | all queued {m['all_queued_after_s']:.0f} s and all done "
                  f"{m['all_done_after_s']:.0f} s after the expansion: {m['per_task_s']:.2f} s per task (goal < 2) |"]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
