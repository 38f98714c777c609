"""Where the job runs: one place decides CUDA (bf16) or CPU."""

from __future__ import annotations

import os
import random


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    # Two cores here; more threads than cores only adds contention.
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, int(os.environ.get("OMP_NUM_THREADS", "0")) or 64)))
    return "cpu"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
