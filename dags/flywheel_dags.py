"""The data flywheel: one factory, three run DAGs (daily, weekly deep sweep, on demand) and the
review DAG.

A run: discover -> curate (per workload) -> experiment (per workload x candidate x strategy, GPU
pool) -> evaluate -> leaderboard -> one review request per candidate put up for review; the run
ends there. Each request is its own run of ``flywheel_review``: human review (HITL) -> deploy a new
version when approved. A review that waits three days holds no slot of the computing runs and
delays no other review.
Each task calls one function of the task adapter (flywheel.adapters.airflow_tasks); this file only
wires them. (Named flywheel_dags so that no DAG file shares a module name with a package.)
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, TaskGroup, TriggerRule, dag, get_current_context, task, task_group

from flywheel.adapters import airflow_tasks as tasks
from flywheel.config import STRATEGIES, DagProfile, FlywheelConfig, load_config
from flywheel.deploy import REJECT, REVIEW_OPTIONS
from flywheel.review import REVIEW_DAG_ID
from flywheel_operators import GPU_POOL, gpu_job_kwargs, gpu_job_operator_class

def _params(cfg: FlywheelConfig, profile: DagProfile, candidates: list[str]) -> dict[str, Param]:
    return {
        "workloads": Param([], type="array", items={"type": "string"}, title="Workloads",
                           description="Only these workload ids (empty: every workload with enough records)."),
        "candidates": Param(list(profile.candidates), type="array", items={"type": "string", "enum": candidates},
                            title="Candidate models"),
        "strategies": Param(list(profile.strategies), type="array", items={"type": "string", "enum": list(STRATEGIES)},
                            title="Strategies", description="base = zero-shot, icl = few-shot, lora = fine-tuned adapter"),
        "eval_size": Param(profile.eval_size, type="integer", minimum=5, maximum=1000, title="Eval items per workload"),
        "threshold": Param(cfg.threshold, type="number", minimum=0, maximum=1,
                           title="Review threshold", description="Candidates scoring at least this go to human review."),
        "slice_floor": Param(cfg.slice_floor, type="number", minimum=0, maximum=1, title="Slice floor",
                             description="A candidate whose worst slice (class of requests) scores below this is not sent to review."),
        "min_records": Param(cfg.min_records, type="integer", minimum=1, title="Minimum records per workload"),
        "lookback_days": Param(cfg.on_demand_lookback_days, type="integer", minimum=1, maximum=365,
                               title="Look-back days", description="Window of a manual run (scheduled runs use their data interval)."),
        "training_profile": Param(None, type=["null", "string"], enum=[None, *cfg.training_profiles],
                                  title="Training profile", description="LoRA hyper-parameter overrides (empty: production defaults)."),
    }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _review_trigger(request: dict) -> dict:
    # One review run per request, its id derived from the request: a retried trigger is skipped.
    return {"trigger_run_id": request["review_run_id"], "conf": {"request": request}}


# A waiting review holds no worker slot (the HITL task waits in awaiting_input): this only bounds
# how many review runs are open at once, far above what humans leave pending.
REVIEW_MAX_ACTIVE_RUNS = 256


def _timetable(schedule: str | None):
    """A cron schedule as data intervals: each run reads exactly the interval before it fires (a
    daily run at midnight reads the day before; a backfill day reads that day). Airflow 3 turns a
    bare cron string into a CronTriggerTimetable, whose runs have no data interval at all."""
    if schedule is None:
        return None
    from airflow.timetables.interval import CronDataIntervalTimetable

    return CronDataIntervalTimetable(schedule, timezone="UTC")


def build_flywheel_dag(profile: DagProfile, cfg: FlywheelConfig):
    # The on-demand form may pick any configured candidate; scheduled runs build their own set.
    candidates = list(cfg.candidates) if profile.schedule is None else list(profile.candidates)
    gpu_operator = gpu_job_operator_class(tasks.gpu_backend())
    gpu_kwargs = gpu_job_kwargs(tasks.gpu_backend(), cfg.kubernetes)

    @dag(
        dag_id=profile.dag_id,
        description=profile.description,
        schedule=_timetable(profile.schedule),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=4,  # runs proceed at once; GPU work is bounded by the pool, not by a queue
        params=_params(cfg, profile, candidates),
        tags=["flywheel"],
        # absolute: a task's weight is its DAG's (on demand > daily > weekly), so the pool hands free
        # GPU slots to an on-demand run's jobs first.
        default_args={"retries": 1, "retry_delay": timedelta(seconds=20),
                      "priority_weight": profile.priority_weight, "weight_rule": "absolute"},
        doc_md=__doc__,
    )
    def flywheel():
        @task
        def register_run(params=None, dag_run=None, data_interval_start=None, data_interval_end=None) -> dict:
            return tasks.register_run(dag_id=profile.dag_id, run_id=dag_run.run_id,
                                      interval_start=data_interval_start, interval_end=data_interval_end,
                                      params=dict(params))

        @task
        def discover_workloads(plan: dict) -> list[dict]:
            return tasks.discover_workloads(plan)

        # A workload whose curation fails for good is recorded as such; the others go on.
        @task(map_index_template="{{ workload_label }}", on_failure_callback=tasks.on_curation_failure)
        def curate_workload(plan: dict, target: dict) -> dict:
            get_current_context()["workload_label"] = target["workload_id"]
            return tasks.curate_workload(plan, target)

        # all_done: plans the experiments of every workload that was curated, whatever happened to
        # the others (a failed curation's dataset is simply absent).
        @task(trigger_rule=TriggerRule.ALL_DONE)
        def plan_experiments(plan: dict, datasets: list[dict], candidate: str) -> list[dict]:
            from flywheel.experiments import plan_experiments as plan_for

            if candidate not in plan["candidates"]:
                return []
            return plan_for(list(datasets), candidate=candidate, strategies=plan["strategies"],
                            training_profile=plan["training_profile"])

        @task(map_index_template="{{ experiment_label }}")
        def prepare_experiment(spec: dict) -> dict:
            from flywheel.experiments import ExperimentSpec

            get_current_context()["experiment_label"] = ExperimentSpec.from_dict(spec).label
            return tasks.prepare_experiment(spec)

        @task(map_index_template="{{ experiment_label }}", on_failure_callback=tasks.on_evaluation_failure)
        def evaluate_experiment(job: dict) -> dict:
            get_current_context()["experiment_label"] = job["name"]
            return tasks.evaluate_experiment(job)

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def publish_leaderboard(plan: dict) -> list[dict]:
            return tasks.publish_leaderboard(plan)

        plan = register_run()
        targets = discover_workloads(plan)
        datasets = curate_workload.partial(plan=plan).expand(target=targets)

        experiment_groups = []
        for candidate in candidates:
            gpus = cfg.candidates[candidate].gpus
            with TaskGroup(group_id=f"candidate_{_slug(candidate)}") as group:
                steps: dict = {}

                @task_group(group_id="experiment")
                def experiment(spec: dict):
                    job = prepare_experiment(spec)
                    run = gpu_operator(
                        task_id="gpu_job",
                        job=job,
                        pool=GPU_POOL,
                        pool_slots=gpus,  # a pool slot is a GPU
                        map_index_template="{{ job_label }}",
                        on_execute_callback=tasks.on_job_start,  # the experiment is `running`
                        on_failure_callback=tasks.on_job_failure,  # only this experiment fails
                        **gpu_kwargs,  # backend settings, retries, time limit
                    )
                    run >> evaluate_experiment(job)
                    steps["prepare"], steps["gpu_job"] = job.operator, run

                experiment.expand(spec=plan_experiments.override(task_id="plan")(plan, datasets, candidate))
                # The candidate's GPU jobs wait until all its experiments are prepared, then the
                # pool takes them in the plan's order (map index: LoRA jobs first, the largest
                # training set first), so the longest job never waits behind shorter ones that
                # happened to be prepared a moment earlier. all_done: a failed prepare holds up
                # only its own job. An EmptyOperator never occupies a worker.
                prepared = EmptyOperator(task_id="prepared", trigger_rule=TriggerRule.ALL_DONE)
                steps["prepare"] >> prepared >> steps["gpu_job"]
            experiment_groups.append(group)

        requests = publish_leaderboard(plan)
        experiment_groups >> requests
        # The run ends here: each request opens its own review run (no waiting on it).
        TriggerDagRunOperator.partial(
            task_id="request_review",
            trigger_dag_id=REVIEW_DAG_ID,
            logical_date=None,  # a review has no data interval
            wait_for_completion=False,
            skip_when_already_exists=True,
            map_index_template="{{ task.conf.request.workload_id }} · {{ task.conf.request.candidate }} · "
                               "{{ task.conf.request.strategy }}",
        ).expand_kwargs(requests.map(_review_trigger))

    return flywheel()


def build_review_dag(cfg: FlywheelConfig):
    """One run per review request (its conf): the human decision, then the deployment record."""

    @dag(
        dag_id=REVIEW_DAG_ID,
        description="Human review of one candidate put up by a flywheel run, and its deployment.",
        schedule=None,  # triggered by the flywheel runs (task request_review), one run per request
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=REVIEW_MAX_ACTIVE_RUNS,
        is_paused_upon_creation=False,  # a paused review DAG would hold every review silently
        tags=["flywheel", "review"],
        default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
        doc_md=__doc__,
    )
    def flywheel_review():
        @task
        def open_review(dag_run=None) -> dict:
            return tasks.open_review(dag_run.conf)

        @task
        def deploy_decision(request: dict, decision: dict) -> dict:
            return tasks.deploy_decision(request, decision)

        request = open_review()
        review = HITLOperator(
            task_id="review",
            subject="{{ ti.xcom_pull(task_ids='open_review')['subject'] }}",
            body="{{ ti.xcom_pull(task_ids='open_review')['body'] }}",
            options=REVIEW_OPTIONS,
            params={"comment": Param("", type="string", title="Comment")},
            response_timeout=timedelta(hours=cfg.review_timeout_hours),
            defaults=[REJECT],  # no answer in time: recorded as a timeout, nothing is deployed
            # Only the configured reviewers may decide (Airflow refuses anyone else, the admin too).
            assigned_users=[r.as_hitl_user() for r in cfg.reviewers] or None,
            retries=0,  # a retry would ask the human again
        )
        request >> review
        deploy_decision(request, review.output)

    return flywheel_review()


_CFG = load_config()
for _profile in _CFG.dags.values():
    globals()[_profile.dag_id] = build_flywheel_dag(_profile, _CFG)
flywheel_review = build_review_dag(_CFG)
