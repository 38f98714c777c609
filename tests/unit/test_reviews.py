"""Review decisions on a real PostgreSQL: append-only, one per review request, timeouts recorded
as timeouts, the evidence's hash kept with the decision."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flywheel.adapters import postgres as store
from flywheel.deploy import decision_outcome, evidence_hash

WINNER = {"workload_id": "tool_router", "candidate": "tiny-lm-1.6m", "strategy": "lora"}
AT = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)


def _answer(option, user="alice", comment=""):
    return {"chosen_options": [option], "params_input": {"comment": comment}, "responded_at": AT,
            "responded_by_user": {"id": user, "name": user} if user else None}


def test_outcomes():
    assert decision_outcome(_answer("Approve")) == "approved"
    assert decision_outcome(_answer("Reject")) == "rejected"
    # The scheduler applied the defaults: nobody answered, whatever the default option was.
    assert decision_outcome(_answer("Reject", user=None)) == "timeout"
    assert decision_outcome(_answer("Approve", user=None)) == "timeout"
    assert decision_outcome({"chosen_options": ["Approve", "Reject"], "responded_by_user": {"id": "a"}}) == "rejected"
    assert evidence_hash("s", "b") != evidence_hash("s", "b2") and len(evidence_hash("s", "b")) == 64


def test_decisions_are_appended_once_and_never_changed(flywheel_db):
    h = evidence_hash("Deploy?", "body")
    out = store.record_decision(flywheel_db, run_key="r/1", winner=WINNER, decision=_answer("Approve", comment="ok"),
                                evidence_hash=h)
    assert out == {"decision": "approved", "reviewer": "alice", **WINNER}
    # A retried task, or a later contradicting answer for the same request, does not replace it.
    again = store.record_decision(flywheel_db, run_key="r/1", winner=WINNER, decision=_answer("Reject", user="bob"),
                                  evidence_hash=h)
    assert again["decision"] == "approved" and again["reviewer"] == "alice"
    timeout = store.record_decision(flywheel_db, run_key="r/2", winner=WINNER, decision=_answer("Reject", user=None))
    assert timeout["decision"] == "timeout"
    rows = store.fetch_all(flywheel_db, "review_decisions", {"run_key": None, "workload_id": "tool_router"})
    assert [(r["run_key"], r["outcome"], r["reviewer"], r["comment"]) for r in rows] == [
        ("r/1", "approved", "alice", "ok"), ("r/2", "timeout", None, "")]
    assert rows[0]["evidence_hash"] == h and rows[0]["decided_at"] == AT
    for sql in ("UPDATE review_decisions SET outcome = 'rejected'", "DELETE FROM review_decisions"):
        with pytest.raises(Exception, match="append-only"):
            with flywheel_db.cursor() as cur:
                cur.execute(sql)
        flywheel_db.rollback()
    # The old name still reads the decisions (timeouts count as rejections there).
    with flywheel_db.cursor() as cur:
        cur.execute("SELECT run_key, decision, reviewer FROM reviews ORDER BY run_key")
        assert cur.fetchall() == [("r/1", "approved", "alice"), ("r/2", "rejected", "timeout")]
    flywheel_db.commit()
