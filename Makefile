# Two commands do everything on a fresh machine:  make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: demo test install constraints models bench bench-curation bench-parallel bench-trainer stop status approve reject leaderboard clean import

demo: install ## set up everything, run the flywheel on demo logs, print the leaderboard
	$(PY) -m flywheel_local.cli demo

test: install ## run the whole test suite
	$(PY) -m pytest --durations=15

install: $(STAMP)

# Idempotent: re-runs only when a requirements file or pyproject changes.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml images/gpu-trainer/pyproject.toml clients/capture/pyproject.toml
	@echo "==> [1/5] virtualenv $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/5] $(TORCH) (CPU wheel) first, so nothing else can pull a CUDA build"
	@$(PIP) install --progress-bar on "$(TORCH)"
	@echo "==> [3/5] Airflow 3 + providers + ML libraries (requirements.txt, requirements-dev.txt)"
	@$(PIP) install --progress-bar on -c constraints.txt -r requirements.txt -r requirements-dev.txt
	@echo "==> [4/5] this project (editable: flywheel, flywheel_local, flywheel_operators, flywheel_trainer, flywheel_capture)"
	@$(PIP) install --no-deps -e . -e images/gpu-trainer -e clients/capture
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@echo "==> [5/5] chromium (Debian) for the browser test of the flywheel page"
	@if command -v chromium >/dev/null 2>&1; then echo "    chromium is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
	   || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)) \
	  || echo "    could not install chromium: the browser test will be skipped"; \
	else echo "    skipped (needs root and apt-get): install chromium to run the browser test, which is skipped without it"; fi
	@touch $(STAMP)

# Re-resolve the exact versions after a change to requirements*.txt (needs a clean venv).
constraints:
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install -q "$(TORCH)" && .constraints-venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
	(head -3 constraints.txt; .constraints-venv/bin/pip freeze | sed 's/^torch==.*/$(TORCH)/') > constraints.new && mv constraints.new constraints.txt
	rm -rf .constraints-venv

models: install ## build (pre-train) the local student models
	$(PY) -m flywheel_local.cli models build

stop: ## stop Airflow and PostgreSQL (data is kept)
	@test -x $(PY) && $(PY) -m flywheel_local.cli down || echo "nothing installed, nothing running"

status:
	@$(PY) -m flywheel_local.cli status

approve: ## approve every pending review
	$(PY) -m flywheel_local.cli reviews approve --all

reject: ## reject every pending review
	$(PY) -m flywheel_local.cli reviews reject --all

bench: install ## benchmarks (ratios measured side by side in one run)
	$(PY) bench/bench_scoring.py
	$(PY) bench/bench_judge.py

bench-curation: install ## 100k and 1M records through curation vs the read+parse floor (~20 min)
	$(PY) bench/bench_curation.py --sizes 100000 1000000
	$(PY) bench/bench_pii.py --records 3000 --seed 99

bench-parallel: install ## 3 runs at once vs one at a time on a real scheduler, 1,000 mapped tasks (~80 min)
	$(PY) bench/parallel/run.py

bench-trainer: models ## LoRA trainer vs a plain transformers Trainer; batched vs one-at-a-time generation; warm vs fresh job start (~3 min on CPU)
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_generation.py
	$(PY) bench/bench_job_start.py

leaderboard:
	$(PY) -m flywheel_local.cli leaderboard

import: install ## import production logs: make import FILES="a.jsonl b.jsonl.gz"
	@test -n "$(FILES)" || { echo 'usage: make import FILES="logs.jsonl more.jsonl.gz"'; exit 2; }
	$(PY) -m flywheel_local.cli logs import $(FILES)

clean: stop ## remove all local state (database, models, artifacts); keeps the virtualenv
	rm -rf .flywheel
