"""The production stack, checked offline (no Docker engine, no cluster here): docker-compose.yaml
against the compose-spec JSON schema (vendored by check-jsonschema), the Airflow image's
Dockerfile with hadolint, the compose init step, the Helm values and the Kubernetes manifests."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from flywheel.config import DEFAULT_CONFIG, PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
DOCKERFILE = PROJECT_ROOT / "images" / "airflow" / "Dockerfile"
HELM = PROJECT_ROOT / "deploy" / "helm"
AIRFLOW_SERVICES = ("airflow-init", "api-server", "scheduler", "dag-processor", "triggerer")
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_compose_file_is_valid_against_the_compose_spec(compose):
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose)


def test_every_secret_comes_from_the_environment(compose):
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    required = {m.group(1) for s in _strings(compose) for m in _VAR.finditer(s) if m.group(2) == "?"}
    assert required and required <= set(example), required - set(example)
    for service in compose["services"].values():
        env = service.get("environment") or {}
        for key, value in env.items():
            if re.search(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY|ACCESS_KEY)$", key) or "://" in str(value) and "@" in str(value):
                assert "${" in str(value), f"{key} has a literal secret in docker-compose.yaml"


def test_one_airflow_image_built_once_and_nothing_installed_at_start(compose):
    services = compose["services"]
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["airflow-init"]
    assert services["airflow-init"]["build"]["dockerfile"] == "images/airflow/Dockerfile"
    image = services["airflow-init"]["image"]
    for name in (*AIRFLOW_SERVICES, "model-server"):
        assert services[name]["image"] == image
        assert "serving-adapters:/opt/flywheel/serving-adapters" in services[name]["volumes"]
        assert name == "airflow-init" or services[name]["pull_policy"] == "never"
    for name, service in services.items():
        command = " ".join(map(str, (service.get("entrypoint") or []) + (service.get("command") or [])))
        assert not re.search(r"\bpip3?\b|uv pip", command), f"{name} installs packages at start: {command}"


def test_ports_are_bound_to_localhost_and_airflow_waits_for_its_init(compose):
    services = compose["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)
    assert "127.0.0.1:8080:8080" in services["api-server"]["ports"]
    for name in AIRFLOW_SERVICES[1:]:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    init = services["airflow-init"]
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert init["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert init["command"] == ["python", "/opt/flywheel/include/compose/airflow_init.py"]
    for name in ("postgres", "minio", "elasticsearch", "model-server", "scheduler", "api-server"):
        assert name in services
    env = services["scheduler"]["environment"]
    assert ":-s3://" in env["FLYWHEEL_ARTIFACTS"] and env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def _airflow_init():
    spec = importlib.util.spec_from_file_location("airflow_init", PROJECT_ROOT / "include/compose/airflow_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_init_step_creates_the_pool_the_connections_and_the_admin(monkeypatch, tmp_path):
    init = _airflow_init()
    monkeypatch.setenv("FLYWHEEL_DB_PASSWORD", "p@ss:w/rd?&")
    monkeypatch.setenv("FLYWHEEL_S3_ACCESS_KEY", "flywheel")
    monkeypatch.setenv("FLYWHEEL_S3_SECRET_KEY", "s3-secret")
    monkeypatch.setenv("FLYWHEEL_GPU_SLOTS", "4")
    commands = init.commands()
    assert commands[0] == ["airflow", "db", "migrate"]
    assert ["airflow", "pools", "set", "flywheel_gpu", "4",
            "GPU slots of the flywheel (a slot is a GPU)"] in commands
    added = {c[3]: json.loads(c[5]) for c in commands if c[1:3] == ["connections", "add"]}
    assert set(added) == {"flywheel_db", "flywheel_artifacts", "elasticsearch_default"}
    assert added["flywheel_db"]["password"] == "p@ss:w/rd?&" and added["flywheel_db"]["login"] == "flywheel"
    assert added["flywheel_artifacts"]["extra"]["endpoint_url"] == "http://minio:9000"
    monkeypatch.setenv("FLYWHEEL_GPU_SLOTS", "zero")
    with pytest.raises(SystemExit, match="FLYWHEEL_GPU_SLOTS"):
        init.commands()
    monkeypatch.delenv("FLYWHEEL_DB_PASSWORD")
    with pytest.raises(SystemExit, match="FLYWHEEL_DB_PASSWORD is not set"):
        init.connections()
    target = tmp_path / "secrets" / "passwords.json"
    init.write_private(target, '{"admin": "x"}')
    assert target.stat().st_mode & 0o777 == 0o600 and json.loads(target.read_text()) == {"admin": "x"}


def test_the_airflow_dockerfile_is_lint_clean_and_pins_what_it_installs():
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = DOCKERFILE.read_text()
    assert "FROM apache/airflow:3.3.2-python3.11" in text
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in text
    assert "-c constraints.txt -r requirements.txt" in text


# --- Helm ------------------------------------------------------------------------------------------

# Top-level keys of the official chart's values (apache-airflow/airflow 1.22.0) that the flywheel's
# values may set; anything else is a typo the chart would reject or silently ignore.
CHART_KEYS = {"airflowVersion", "defaultAirflowRepository", "defaultAirflowTag", "images", "executor",
              "allowPodLaunching", "postgresql", "redis", "pgbouncer", "data", "fernetKeySecretName",
              "apiSecretKeySecretName", "jwtSecretName", "env", "secret", "extraEnvFrom", "migrateDatabaseJob",
              "createUserJob", "dagProcessor", "scheduler", "apiServer", "triggerer", "workers", "config", "dags",
              "logs", "volumes", "volumeMounts"}


@pytest.fixture(scope="module")
def helm_values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = []
    for name in ("flywheel-jobs.yaml", "secrets.example.yaml"):
        docs += [d for d in yaml.safe_load_all((HELM / name).read_text()) if d]
    return docs


def test_helm_values_use_chart_keys_and_deploy_the_kubernetes_backend(helm_values):
    assert set(helm_values) <= CHART_KEYS, set(helm_values) - CHART_KEYS
    assert helm_values["executor"] in ("KubernetesExecutor", "CeleryExecutor")
    assert helm_values["airflowVersion"] == "3.3.2" and helm_values["postgresql"]["enabled"] is False
    env = {e["name"]: e["value"] for e in helm_values["env"]}
    assert env["FLYWHEEL_GPU_BACKEND"] == "kubernetes" and env["FLYWHEEL_ARTIFACTS"].startswith("s3://")
    assert int(env["FLYWHEEL_GPU_SLOTS"]) >= 1
    # Every deployment path creates the pool: here the chart's migration job does.
    job = " ".join(helm_values["migrateDatabaseJob"]["args"])
    assert "airflow db migrate" in job and 'airflow pools set flywheel_gpu "${FLYWHEEL_GPU_SLOTS}"' in job
    assert not [s for s in _strings(helm_values) if re.search(r"(password|secret)[\"']?\s*[:=]", s, re.I)]


def test_every_secret_the_values_reference_is_defined_with_its_keys(helm_values, manifests):
    secrets = {(d["metadata"]["name"]): set(d["stringData"]) for d in manifests if d["kind"] == "Secret"}
    wanted = {helm_values["data"]["metadataSecretName"]: {"connection"},
              helm_values["fernetKeySecretName"]: {"fernet-key"},
              helm_values["apiSecretKeySecretName"]: {"api-secret-key"},
              helm_values["jwtSecretName"]: {"jwt-secret"}}
    for entry in helm_values["secret"]:
        wanted.setdefault(entry["secretName"], set()).add(entry["secretKey"])
    for name, keys in wanted.items():
        assert name in secrets and keys <= secrets[name], (name, keys)
    conns = {e["envName"] for e in helm_values["secret"]}
    assert {"AIRFLOW_CONN_FLYWHEEL_DB", "AIRFLOW_CONN_FLYWHEEL_ARTIFACTS"} <= conns


def test_the_trainer_namespace_account_and_secret_match_the_backend_settings(helm_values, manifests):
    """The names the Kubernetes backend uses (include/flywheel.yaml with the values' env) exist."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())["kubernetes"]
    env = {e["name"]: e["value"] for e in helm_values["env"]}

    def expand(value: str) -> str:
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(3) or ""), value)

    namespace, account = expand(raw["namespace"]), expand(raw["service_account"])
    kinds = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in manifests}
    assert ("Namespace", namespace, None) in kinds
    assert ("ServiceAccount", account, namespace) in kinds
    assert ("Secret", raw["artifacts_secret"], namespace) in kinds
    role = next(d for d in manifests if d["kind"] == "Role")
    pods = next(r for r in role["rules"] if r["resources"] == ["pods"])
    assert {"create", "get", "watch", "delete"} <= set(pods["verbs"])


def test_kubernetes_manifests_are_valid(manifests):
    for doc in manifests:
        kubernetes_validate.validate(doc, "1.30", strict=True)
