"""Step 5, review: the request a finished run hands to the review DAG (one per reviewable candidate).

A flywheel run ends when its leaderboard is published; each candidate it puts up for review becomes
one ``ReviewRequest``, the conf of its own run of the review DAG. A human who takes three days over
one of them therefore holds no slot of the computing runs and delays no other decision.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

REVIEW_DAG_ID = "flywheel_review"
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class ReviewRequest(BaseModel):
    """One candidate up for a human decision, with the evidence the reviewer sees."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_key: str = Field(min_length=1)          # "<dag_id>/<run_id>" of the run that computed it
    workload_id: str = Field(min_length=1)
    candidate: str = Field(min_length=1)
    strategy: Literal["base", "icl", "lora"]
    score: float = Field(ge=0.0, le=1.0)
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = Field(ge=0)
    method: str | None = None
    cost_per_1k: float | None = Field(default=None, ge=0.0)
    output_uri: str | None = None              # where the job's outputs (and a LoRA adapter) are
    threshold: float = Field(ge=0.0, le=1.0)
    slice_floor: float | None = None
    subject: str = Field(min_length=1)
    body: str
    # Everything else the leaderboard knows about the candidate (slices, tool metrics, judge, cost
    # and savings ...): JSON, shown to the reviewer, never needed to identify or deploy it.
    evidence: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> dict[str, str]:
        return {"run_key": self.run_key, "workload_id": self.workload_id, "candidate": self.candidate,
                "strategy": self.strategy}

    @property
    def label(self) -> str:
        return f"{self.workload_id} · {self.candidate} · {self.strategy}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def review_run_id(self) -> str:
        """The review DAG's run id: the same request always gets the same run, so a retried
        trigger finds the review it already opened instead of opening a second one. Workload ids
        are untrusted: only a sanitised prefix reaches the id, the hash keeps it unique."""
        digest = hashlib.sha256("\x1f".join(self.key.values()).encode()).hexdigest()[:16]
        readable = _RUN_ID_UNSAFE.sub("_", f"{self.workload_id}__{self.strategy}")[:60].strip("_.-") or "x"
        return f"review__{readable}__{digest}"

    @classmethod
    def from_winner(cls, winner: dict[str, Any], *, run_key: str, threshold: float, slice_floor: float | None,
                    subject: str, body: str) -> ReviewRequest:
        """A request from a leaderboard row that passed the review gate (flywheel.report.pick_winners)."""
        own = set(cls.model_fields) - {"run_key", "threshold", "slice_floor", "subject", "body", "evidence"}
        fields = {k: v for k, v in winner.items() if k in own}
        evidence = {k: v for k, v in winner.items() if k not in own and v is not None}
        return cls(run_key=run_key, threshold=threshold, slice_floor=slice_floor, subject=subject, body=body,
                   evidence=evidence, **fields)

    @classmethod
    def from_conf(cls, conf: dict[str, Any] | None) -> ReviewRequest:
        """Parse the review run's conf; a run started by hand without a request fails clearly."""
        if not conf or "request" not in conf:
            raise ValueError(
                f"the {REVIEW_DAG_ID} DAG reviews one request per run: it is triggered by a flywheel run "
                "(task request_review) with conf {\"request\": {...}}, not by hand without one")
        raw = {k: v for k, v in dict(conf["request"]).items() if k != "review_run_id"}  # derived, not input
        return cls.model_validate(raw)
