"""The benchmark's DAGs: the flywheel's shape (register -> curate per workload -> per candidate a
mapped group over workload x strategy: prepare -> GPU job -> evaluate -> leaderboard) with the GPU
job replaced by a job of known duration that goes through the real operator (LocalGpuJobOperator),
the real pool (`flywheel_gpu`) and its slots; every other task is a no-op. Its sizes come from
BENCH_PARALLEL_CONFIG (written by bench/parallel/run.py). The flywheel's `candidate_<c>.prepared`
barrier (its GPU jobs start once all its experiments are prepared) is not copied here: these
prepares are equal no-ops, and the results in docs/benchmarks.md were measured without it.

- bench_flywheel: ours. Several runs at once (max_active_runs), GPU work bounded by the pool only.
- bench_blueprint: the blueprint's way. One run at a time, and every GPU job takes the whole pool,
  so one job runs at a time (its concurrency=1 queue).
- bench_mapped: one run that maps N experiments (default 1,000) onto a no-op, for the scheduler's
  cost per mapped task.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import TaskGroup, TriggerRule, dag, task, task_group

from flywheel_operators.local import LocalGpuJobOperator

CONFIG = json.loads(Path(os.environ["BENCH_PARALLEL_CONFIG"]).read_text())
SLEEP_JOB = str(Path(CONFIG["sleep_job"]).resolve())
POOL = "flywheel_gpu"


def build(dag_id: str, *, blueprint: bool):
    @dag(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         max_active_runs=1 if blueprint else CONFIG["runs"], max_active_tasks=256, tags=["bench"],
         # As dags/flywheel_dags.py: every task carries its DAG's weight (absolute), so a run's
         # GPU jobs are not queued behind every CPU task upstream of them (Airflow's default rule,
         # downstream, ranks a task by what follows it: every prepare before any GPU job).
         default_args={"retries": 0, "priority_weight": 1, "weight_rule": "absolute"})
    def bench():
        @task
        def register(dag_run=None) -> dict:
            return {"run": dag_run.run_id}

        @task
        def curate(plan: dict, workload: str) -> dict:
            return {"workload": workload}

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def plan(plan: dict, datasets: list[dict], candidate: str, strategies: list[str]) -> list[dict]:
            return [{"workload": d["workload"], "candidate": candidate, "strategy": s, "run": plan["run"]}
                    for d in datasets for s in strategies]

        @task
        def prepare(spec: dict) -> dict:
            seconds = CONFIG["seconds"][spec["strategy"]]
            out = Path(CONFIG["outputs"]) / dag_id / spec["run"].replace(":", "_").replace("+", "_") / \
                f"{spec['workload']}-{spec['candidate']}-{spec['strategy']}"
            uri = f"file://{out}"
            return {"name": f"{spec['workload']} · {spec['candidate']} · {spec['strategy']}", "image": "-",
                    "args": ["run"], "gpus": CONFIG["slots"][spec["strategy"]],
                    "outputs": {"predictions": f"{uri}/predictions.jsonl"},
                    "spec": {"output_dir": uri, "seconds": seconds}}

        @task
        def evaluate(job: dict) -> dict:
            return {"done": job["name"]}

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def leaderboard(plan: dict) -> None:
            return None

        p = register()
        datasets = curate.partial(plan=p).expand(workload=[f"w{i}" for i in range(CONFIG["workloads"])])
        groups = []
        # One mapped group per candidate and slot size (a mapped task's pool_slots is fixed).
        classes = {}
        for s in CONFIG["strategies"]:
            classes.setdefault(CONFIG["slots"][s], []).append(s)
        for c in range(CONFIG["candidates"]):
            for slots, strategies in sorted(classes.items()):
                with TaskGroup(group_id=f"c{c}_slots{slots}") as group:
                    @task_group(group_id="experiment")
                    def experiment(spec: dict):
                        job = prepare(spec)
                        run = LocalGpuJobOperator(
                            task_id="gpu_job", job=job, pool=POOL,
                            pool_slots=CONFIG["gpus"] if blueprint else slots,
                            # The longer multi-GPU (LoRA) jobs first, as the flywheel plans its LoRA
                            # experiments first (here they are a group of their own).
                            priority_weight=2 if slots > 1 else 1,
                            entrypoint=[SLEEP_JOB], map_index_template="{{ job_label }}")
                        run >> evaluate(job)

                    experiment.expand(spec=plan.override(task_id="plan")(p, datasets, f"c{c}", strategies))
                groups.append(group)
        groups >> leaderboard(p)

    return bench()


bench_flywheel = build("bench_flywheel", blueprint=False)
bench_blueprint = build("bench_blueprint", blueprint=True)


@dag(dag_id="bench_mapped", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["bench"],
     max_active_tasks=256, default_args={"retries": 0})
def bench_mapped():
    @task
    def experiments() -> list[int]:
        return list(range(CONFIG["mapped"]))

    @task
    def experiment(i: int) -> None:
        return None

    experiment.expand(i=experiments())


bench_mapped()
