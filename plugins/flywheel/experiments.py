"""Step 3, experiment: plan workload x candidate x strategy, and build each GPU job.

``base`` asks the candidate zero-shot, ``icl`` puts few-shot examples picked by embedding
similarity in the prompt (within a token budget), ``lora`` fine-tunes an adapter on the train
split. All three end with generation on the eval split, in the trainer (flywheel_trainer). Building the GPU job (reading the dataset, writing the
trainer's inputs to object storage) is the adapter's: flywheel.adapters.jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ExperimentSpec:
    run_key: str
    workload_id: str
    kind: str
    candidate: str
    strategy: str
    dataset_uri: str
    training_profile: str | None = None

    @property
    def label(self) -> str:
        """How the Airflow grid names the mapped task instance."""
        return f"{self.workload_id} · {self.candidate} · {self.strategy}"

    @property
    def key(self) -> dict[str, str]:
        return {
            "run_key": self.run_key,
            "workload_id": self.workload_id,
            "candidate": self.candidate,
            "strategy": self.strategy,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentSpec:
        return cls(**d)


def plan_experiments(
    datasets: list[dict[str, Any]], *, candidate: str, strategies: list[str], training_profile: str | None
) -> list[dict[str, Any]]:
    """One experiment per usable dataset x strategy for one candidate, in a stable order: the
    fine-tuning experiments first, the largest training set first (longest job first). The pool
    hands its slots out in map-index order among equal priorities (the DAG starts a candidate's GPU
    jobs together, once all its experiments are prepared), and a LoRA job takes many times as long
    as a zero-shot one: started last, the longest job would run alone at the end while the other
    slots idle. Training time grows with the training set (``n_train``, from curation)."""
    usable = sorted((d for d in datasets if d and d.get("usable")), key=lambda d: d["workload_id"])
    specs = []
    for ds in usable:
        for strategy in strategies:
            specs.append(
                ExperimentSpec(
                    run_key=ds["run_key"],
                    workload_id=ds["workload_id"],
                    kind=ds["kind"],
                    candidate=candidate,
                    strategy=strategy,
                    dataset_uri=ds["uri"],
                    training_profile=training_profile,
                ).to_dict()
            )
    n_train = {d["workload_id"]: int(d.get("n_train") or 0) for d in usable}
    # stable: the other strategies keep the workloads' order
    specs.sort(key=lambda spec: (0, -n_train[spec["workload_id"]]) if spec["strategy"] == "lora" else (1, 0))
    return specs
