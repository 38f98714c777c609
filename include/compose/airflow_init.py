"""The compose stack's init step (service `airflow-init`), run before Airflow starts, at every
`docker compose up` (each step is idempotent):

1. migrate Airflow's metadata database;
2. the admin's password file for Airflow's simple auth manager (0600, from AIRFLOW_ADMIN_PASSWORD);
3. the GPU pool `flywheel_gpu` (FLYWHEEL_GPU_SLOTS slots);
4. the connections: `flywheel_db` (the flywheel's own PostgreSQL role), `flywheel_artifacts` (MinIO
   through the Amazon provider's S3 filesystem), `elasticsearch_default`;
5. the local student models, into the shared models volume (nothing is downloaded).

Secrets come from the environment (.env) and go to Airflow as JSON (`--conn-json`): no password
needs URL-quoting, and none passes through a shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GPU_POOL = "flywheel_gpu"


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: put it in .env (see .env.example)")
    return value


def connections() -> dict[str, dict]:
    return {
        "flywheel_db": {"conn_type": "postgres", "host": "postgres", "port": 5432, "schema": "flywheel",
                        "login": "flywheel", "password": env("FLYWHEEL_DB_PASSWORD")},
        "flywheel_artifacts": {"conn_type": "aws", "login": env("FLYWHEEL_S3_ACCESS_KEY"),
                               "password": env("FLYWHEEL_S3_SECRET_KEY"),
                               "extra": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}},
        "elasticsearch_default": {"conn_type": "elasticsearch", "host": "elasticsearch", "port": 9200,
                                  "schema": "http"},
    }


def commands() -> list[list[str]]:
    """The Airflow CLI calls of the init step, in order (a delete before each add: values may change)."""
    slots = os.environ.get("FLYWHEEL_GPU_SLOTS", "2")
    if not slots.isdigit() or int(slots) < 1:
        raise SystemExit(f"FLYWHEEL_GPU_SLOTS={slots!r}: give the number of GPUs (a whole number >= 1)")
    out = [["airflow", "db", "migrate"],
           ["airflow", "pools", "set", GPU_POOL, slots, "GPU slots of the flywheel (a slot is a GPU)"]]
    for conn_id, conn in connections().items():
        out.append(["airflow", "connections", "delete", conn_id])
        out.append(["airflow", "connections", "add", conn_id, "--conn-json", json.dumps(conn)])
    return out


def write_private(path: Path, text: str) -> None:
    """0600 from the first byte, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main() -> int:
    passwords = Path(env("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"))
    write_private(passwords, json.dumps({"admin": env("AIRFLOW_ADMIN_PASSWORD")}))
    print(f"==> admin password file {passwords}", flush=True)
    for cmd in commands():
        shown = cmd[:4] if "--conn-json" in cmd else cmd  # never print a connection's secrets
        print("==>", " ".join(shown), flush=True)
        # Deleting a connection that does not exist yet is fine; anything else must succeed.
        subprocess.run(cmd, check=cmd[1:3] != ["connections", "delete"],
                       stdout=subprocess.DEVNULL if cmd[1:3] == ["connections", "delete"] else None,
                       stderr=subprocess.DEVNULL if cmd[1:3] == ["connections", "delete"] else None)
    print("==> student models (built once, kept in the models volume)", flush=True)
    subprocess.run([sys.executable, "-m", "flywheel_local.cli", "models", "build"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
