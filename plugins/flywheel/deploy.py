"""Steps 5-6, review and deploy: the rules of a human decision (no database, no Airflow)."""

from __future__ import annotations

from typing import Any

APPROVE, REJECT = "Approve", "Reject"
REVIEW_OPTIONS = [APPROVE, REJECT]


def reviewer_name(responded_by: Any) -> str:
    if isinstance(responded_by, dict):
        return str(responded_by.get("name") or responded_by.get("id") or "unknown")
    return str(responded_by or "unknown")


def is_approved(decision: dict[str, Any]) -> bool:
    """Only an explicit, single "Approve" approves; anything else (a timeout's default too) rejects."""
    return (decision.get("chosen_options") or []) == [APPROVE]


def comment_of(decision: dict[str, Any]) -> str:
    return str((decision.get("params_input") or {}).get("comment") or "")
