"""A GPU job of known duration for bench/parallel: what the local backend runs instead of the
trainer (`LocalGpuJobOperator(entrypoint=[this file])`), so that only scheduling is measured.

    python sleep_job.py run --spec SPEC.json

Sleeps `spec["seconds"]`, then writes what a trainer writes into `spec["output_dir"]` (a file://
URI): metrics.json, then predictions.jsonl (last: its presence means "done").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[argv.index("--spec") + 1]).read_text())
    started = time.monotonic()
    time.sleep(float(spec["seconds"]))
    out = Path(spec["output_dir"].removeprefix("file://"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"generate_seconds": round(time.monotonic() - started, 3)}))
    (out / "predictions.jsonl").write_text('{"id": "0", "output": ""}\n')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
