"""Where a job runs. `runtime()` is the one place that decides device, dtype and generation backend."""

from __future__ import annotations

import importlib.util
import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda" or "cpu"
    dtype: str  # "bfloat16" on a GPU that supports it, else "float32" (fp16 would need loss scaling)
    gpu_count: int
    backend: str  # generation backend: "vllm" or "transformers"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def cpu_threads() -> int:
    """The cores this process may use (cgroup/affinity aware), capped by OMP_NUM_THREADS when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else cores


def runtime() -> Runtime:
    import torch

    if torch.cuda.is_available():
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        # vLLM is optional: the image has it, a GPU box that only pip-installed this package may not.
        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
        return Runtime("cuda", dtype, torch.cuda.device_count(), backend)
    # More threads than cores only adds contention (the embedded stack runs on 2 cores).
    torch.set_num_threads(cpu_threads())
    return Runtime("cpu", "float32", 0, "transformers")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
