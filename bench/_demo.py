"""What bench_trainer.py and bench_generation.py share: the demo student, loaded the way a job loads
a candidate (its tokenizer and chat template), and the demo router's logs."""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path


def add_model_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", type=Path, default=Path(os.environ.get("FLYWHEEL_MODELS_DIR", ".flywheel/models"))
                    / "tiny-lm-1.6m")


def router_records(n_records: int, days: int) -> list:
    """The tool_router records of freshly generated demo logs, parsed as curation parses them."""
    from flywheel.records import parse_line
    from flywheel_local.demo_data import generate_logs

    lines = generate_logs(n_records=n_records, days=days, end=datetime(2026, 11, 29, tzinfo=timezone.utc))
    return [r for r in (parse_line(f"logs:{i}", line) for i, line in enumerate(lines))
            if getattr(r, "workload_id", None) == "tool_router"]


def require_model(model: Path) -> None:
    """Exits with a hint when the model directory is missing."""
    if not (model / "config.json").is_file():
        raise SystemExit(f"no model at {model}: run `make models` first (or pass --model)")


def load_chat(model: Path):
    """(runtime, tokenizer, chat format) of the model directory; exits with a hint when it is missing."""
    require_model(model)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from flywheel_trainer import device as devices
    from flywheel_trainer.chat import ChatFormat

    hf_logging.set_verbosity_error()
    rt = devices.runtime()
    tokenizer = AutoTokenizer.from_pretrained(model)
    return rt, tokenizer, ChatFormat(tokenizer, candidate=model.name, model_uri=str(model))
