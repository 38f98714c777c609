"""Refused answers to a review are recorded (flywheel_ui.audit), whatever client sends them; the
response itself is never changed. Airflow's own HITL endpoint is stood in for by a route that
answers as it does (403 not an assigned reviewer, 409 answered already); the e2e test checks the
middleware inside Airflow's api-server."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from flywheel.adapters import postgres as store
from flywheel_ui import audit

PATH = "/api/v2/dags/flywheel_on_demand/dagRuns/manual__2026-11-30T10%3A00%3A00%2B00%3A00/taskInstances/review/1/hitlDetails"


def _airflow_like() -> FastAPI:
    app = FastAPI()

    @app.patch("/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails")
    async def answer(request: Request, dag_id: str, run_id: str, task_id: str, map_index: int):
        code = int(request.headers.get("x-answer", "200"))
        detail = {403: "User=admin (id=admin) is not a respondent for the task.",
                  409: "Human-in-the-loop detail has already been updated"}.get(code, "ok")
        return JSONResponse({"detail": detail}, status_code=code)

    return app


def test_paths():
    assert audit.parse(PATH) == {"dag_id": "flywheel_on_demand", "dag_run_id": "manual__2026-11-30T10:00:00+00:00",
                                 "task_id": "review", "map_index": 1}
    assert audit.parse("/api/v2/dags/d/dagRuns/r/taskInstances/t/hitlDetails")["map_index"] == -1
    assert audit.parse("/api/v2/dags/d/dagRuns/r/taskInstances/t/1/logs") is None
    scope = {"headers": [(b"cookie", b"a=1; _token=abc.def; b=2")]}
    assert audit._token(scope) == "abc.def"
    assert audit._token({"headers": [(b"authorization", b"Bearer xyz")]}) == "xyz"


def test_refused_answers_are_recorded_and_responses_untouched(flywheel_db, pg_socket, monkeypatch):
    import psycopg2

    from flywheel_ui import app as ui

    monkeypatch.setattr(ui, "get_conn", lambda: psycopg2.connect(f"host={pg_socket} user=postgres dbname=flywheel"))
    monkeypatch.setattr(audit, "subject_of", lambda attempt: "Deploy tiny-lm-1.6m (lora) for tool_router?")

    async def user(scope):
        return "admin"

    app = _airflow_like()
    app.add_middleware(audit.RecordRefusedReviewAnswers, resolve_user=user)
    client = TestClient(app)
    body = {"chosen_options": ["Approve"], "params_input": {"comment": ""}}
    r403 = client.patch(PATH, json=body, headers={"x-answer": "403"})
    assert r403.status_code == 403 and "not a respondent" in r403.json()["detail"]
    assert client.patch(PATH, json=body, headers={"x-answer": "409"}).status_code == 409
    assert client.patch(PATH, json=body).status_code == 200  # an accepted answer is not an attempt
    rows = store.fetch_all(flywheel_db, "review_attempts")
    assert [(r["username"], r["http_status"], r["map_index"], r["task_id"]) for r in rows] == [
        ("admin", 403, 1, "review"), ("admin", 409, 1, "review")]
    assert rows[0]["dag_run_id"] == "manual__2026-11-30T10:00:00+00:00"
    assert rows[0]["subject"] == "Deploy tiny-lm-1.6m (lora) for tool_router?"
    assert "not a respondent" in rows[0]["detail"] and "already been updated" in rows[1]["detail"]
    with pytest.raises(Exception, match="append-only"):
        with flywheel_db.cursor() as cur:
            cur.execute("DELETE FROM review_attempts")
    flywheel_db.rollback()


def test_a_recording_failure_never_changes_the_answer():
    def broken(attempt):
        raise RuntimeError("database down")

    async def user(scope):
        return "admin"

    app = _airflow_like()
    app.add_middleware(audit.RecordRefusedReviewAnswers, resolve_user=user, recorder=broken)
    assert TestClient(app).patch(PATH, json={}, headers={"x-answer": "403"}).status_code == 403
