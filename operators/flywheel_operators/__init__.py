"""GPU job operators of the flywheel: one job spec (gpu_job.GpuJob), two backends."""

from __future__ import annotations

from flywheel.gpu_job import GPU_POOL, GpuJob

BACKENDS = ("local", "kubernetes")


def gpu_job_kwargs(backend: str, kubernetes: dict | None = None) -> dict:
    """Task arguments of the GPU job for a backend (settings, retries, time limit)."""
    if backend == "kubernetes":
        from flywheel_operators.kubernetes import KubernetesSettings, operator_kwargs

        return operator_kwargs(KubernetesSettings.model_validate(kubernetes or {}))
    if backend == "local":
        return {}
    raise ValueError(f"FLYWHEEL_GPU_BACKEND must be one of {BACKENDS}, not {backend!r}")


def gpu_job_operator_class(backend: str):
    """The operator class of a backend; imported lazily so the local default needs no k8s client."""
    if backend == "local":
        from flywheel_operators.local import LocalGpuJobOperator

        return LocalGpuJobOperator
    if backend == "kubernetes":
        from flywheel_operators.kubernetes import KubernetesGpuJobOperator

        return KubernetesGpuJobOperator
    raise ValueError(f"FLYWHEEL_GPU_BACKEND must be one of {BACKENDS}, not {backend!r}")


__all__ = ["BACKENDS", "GPU_POOL", "GpuJob", "gpu_job_kwargs", "gpu_job_operator_class"]
