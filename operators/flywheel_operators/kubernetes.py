"""The ``kubernetes`` backend: the trainer image as a pod on the GPU node pool.

A thin subclass of the provider's KubernetesPodOperator. Where the pod runs (namespace, service
account, node selector, affinity, tolerations, priority class, pull secrets, the models volume,
the object-storage secret, CPU and disk) comes from the ``kubernetes:`` section of the flywheel
configuration (``KubernetesSettings``); what it runs (image, arguments, GPUs and memory, names and
labels) from the ``GpuJob`` that arrives through XCom in the mapped task. Everything else (deferral,
log streaming, reattaching to a running pod after a restart, deleting the pod) is the provider's.

The pod reads and writes object storage itself: its credentials come from a Kubernetes secret
(``envFrom``: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_DEFAULT_REGION),
never from a value in the pod spec. Its result (the job's metrics) comes back through XCom: the
trainer writes ``/airflow/xcom/return.json`` and the provider's sidecar hands it to Airflow.

A failed pod is classified (``classify_pod_failure``): an invalid spec (exit 2), an out-of-memory
kill or an image that cannot exist fail at once, with the reason; preemption, eviction, an image
pull that may succeed later or any other crash are retried with exponential backoff.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s
from pydantic import BaseModel, ConfigDict, Field

from flywheel.adapters import object_storage
from flywheel.gpu_job import GpuJob, dns1123_name, label_value

GPU_RESOURCE = "nvidia.com/gpu"
XCOM_RESULT = "/airflow/xcom/return.json"  # where the provider's sidecar reads a pod's result
SPEC_ERROR_EXIT = 2
# The pod's name keeps its hash when the provider appends its random suffix (63 - 9 characters).
POD_NAME_MAX = 54
ORIGINAL_ANNOTATION = "flywheel.io/original-"  # + label key: the untrusted value a label was made from


class KubernetesSettings(BaseModel):
    """The ``kubernetes:`` section of the flywheel configuration (include/flywheel.yaml)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "flywheel"
    service_account: str | None = "flywheel-trainer"
    kubernetes_conn_id: str | None = None  # None: in-cluster config or the worker's kube-config
    in_cluster: bool | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=lambda: {"flywheel.io/node-pool": "gpu"})
    # Kubernetes' own (camelCase) form, as in a pod manifest.
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}])
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    cpu: str = "4"
    ephemeral_storage: str | None = "50Gi"
    artifacts_secret: str | None = "flywheel-artifacts"  # its keys become the trainer's environment
    models_pvc: str | None = None       # a PersistentVolumeClaim holding the candidates' weights
    models_mount_path: str = "/models"  # where it is mounted (read-only); model_path points inside
    execution_timeout_minutes: int = Field(360, ge=1)
    retries: int = Field(3, ge=0)
    retry_delay_seconds: int = Field(60, ge=1)
    max_retry_delay_seconds: int = Field(900, ge=1)
    startup_timeout_seconds: int = Field(900, ge=1)  # time to schedule the pod and pull the image


@dataclass(frozen=True)
class PodFailure:
    reason: str
    retryable: bool


_RETRYABLE_WAITING = {"ErrImagePull", "ImagePullBackOff", "ContainerCreating", "PodInitializing"}
_FINAL_WAITING = {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "ErrImageNeverPull"}
_PREEMPTED = {"Evicted", "Preempting", "Preempted", "NodeShutdown", "Shutdown", "Terminated", "NodeLost",
              "DeletionByTaintManager", "PreemptionByScheduler", "EvictionByEvictionAPI", "TerminationByKubelet"}


def classify_pod_failure(pod: k8s.V1Pod | None, container: str = "base") -> PodFailure:
    """Why a trainer pod failed, and whether trying again can help."""
    status = getattr(pod, "status", None)
    if status is None:
        return PodFailure("the pod could not be created or read", retryable=True)
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return PodFailure(f"preempted ({condition.reason}: {condition.message or 'the node was reclaimed'})",
                              retryable=True)
    if status.reason in _PREEMPTED:
        return PodFailure(f"preempted ({status.reason}: {status.message or 'the pod was evicted'})", retryable=True)
    state = next((c.state for c in status.container_statuses or [] if c.name == container), None)
    terminated = getattr(state, "terminated", None)
    waiting = getattr(state, "waiting", None)
    if terminated is not None:
        message = (terminated.message or "").strip()
        if terminated.reason == "OOMKilled":
            return PodFailure("OOMKilled: the job needed more memory than its limit; raise the candidate's "
                              "`memory` (or lower the batch size)", retryable=False)
        if terminated.exit_code == SPEC_ERROR_EXIT:
            return PodFailure(f"invalid job spec or input (exit 2){': ' + message if message else ''}",
                              retryable=False)
        return PodFailure(f"trainer exited with {terminated.exit_code} ({terminated.reason or 'Error'})"
                          f"{': ' + message if message else ''}", retryable=True)
    if waiting is not None:
        text = f"{waiting.reason}: {waiting.message or ''}".strip().rstrip(":")
        if waiting.reason in _FINAL_WAITING:
            return PodFailure(f"the container cannot start ({text})", retryable=False)
        if waiting.reason in _RETRYABLE_WAITING:
            return PodFailure(f"the container did not start ({text})", retryable=True)
        return PodFailure(f"the container did not start ({text})", retryable=True)
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return PodFailure(f"not scheduled ({condition.reason}: {condition.message})", retryable=True)
    return PodFailure(f"pod {status.phase or 'failed'}", retryable=True)


def operator_kwargs(settings: KubernetesSettings) -> dict[str, Any]:
    """Task arguments of the GPU job under this backend: retries only help where they can (the
    operator fails at once otherwise), with exponential backoff, and a time limit."""
    from datetime import timedelta

    return {
        "settings": settings,
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=settings.max_retry_delay_seconds),
        "execution_timeout": timedelta(minutes=settings.execution_timeout_minutes),
    }


class KubernetesGpuJobOperator(KubernetesPodOperator):
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "job")

    def __init__(
        self,
        *,
        job: dict[str, Any],
        settings: KubernetesSettings | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        s = settings if isinstance(settings, KubernetesSettings) else KubernetesSettings.model_validate(settings or {})
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("durable", True)  # a restarted worker reattaches to its running pod
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("do_xcom_push", True)
        kwargs.setdefault("log_events_on_failure", True)
        kwargs.setdefault("startup_timeout_seconds", s.startup_timeout_seconds)
        # Placeholders: the real values come from the job in apply_job().
        kwargs.setdefault("image", "flywheel-trainer")
        kwargs.setdefault("name", "flywheel-job")
        volumes, mounts = [], []
        if s.models_pvc:
            volumes.append(k8s.V1Volume(name="models", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=s.models_pvc, read_only=True)))
            mounts.append(k8s.V1VolumeMount(name="models", mount_path=s.models_mount_path, read_only=True))
        env_from = []
        if s.artifacts_secret:
            env_from.append(k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s.artifacts_secret)))
        super().__init__(
            namespace=s.namespace,
            kubernetes_conn_id=s.kubernetes_conn_id,
            in_cluster=s.in_cluster,
            service_account_name=s.service_account,
            image_pull_policy=s.image_pull_policy,
            image_pull_secrets=[k8s.V1LocalObjectReference(name=n) for n in s.image_pull_secrets] or None,
            node_selector=dict(s.node_selector),
            tolerations=list(s.tolerations),
            affinity=s.affinity,
            priority_class_name=s.priority_class_name,
            volumes=volumes,
            volume_mounts=mounts,
            env_from=env_from,
            env_vars={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
            container_security_context=k8s.V1SecurityContext(
                allow_privilege_escalation=False, run_as_non_root=True,
                capabilities=k8s.V1Capabilities(drop=["ALL"])),
            **kwargs,
        )
        self.job = job
        self.settings = s

    def apply_job(self) -> GpuJob:
        job = GpuJob.from_dict(self.job)
        self.name = dns1123_name(job.name, max_len=POD_NAME_MAX)
        self.image = job.image
        self.cmds = ["python", "-m", "flywheel_trainer"]
        # The spec travels as one argument (a JSON string), never through a shell.
        self.arguments = [*job.args, "--spec-json", json.dumps(job.spec, sort_keys=True),
                          "--result-file", XCOM_RESULT]
        self.labels = {
            "app.kubernetes.io/name": "flywheel-trainer",
            "app.kubernetes.io/part-of": "flywheel",
            **{key: label_value(str(value)) for key, value in job.labels.items()},
        }
        # Labels of untrusted ids may be hashed: the original values stay beside them.
        self.annotations = {
            f"{ORIGINAL_ANNOTATION}{key.rsplit('/', 1)[-1]}": str(value) for key, value in job.labels.items()
        }
        requests = {GPU_RESOURCE: str(job.gpus), "memory": job.memory, "cpu": self.settings.cpu}
        if self.settings.ephemeral_storage:
            requests["ephemeral-storage"] = self.settings.ephemeral_storage
        limits = {GPU_RESOURCE: str(job.gpus), "memory": job.memory}
        self.container_resources = k8s.V1ResourceRequirements(limits=limits, requests=requests)
        return job

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        self.apply_job()
        return super().build_pod_request_obj(context, dry_run=dry_run)

    def execute(self, context: Any) -> Any:
        job = GpuJob.from_dict(self.job)
        context["job_label"] = job.name  # rendered by map_index_template
        output = job.outputs["predictions"].rsplit("/", 1)[0]
        if object_storage.is_complete(output):
            # A retried task, or outputs of an identical earlier job copied here: no pod needed.
            self.log.info("The job's outputs are complete in %s: no pod needed", output)
            metrics = object_storage.read_json(f"{output}/{object_storage.METRICS}")
            return {**metrics, "reused": True, "output_dir": output}
        return super().execute(context)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        context["job_label"] = GpuJob.from_dict(self.job).name
        return super().trigger_reentry(context, event)

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: dict | None = None,
                context: Any = None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            failure = classify_pod_failure(self._latest(remote_pod), self.base_container_name)
            message = f"{failure.reason} (pod {getattr(getattr(remote_pod, 'metadata', None), 'name', '?')})"
            if failure.retryable:
                raise AirflowException(message) from exc
            raise AirflowFailException(message) from exc  # trying again cannot help: no retry

    def _latest(self, remote_pod: k8s.V1Pod | None) -> k8s.V1Pod | None:
        """The pod as it is now (the copy in hand may predate an image pull error)."""
        if remote_pod is None:
            return None
        try:
            return self.pod_manager.read_pod(remote_pod)
        except Exception:  # noqa: BLE001 - a deleted pod or an API hiccup: classify what we have
            return remote_pod
