"""The GPU job and its Kubernetes backend, without a cluster: every job type's pod is built with the
operator's own build_pod_request_obj() and validated against the Kubernetes schema (kubernetes-
validate); names and labels from hostile workload ids; failed pods classified (retry or not)."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from flywheel.gpu_job import GPU_POOL, GpuJob, dns1123_name, label_value
from flywheel_operators.kubernetes import (XCOM_RESULT, KubernetesGpuJobOperator, KubernetesSettings,
                                           classify_pod_failure, operator_kwargs)
from flywheel_trainer.spec import JobSpec, LoraSpec

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
HOSTILE = ["../../etc/passwd", "x'; DROP TABLE runs;--", "Ünïcode wörkload", "$(rm -rf /)", "a" * 300, "---", "",
           "a/b", "a_b", "tool_router\nkubectl delete ns"]
SETTINGS = KubernetesSettings(namespace="ml-flywheel", service_account="trainer", models_pvc="flywheel-models",
                              priority_class_name="flywheel-batch", image_pull_secrets=["regcred"],
                              affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                  "nodeSelectorTerms": [{"matchExpressions": [
                                      {"key": "gpu.type", "operator": "In", "values": ["a100", "h100"]}]}]}}})


@pytest.mark.parametrize("raw", HOSTILE + ["tool_router · tiny-lm-1.6m · lora"])
def test_names_and_labels_are_valid_kubernetes(raw):
    name = dns1123_name(raw)
    assert DNS1123.match(name) and len(name) <= 63
    value = label_value(raw)
    assert LABEL.match(value) and len(value) <= 63


def test_distinct_inputs_get_distinct_names_and_labels():
    names = {dns1123_name(r) for r in HOSTILE}
    labels = {label_value(r) for r in HOSTILE}
    assert len(names) == len(labels) == len(HOSTILE)
    assert label_value("tool_router") == "tool_router"  # a valid value is kept as it is
    assert label_value("a/b") != label_value("a_b")


def test_round_trip_ignores_context_keys():
    job = _job()
    assert GpuJob.from_dict({"experiment": {"run_key": "r"}, "fingerprint": "f", **job.to_dict()}) == job


def _job(workload="tool_router", strategy="lora", gpus=2) -> GpuJob:
    out = "s3://flywheel/runs/r-1/experiments/e-1"
    return GpuJob(
        name=f"{workload} · tiny-lm-1.6m · {strategy}",
        image="registry.example/flywheel-trainer:0.1.0",
        args=["run"],
        gpus=gpus,
        memory="16Gi",
        inputs={"eval": "s3://flywheel/runs/r-1/inputs/abc.jsonl"},
        outputs={"predictions": f"{out}/predictions.jsonl", "adapter": f"{out}/adapter"},
        labels={"flywheel.io/run": "flywheel_daily/scheduled__2026-11-29T00:00:00+00:00",
                "flywheel.io/workload": workload, "flywheel.io/strategy": strategy},
        spec=JobSpec(job_name=f"{workload} · tiny-lm-1.6m · {strategy}", candidate="tiny-lm-1.6m", strategy=strategy,
                     model_uri="/models/tiny-lm-1.6m", eval_uri="s3://flywheel/runs/r-1/inputs/abc.jsonl",
                     train_uri="s3://flywheel/runs/r-1/inputs/def.jsonl" if strategy == "lora" else None,
                     val_uri="s3://flywheel/runs/r-1/inputs/0a1.jsonl" if strategy == "lora" else None,
                     output_uri=out, lora=LoraSpec() if strategy == "lora" else None,
                     ).model_dump(mode="json", exclude_none=True),
    )


def _operator(job: GpuJob, settings: KubernetesSettings = SETTINGS) -> KubernetesGpuJobOperator:
    from airflow.sdk import DAG

    with DAG("t", schedule=None):
        return KubernetesGpuJobOperator(task_id="gpu_job", job=job.to_dict(), pool=GPU_POOL, pool_slots=job.gpus,
                                        **operator_kwargs(settings))


def _manifest(op: KubernetesGpuJobOperator) -> tuple[k8s.V1Pod, dict]:
    pod = op.build_pod_request_obj(dry_run=True)
    manifest = ApiClient().sanitize_for_serialization(pod)
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    return pod, manifest


@pytest.mark.parametrize("strategy", ["base", "icl", "lora"])
def test_every_job_types_pod_is_valid_and_complete(strategy):
    pod, manifest = _manifest(_operator(_job(strategy=strategy)))
    base = next(c for c in pod.spec.containers if c.name == "base")
    # What runs: the trainer entrypoint with its arguments as a list (no shell anywhere) and the
    # result file the XCom sidecar returns to Airflow.
    assert base.command == ["python", "-m", "flywheel_trainer"]
    assert base.args[:2] == ["run", "--spec-json"] and base.args[-2:] == ["--result-file", XCOM_RESULT]
    assert f'"strategy": "{strategy}"' in base.args[2]
    assert any(c.name == "airflow-xcom-sidecar" for c in pod.spec.containers)
    # Where: namespace, service account, GPU nodes, scheduling constraints from the configuration.
    assert pod.metadata.namespace == "ml-flywheel" and pod.spec.service_account_name == "trainer"
    assert pod.spec.node_selector == {"flywheel.io/node-pool": "gpu"}
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in pod.spec.tolerations)
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_expressions[0].values == ["a100", "h100"]
    assert pod.spec.priority_class_name == "flywheel-batch" and pod.spec.restart_policy == "Never"
    assert [s.name for s in pod.spec.image_pull_secrets] == ["regcred"]
    # Resources: GPUs and memory from the candidate, CPU and disk from the configuration.
    assert base.resources.limits == {"nvidia.com/gpu": "2", "memory": "16Gi"}
    assert base.resources.requests == {"nvidia.com/gpu": "2", "memory": "16Gi", "cpu": "4",
                                       "ephemeral-storage": "50Gi"}
    # Weights from a read-only volume; object-storage credentials only from a Kubernetes secret.
    mounts = {m.name: (m.mount_path, m.read_only) for m in base.volume_mounts}
    assert mounts == {"models": ("/models", True), "xcom": ("/airflow/xcom", None)}  # weights, result
    claim = next(v for v in pod.spec.volumes if v.name == "models").persistent_volume_claim
    assert claim.claim_name == "flywheel-models" and claim.read_only
    assert [e.secret_ref.name for e in base.env_from] == ["flywheel-artifacts"]
    literal = {e.name: e.value for e in base.env or []}
    assert not [k for k in literal if k.startswith("AWS_") or "SECRET" in k or "PASSWORD" in k or "TOKEN" in k]
    assert base.security_context.allow_privilege_escalation is False and base.security_context.run_as_non_root
    assert manifest["spec"]["containers"][0]["image"] == "registry.example/flywheel-trainer:0.1.0"


@pytest.mark.parametrize("workload", HOSTILE)
def test_hostile_workload_ids_give_valid_distinct_traceable_pods(workload):
    pod, _ = _manifest(_operator(_job(workload=workload)))
    assert DNS1123.match(pod.metadata.name) and len(pod.metadata.name) <= 63
    for key, value in pod.metadata.labels.items():
        assert LABEL.match(value) and len(value) <= 63, (key, value)
    label = pod.metadata.labels["flywheel.io/workload"]
    assert label == label_value(workload)
    # A label that had to be hashed is traceable back: the original is in an annotation.
    assert pod.metadata.annotations["flywheel.io/original-workload"] == workload
    other, _ = _manifest(_operator(_job(workload=workload + "x")))
    assert other.metadata.labels["flywheel.io/workload"] != label
    # The name keeps its hash after the provider's random suffix: distinct jobs, distinct names.
    assert pod.metadata.name.rsplit("-", 1)[0] != other.metadata.name.rsplit("-", 1)[0]


def test_the_job_of_a_real_experiment_builds_a_valid_pod(tmp_path, monkeypatch):
    """Through the real job builder: dataset -> inputs in the store -> GpuJob -> pod."""
    from flywheel.adapters import object_storage
    from flywheel.adapters.jobs import build_job, output_dir
    from flywheel.config import load_config
    from flywheel.experiments import ExperimentSpec

    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}/artifacts")
    rows = [{"id": str(i), "split": split, "label": "x",
             "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
             "response": {"choices": [{"message": {"role": "assistant", "content": f"a{i}"}}]}}
            for i, split in enumerate(["eval"] * 3 + ["train"] * 12 + ["val"] * 2)]
    run_key = "flywheel_daily/scheduled__2026-11-29T00:00:00+00:00"
    dataset = object_storage.put_jsonl("datasets", rows, run_key=run_key)
    for strategy in ("base", "lora"):
        spec = ExperimentSpec(run_key=run_key, workload_id="x'; DROP TABLE runs;--", kind="chat",
                              candidate="tiny-lm-1.6m", strategy=strategy, dataset_uri=dataset)
        job = build_job(spec, load_config())
        # The job's typed spec: every input and output a run-scoped URI of the store, the output
        # folder the one the operators read back.
        trainer_spec = JobSpec.model_validate(job["spec"])
        assert trainer_spec.output_uri == output_dir(job)
        assert trainer_spec.output_uri.startswith(object_storage.root_uri() + "/runs/")
        assert trainer_spec.eval_uri == job["inputs"]["eval"]
        assert (trainer_spec.lora is not None) == (strategy == "lora") == (trainer_spec.train_uri is not None)
        pod, _ = _manifest(_operator(GpuJob.from_dict(job)))
        args = pod.spec.containers[0].args
        assert JobSpec.model_validate_json(args[args.index("--spec-json") + 1]) == trainer_spec
        assert pod.metadata.annotations["flywheel.io/original-workload"] == spec.workload_id


def _pod(*, phase="Failed", reason=None, terminated=None, waiting=None, conditions=()) -> k8s.V1Pod:
    state = k8s.V1ContainerState(terminated=terminated, waiting=waiting)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p"), status=k8s.V1PodStatus(
        phase=phase, reason=reason, conditions=list(conditions),
        container_statuses=[k8s.V1ContainerStatus(name="base", state=state, image="i", image_id="", ready=False,
                                                   restart_count=0)]))


FAILURES = [
    (_pod(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")), False, "OOMKilled"),
    (_pod(terminated=k8s.V1ContainerStateTerminated(exit_code=2, reason="Error",
                                                    message="spec field 'strategy' is 'dpo'")), False,
     "invalid job spec or input (exit 2): spec field 'strategy' is 'dpo'"),
    (_pod(terminated=k8s.V1ContainerStateTerminated(exit_code=1, reason="Error")), True, "trainer exited with 1"),
    (_pod(phase="Pending", waiting=k8s.V1ContainerStateWaiting(reason="ImagePullBackOff",
                                                                message="Back-off pulling image")), True,
     "ImagePullBackOff"),
    (_pod(phase="Pending", waiting=k8s.V1ContainerStateWaiting(reason="InvalidImageName")), False, "InvalidImageName"),
    (_pod(phase="Pending", waiting=k8s.V1ContainerStateWaiting(
        reason="CreateContainerConfigError", message='secret "flywheel-artifacts" not found')), False,
     'secret "flywheel-artifacts" not found'),
    (_pod(reason="Evicted", terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="Error")), True,
     "preempted (Evicted"),
    (_pod(conditions=[k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="PreemptionByScheduler",
                                         message="preempted by a higher-priority pod")]), True,
     "preempted (PreemptionByScheduler"),
    (_pod(phase="Pending", conditions=[k8s.V1PodCondition(type="PodScheduled", status="False",
                                                          reason="Unschedulable", message="0/3 nodes have GPUs")]),
     True, "not scheduled (Unschedulable: 0/3 nodes have GPUs)"),
]


@pytest.mark.parametrize(("pod", "retryable", "reason"), FAILURES)
def test_failed_pods_are_classified(pod, retryable, reason):
    failure = classify_pod_failure(pod)
    assert failure.retryable is retryable and reason in failure.reason


@pytest.mark.parametrize(("pod", "retryable", "reason"), FAILURES)
def test_a_failure_that_a_retry_cannot_fix_is_not_retried(pod, retryable, reason, monkeypatch):
    """When the provider's cleanup reports a failed pod (its AirflowException, stood in for here:
    there is no cluster to ask), the operator raises AirflowFailException (Airflow never retries
    it) or a plain AirflowException (retried with backoff), with the reason the experiment records."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    def provider_cleanup(self, pod, remote_pod, xcom_result=None, context=None):
        raise AirflowException(f"Pod {pod.metadata.name} returned a failure.")

    monkeypatch.setattr(KubernetesPodOperator, "cleanup", provider_cleanup)
    op = _operator(_job(), KubernetesSettings(artifacts_secret=None))
    with pytest.raises(AirflowException) as raised:
        op.cleanup(pod, pod)
    assert isinstance(raised.value, AirflowFailException) is (not retryable)
    assert reason in str(raised.value)


def test_retries_backoff_and_time_limit_come_from_the_configuration():
    kwargs = operator_kwargs(KubernetesSettings(retries=5, retry_delay_seconds=30, execution_timeout_minutes=90))
    op = _operator(_job(), kwargs.pop("settings"))
    assert kwargs["retries"] == 5 and kwargs["retry_exponential_backoff"] is True
    assert kwargs["retry_delay"].total_seconds() == 30 and kwargs["execution_timeout"].total_seconds() == 5400
    assert op.deferrable and op.do_xcom_push and op.on_finish_action == "delete_pod"
    assert op.reattach_on_restart  # a restarted worker reattaches to its running pod


def test_settings_refuse_unknown_keys():
    with pytest.raises(ValueError, match="node_selectors"):
        KubernetesSettings.model_validate({"node_selectors": {}})


def test_a_candidate_sets_its_own_answer_budget(tmp_path, monkeypatch):
    """max_new_tokens counts the candidate's own tokens: a candidate's setting wins over the default,
    and one that leaves no room for the prompt in its context is refused with the key named."""
    import yaml

    from flywheel.adapters import object_storage
    from flywheel.adapters.jobs import build_job
    from flywheel.config import DEFAULT_CONFIG, ConfigError, load_config, parse_config
    from flywheel.experiments import ExperimentSpec

    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}/artifacts")
    rows = [{"id": str(i), "split": split, "label": "x",
             "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
             "response": {"choices": [{"message": {"role": "assistant", "content": f"a{i}"}}]}}
            for i, split in enumerate(["eval"] * 3 + ["train"] * 12)]
    run_key = "flywheel_on_demand/manual__1"
    dataset = object_storage.put_jsonl("datasets", rows, run_key=run_key)
    cfg = load_config()
    spec = ExperimentSpec(run_key=run_key, workload_id="w", kind="chat", candidate="tiny-lm-1.6m",
                          strategy="base", dataset_uri=dataset)
    want = cfg.candidates["tiny-lm-1.6m"].max_new_tokens or cfg.max_new_tokens
    assert JobSpec.model_validate(build_job(spec, cfg)["spec"]).generation.max_new_tokens == want
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["candidates"]["tiny-lm-1.6m"]["max_new_tokens"] = 200
    other = parse_config(raw)
    assert JobSpec.model_validate(build_job(spec, other)["spec"]).generation.max_new_tokens == 200
    raw["candidates"]["tiny-lm-1.6m"]["max_seq_len"] = 200
    with pytest.raises(ConfigError, match=r"candidates.tiny-lm-1.6m.max_seq_len must exceed "
                                          r"candidates.tiny-lm-1.6m.max_new_tokens \(200\)"):
        parse_config(raw)


def test_fine_tuning_experiments_are_planned_first():
    """The pool starts mapped jobs in map-index order: the long LoRA jobs go first, so the short
    zero-shot and ICL jobs fill the other slots instead of leaving a LoRA job to run alone at the end."""
    from flywheel.experiments import plan_experiments

    datasets = [{"usable": True, "run_key": "r", "workload_id": w, "kind": "chat", "uri": f"file:///{w}", "n_train": n}
                for w, n in (("tool_router", 658), ("invoice_extraction", 501), ("support_qa", 409))]
    datasets.append({"usable": False, "workload_id": "small"})
    specs = plan_experiments(datasets, candidate="c", strategies=["base", "icl", "lora"], training_profile=None)
    # LoRA first, the largest training set first (the longest job); then the rest by workload
    assert [(s["workload_id"], s["strategy"]) for s in specs] == [
        ("tool_router", "lora"), ("invoice_extraction", "lora"), ("support_qa", "lora"),
        ("invoice_extraction", "base"), ("invoice_extraction", "icl"), ("support_qa", "base"),
        ("support_qa", "icl"), ("tool_router", "base"), ("tool_router", "icl")]
    # equal training sets: by workload id, whatever order curation finished in
    for ds in datasets[:3]:
        ds["n_train"] = 100
    lora = [s["workload_id"] for s in plan_experiments(datasets[::-1], candidate="c", strategies=["lora"],
                                                        training_profile=None)]
    assert lora == ["invoice_extraction", "support_qa", "tool_router"]
