"""The layering rule of DESIGN.md, checked: the domain imports neither Airflow nor torch nor any
adapter; arrows point one way (DAGs -> task adapter -> domain, adapters -> domain)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import flywheel

FORBIDDEN = ("airflow", "torch", "transformers", "sentence_transformers", "peft", "kubernetes",
             "psycopg", "psycopg2", "flywheel_operators", "flywheel_local", "flywheel.adapters")

DOMAIN_MODULES = sorted(
    f"flywheel.{m.name}" for m in pkgutil.iter_modules([str(Path(flywheel.__file__).parent)])
    if m.name != "adapters"
)


def test_domain_modules_found():
    assert {"flywheel.records", "flywheel.curation", "flywheel.scoring", "flywheel.report"} <= set(DOMAIN_MODULES)


@pytest.mark.parametrize("module", DOMAIN_MODULES)
def test_domain_module_imports_no_outside_system(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r})); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"
