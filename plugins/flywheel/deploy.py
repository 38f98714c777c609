"""Steps 5-6, review and deploy: the rules of a human decision and of versioned deployments.

No database, no Airflow, no serving endpoint here: the adapters (flywheel.adapters.deployments)
apply these rules. A deployment is a numbered version of one workload; versions are never
overwritten or deleted, only their status moves on:

    pending -> active -> superseded      (a newer version became active)
                      -> rolled_back     (a rollback replaced it)
    pending -> failed                    (the serving endpoint was down or refused the model)

A rollback is itself a new version (``rollback_of`` = the version whose model it restores), so the
history reads in order and every change of what serves a workload has one row and one actor.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from flywheel.records import valid_workload_id

APPROVE, REJECT = "Approve", "Reject"
REVIEW_OPTIONS = [APPROVE, REJECT]

DeploymentStatus = Literal["pending", "active", "superseded", "rolled_back", "failed"]
# Versions that once served the workload (a failed or pending one never did).
SERVED_STATUSES = ("active", "superseded", "rolled_back")


class DeploymentError(RuntimeError):
    """A deployment or rollback that cannot be done; the message says why and what to do."""


class RollbackRefused(DeploymentError):
    """Nothing was changed: the request itself is not possible (no earlier version, unknown version)."""


def reviewer_name(responded_by: Any) -> str:
    if isinstance(responded_by, dict):
        return str(responded_by.get("name") or responded_by.get("id") or "unknown")
    return str(responded_by or "unknown")


def is_approved(decision: dict[str, Any]) -> bool:
    """Only an explicit, single "Approve" approves; anything else (a timeout's default too) rejects."""
    return (decision.get("chosen_options") or []) == [APPROVE]


def comment_of(decision: dict[str, Any]) -> str:
    return str((decision.get("params_input") or {}).get("comment") or "")


DecisionOutcome = Literal["approved", "rejected", "timeout"]


def decision_outcome(decision: dict[str, Any]) -> DecisionOutcome:
    """What a HITL answer means. No responder means nobody answered in time and the scheduler
    applied the defaults: a timeout, recorded as such and never a deployment, whatever the default."""
    if not decision.get("responded_by_user"):
        return "timeout"
    return "approved" if is_approved(decision) else "rejected"


def evidence_hash(subject: str, body: str) -> str:
    """Identifies the evidence a reviewer was shown (recorded with the decision)."""
    return hashlib.sha256(f"{subject}\n{body}".encode()).hexdigest()


class Deployment(BaseModel):
    """One version of a workload's deployment, as stored (crosses the DB / UI / CLI boundary)."""

    model_config = ConfigDict(frozen=True)

    workload_id: str
    version: int
    status: DeploymentStatus
    candidate: str
    strategy: str
    model_path: str
    adapter_uri: str | None = None
    served_model: str | None = None
    serving_path: str | None = None  # the staged, immutable copy the endpoint loads
    rollback_of: int | None = None
    run_key: str
    approved_by: str
    error: str | None = None
    created_at: datetime | None = None
    base_model: str | None = None
    template_version: str | None = None
    dataset_hash: str | None = None
    scores: dict[str, Any] = {}
    endpoint: str | None = None
    activated_at: datetime | None = None

    @property
    def artifact(self) -> tuple[str, str | None]:
        """What is served: the base model and the adapter (None for a base/icl deployment)."""
        return (self.model_path, self.serving_path or self.adapter_uri)


class Route(BaseModel):
    """Which model an application calls for a workload: the routing record."""

    workload_id: str
    endpoint: str
    model: str  # the name to put in the request's "model" field
    base_model: str
    version: int
    updated_by: str
    updated_at: datetime | None = None


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def served_model_name(workload_id: str, version: int) -> str:
    """The name a version is served under (vLLM's ``lora_name``): stable, unique per version.

    Workload ids are validated at ingest; anything else (a workload id from an older or foreign
    source) still gets a safe, unique name rather than reaching the endpoint as it is.
    """
    if valid_workload_id(workload_id):
        return f"{workload_id}-v{int(version)}"
    digest = hashlib.sha256(workload_id.encode()).hexdigest()[:12]
    return f"{_UNSAFE.sub('_', workload_id)[:40]}-{digest}-v{int(version)}"


def current(history: list[Deployment]) -> Deployment | None:
    active = [d for d in history if d.status == "active"]
    if len(active) > 1:  # the database forbids it (a unique index); a corrupt history must not be guessed at
        raise DeploymentError(f"workload {active[0].workload_id} has {len(active)} active versions")
    return active[0] if active else None


def rollback_target(history: list[Deployment], workload_id: str, to_version: int | None = None) -> tuple[Deployment, Deployment]:
    """(the active version, the version to restore) for a rollback, or RollbackRefused.

    Without ``to_version``: the most recent version that served before the active one, skipping
    versions that were themselves rolled back and versions that serve the same model as the active
    one (restoring those would change nothing). With ``to_version``: that version, which must have
    served once (never a failed or pending one) and must not be the active version.
    """
    history = sorted((d for d in history if d.workload_id == workload_id), key=lambda d: d.version)
    if not history:
        raise RollbackRefused(f"workload {workload_id!r} has no deployments; nothing to roll back")
    active = current(history)
    if active is None:
        raise RollbackRefused(f"workload {workload_id!r} has no active version; deploy one before rolling back")
    if to_version is not None:
        target = next((d for d in history if d.version == to_version), None)
        if target is None:
            known = ", ".join(f"v{d.version}" for d in history)
            raise RollbackRefused(f"workload {workload_id!r} has no version {to_version} (versions: {known})")
        if target.version == active.version:
            raise RollbackRefused(f"v{to_version} of {workload_id!r} is already the active version")
        if target.status not in SERVED_STATUSES:
            raise RollbackRefused(
                f"v{to_version} of {workload_id!r} never served ({target.status}"
                f"{': ' + target.error if target.error else ''}); pick a version that was active once")
        return active, target
    for d in reversed(history):
        if d.version >= active.version or d.status != "superseded":
            continue
        if d.artifact == active.artifact:
            continue
        return active, d
    raise RollbackRefused(
        f"workload {workload_id!r} has no earlier version to roll back to (v{active.version} is the "
        f"first one that served, or every earlier one was rolled back); name one with --to VERSION")


REVIEW_KEYS = ("workload_id", "candidate", "strategy", "score", "ci_low", "ci_high", "n", "n_items", "method", "scorer",
               "cost_per_1k", "output_uri", "score_vs_prod", "score_vs_gold", "n_gold", "worst_slice",
               "worst_slice_score", "worst_slice_n", "tool_metrics", "judge", "prod_cost_per_1k", "monthly_savings",
               "training_cost", "payback_days", "requests_per_month", "cost_note", "judge_kappa", "judge_spearman",
               "judge_calibration_n")


def reviewable(rows: list[dict[str, Any]], passes) -> list[dict[str, Any]]:
    """Every experiment that ``passes`` (the review gate and the regression guard) goes to review, not
    only the cheapest: the reviewer may prefer a dearer candidate that is better on a slice that
    matters. Per workload the cheapest comes first (ties: the higher score), so it is reviewed first."""
    chosen = [r for r in rows if passes(r)]
    chosen.sort(key=lambda r: (r["workload_id"], r.get("cost_per_1k") or 0.0, -(r.get("score") or 0.0),
                               r["candidate"], r["strategy"]))
    return [{k: r.get(k) for k in REVIEW_KEYS} for r in chosen]
