"""One embedded stack (PostgreSQL + Airflow 3, LocalExecutor) for every end-to-end test.

Starting it costs about a minute (student models cached in .flywheel/models, Airflow migration,
four components); each e2e test adds what it needs (its own workloads or time window) to the same
stack instead of starting another, so `make test` stays well under its time budget as e2e tests grow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from flywheel.config import DEFAULT_CONFIG, PROJECT_ROOT
from flywheel_local import cli, stack
from flywheel_local.rule_judge import MODEL_ID as JUDGE_MODEL
from flywheel_local.rule_judge import RuleJudgeServer

# The on-demand DAG's (first) candidate, the student `make demo` trains: read from the configuration,
# so the e2e follows the demo when its candidate changes.
CANDIDATE = yaml.safe_load(DEFAULT_CONFIG.read_text())["dags"]["flywheel_on_demand"]["candidates"][0]
SMALL = "tiny-lm-0.6m"  # the smallest student: runs that only check scheduling use it
BROKEN = "broken-lm"  # a candidate whose weights do not exist: every job of it must fail alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class E2EStack:
    paths: stack.StackPaths
    socket_dir: Path
    config: Path
    candidate: str = CANDIDATE
    broken: str = BROKEN
    judge: RuleJudgeServer | None = None

    def api(self):
        return cli.api_client(self.paths)

    def rows(self, sql: str, params=()) -> list[dict]:
        conn = stack.connect_flywheel(self.socket_dir)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            conn.close()


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("flywheel-home")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["candidates"][BROKEN] = {**raw["candidates"][CANDIDATE], "model_path": str(home / "no-such-model"),
                                 "build": {}}
    # The scheduled DAGs run when a test unpauses them (backfills need that): the smallest student,
    # zero-shot only, few eval items, so a scheduled run costs seconds, not a LoRA sweep.
    for dag_id in ("flywheel_daily", "flywheel_weekly"):
        raw["dags"][dag_id].update(candidates=[SMALL], strategies=["base"], eval_size=5)
    config = home / "flywheel.yaml"
    config.write_text(yaml.safe_dump(raw))
    # The judge: a real OpenAI-compatible HTTP server (rule-based grading, flywheel_local.rule_judge)
    # reached through the `flywheel_judge` Airflow connection, so the run's evaluate tasks take the
    # judge path (client, retries, PostgreSQL cache) exactly as with a real judge endpoint.
    judge = RuleJudgeServer().start()
    saved = dict(os.environ)
    os.environ.update({
        "AIRFLOW_CONN_FLYWHEEL_JUDGE": json.dumps({"conn_type": "http", "host": judge.base_url,
                                                   "password": "e2e", "extra": {"model": JUDGE_MODEL}}),
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_API_PORT": str(_free_port()),
        "FLYWHEEL_SERVING_PORT": str(_free_port()),
        "FLYWHEEL_CONFIG": str(config),
        # The student models are a cache shared with `make demo` (built once, ~1 minute).
        "FLYWHEEL_MODELS_DIR": str(PROJECT_ROOT / ".flywheel" / "models"),
        "FLYWHEEL_TRAINING_PROFILE": "cpu-demo",
        # Two slots, whatever the machine's cores (the CPU default is cores + 2): the parallel-runs
        # test checks that the pool is filled and never exceeded.
        "FLYWHEEL_GPU_SLOTS": "2",
    })
    os.environ.pop("AIRFLOW_HOME", None)  # the stack sets its own
    paths = stack.StackPaths.from_env()
    try:
        cli.build_models(paths)
        socket_dir, _ = cli.up(paths)
        # Three days of logs ending an hour ago: the on-demand window (7 days back) holds all of
        # them, and tool_router gets ~550 training examples (the student needs hundreds). They are
        # written as a file in the blueprint's format and loaded with `flywheel logs import`.
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        cli.load_demo_logs(socket_dir, paths, end=end, n_records=1800, days=3)
        yield E2EStack(paths, socket_dir, config, judge=judge)
    finally:
        judge.stop()
        stack.stop_airflow(paths)
        stack.stop_serving(paths)
        stack.stop_warm_trainer(paths)
        stack.stop_postgres(paths)
        os.environ.clear()
        os.environ.update(saved)
        if os.environ.get("FLYWHEEL_E2E_KEEP_HOME"):  # to read the stack's logs after a failure
            print(f"e2e stack home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
