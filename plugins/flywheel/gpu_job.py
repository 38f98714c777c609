"""The GPU job contract: one job spec, two backends (flywheel_operators).

A ``GpuJob`` is built once from an experiment (see flywheel.adapters.jobs) and carried through XCom
as a small JSON dict. The ``local`` backend runs its entrypoint as a subprocess on this machine;
the ``kubernetes`` backend runs the same entrypoint in the trainer image on a GPU node pool.
Workload ids are untrusted: everything that reaches a pod name or label is sanitised here.
Pure data and string rules: no Airflow, no Kubernetes client, so the domain and both backends
share this one definition.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

GPU_POOL = "flywheel_gpu"
_DNS1123_MAX = 63
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class GpuJob:
    name: str                        # human-readable; sanitised before it reaches Kubernetes
    image: str
    args: list[str]                  # entrypoint arguments, passed as a list (never a shell string)
    gpus: int = 1
    memory: str = "8Gi"
    inputs: dict[str, str] = field(default_factory=dict)   # role -> URI
    outputs: dict[str, str] = field(default_factory=dict)  # role -> URI
    labels: dict[str, str] = field(default_factory=dict)
    # The trainer's job spec: flywheel_trainer.spec.JobSpec as JSON (small; inputs/outputs are URIs).
    spec: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuJob:
        # The XCom dict may carry context beside the job (e.g. the experiment it runs).
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def dns1123_name(raw: str, max_len: int = _DNS1123_MAX) -> str:
    """A valid DNS-1123 label from any string, unique per input (hash suffix)."""
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    base = base[: max_len - len(digest) - 1].strip("-") or "job"
    return f"{base}-{digest}"


_VALID_LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(raw: str) -> str:
    """A valid Kubernetes label value (<= 63 chars, alphanumeric at both ends) for any string.

    A value that is valid already is kept as it is (the grid and `kubectl -l` read naturally);
    anything else becomes a readable prefix plus a hash of the original, so two different ids
    never share a label. The original goes into an annotation beside it (see the Kubernetes
    backend), so a hashed label is traceable back to its workload id.
    """
    if raw and len(raw) <= _DNS1123_MAX and _VALID_LABEL.match(raw):
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    prefix = _LABEL_VALUE.sub("_", raw)[: _DNS1123_MAX - len(digest) - 1].strip("_.-")
    return f"{prefix}-{digest}" if prefix else f"h-{digest}"
