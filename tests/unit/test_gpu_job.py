"""The GPU job spec and its Kubernetes backend, validated offline against the Kubernetes schema."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from flywheel.gpu_job import GPU_POOL, GpuJob, dns1123_name, label_value

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
HOSTILE = ["../../etc/passwd", "x'; DROP TABLE runs;--", "Ünïcode wörkload", "$(rm -rf /)", "a" * 300, "---", ""]


@pytest.mark.parametrize("raw", HOSTILE + ["tool_router · tiny-lm-1.6m · lora"])
def test_names_and_labels_are_valid_kubernetes(raw):
    name = dns1123_name(raw)
    assert DNS1123.match(name) and len(name) <= 63
    value = label_value(raw)
    assert LABEL.match(value) and len(value) <= 63


def test_distinct_inputs_get_distinct_names():
    assert dns1123_name("a/b") != dns1123_name("a_b")


def _job(workload="tool_router", gpus=2) -> GpuJob:
    return GpuJob(
        name=f"{workload} · tiny-lm-1.6m · lora",
        image="registry.example/flywheel-trainer:0.1.0",
        args=["run"],
        gpus=gpus,
        memory="16Gi",
        labels={"flywheel.io/workload": workload, "flywheel.io/strategy": "lora"},
        spec={"strategy": "lora", "eval_file": "s3://b/eval.jsonl"},
    )


def test_round_trip_ignores_context_keys():
    d = {"experiment": {"run_key": "r"}, **_job().to_dict()}
    assert GpuJob.from_dict(d) == _job()


@pytest.mark.parametrize("workload", ["tool_router", "x'; DROP TABLE runs;--", "../../etc/passwd"])
def test_kubernetes_pod_is_valid_and_asks_for_gpus(workload):
    from airflow.sdk import DAG

    from flywheel_operators.kubernetes import KubernetesGpuJobOperator

    with DAG("t", schedule=None):
        op = KubernetesGpuJobOperator(task_id="gpu_job", job=_job(workload).to_dict(), pool=GPU_POOL, pool_slots=2)
    pod = op.build_pod_request_obj(dry_run=True)
    manifest = ApiClient().sanitize_for_serialization(pod)
    manifest.setdefault("apiVersion", "v1")
    manifest.setdefault("kind", "Pod")
    kubernetes_validate.validate(manifest, "1.30", strict=True)

    container = pod.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert container.command == ["python", "-m", "flywheel_trainer"]
    assert container.args[:2] == ["run", "--spec-json"]  # a list of arguments: no shell anywhere
    assert any(t.key == "nvidia.com/gpu" for t in pod.spec.tolerations)
    assert pod.spec.node_selector == {"flywheel.io/node-pool": "gpu"}
    assert DNS1123.match(pod.metadata.name)
    for value in pod.metadata.labels.values():
        assert LABEL.match(value)
    assert op.pool == GPU_POOL and op.pool_slots == 2
