"""The ``kubernetes`` backend: the trainer image as a pod on the GPU node pool.

A thin subclass of the provider's KubernetesPodOperator: the pod is derived from the ``GpuJob``
dict at run time (it arrives through XCom in a mapped task), everything else — deferral, log
streaming, re-attach on restart, pod clean-up — is the provider's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from flywheel.gpu_job import GpuJob, dns1123_name, label_value

GPU_RESOURCE = "nvidia.com/gpu"


class KubernetesGpuJobOperator(KubernetesPodOperator):
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "job")

    def __init__(
        self,
        *,
        job: dict[str, Any],
        namespace: str = "flywheel",
        gpu_node_selector: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("reattach_on_restart", True)
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs.setdefault("get_logs", True)
        # Placeholders: the real values come from the job in apply_job().
        kwargs.setdefault("image", "flywheel-trainer")
        kwargs.setdefault("name", "flywheel-job")
        super().__init__(namespace=namespace, **kwargs)
        self.job = job
        self.gpu_node_selector = gpu_node_selector or {"flywheel.io/node-pool": "gpu"}

    def apply_job(self) -> None:
        job = GpuJob.from_dict(self.job)
        self.name = dns1123_name(job.name)
        self.image = job.image
        self.cmds = ["python", "-m", "flywheel_trainer"]
        # The spec travels as one argument (a JSON string), never through a shell.
        self.arguments = [*job.args, "--spec-json", json.dumps(job.spec, sort_keys=True)]
        self.labels = {
            "app.kubernetes.io/name": "flywheel-trainer",
            **{key: label_value(str(value)) for key, value in job.labels.items()},
        }
        gpus = str(job.gpus)
        self.container_resources = k8s.V1ResourceRequirements(
            limits={GPU_RESOURCE: gpus, "memory": job.memory},
            requests={GPU_RESOURCE: gpus, "memory": job.memory},
        )
        self.node_selector = dict(self.gpu_node_selector)
        self.tolerations = [
            k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"),
        ]

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        self.apply_job()
        return super().build_pod_request_obj(context, dry_run=dry_run)
