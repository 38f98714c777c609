"""Steps 5-6, review and deploy: record the human decision and, when approved, a new version."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flywheel import store


def reviewer_name(responded_by: Any) -> str:
    if isinstance(responded_by, dict):
        return str(responded_by.get("name") or responded_by.get("id") or "unknown")
    return str(responded_by or "unknown")


def record_decision(conn, *, run_key: str, winner: dict[str, Any], decision: dict[str, Any], model_path: str) -> dict[str, Any]:
    """Record a review and, if approved, a new active deployment version of the workload.

    Idempotent: a retried task finds the deployment it already made for this experiment. Writers of
    one workload are serialised so two runs approved at once still get distinct versions.
    """
    chosen = decision.get("chosen_options") or []
    approved = chosen == ["Approve"]
    params_input = decision.get("params_input") or {}
    key = {k: winner[k] for k in ("workload_id", "candidate", "strategy")}
    reviewer = reviewer_name(decision.get("responded_by_user"))
    decided_at = decision.get("responded_at") or datetime.now(timezone.utc)
    with store.transaction(conn) as cur:
        store.run_query(cur, "upsert_review", {
            "run_key": run_key, **key,
            "decision": "approved" if approved else "rejected",
            "reviewer": reviewer,
            "comment": str(params_input.get("comment") or ""),
            "decided_at": decided_at,
        })
        if not approved:
            return {"decision": "rejected", **key}
        store.advisory_lock(cur, f"deployments/{winner['workload_id']}")
        existing = store.run_query(cur, "deployment_for_experiment", {"run_key": run_key, **key})
        if existing:
            return {"decision": "approved", **existing[0]}
        store.run_query(cur, "supersede_active", {"workload_id": winner["workload_id"]})
        adapter = f"{winner['output_uri']}/adapter" if winner["strategy"] == "lora" and winner.get("output_uri") else None
        row = store.run_query(cur, "insert_deployment", {
            "run_key": run_key, **key, "model_path": model_path, "adapter_uri": adapter, "approved_by": reviewer,
        })[0]
        return {"decision": "approved", **row}
