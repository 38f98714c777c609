"""Records the answers to a review that Airflow refuses, whoever sends them and however.

A root middleware of the api-server (registered by the flywheel plugin): it lets every request
through untouched and, only for ``PATCH .../taskInstances/{task}/{map_index}/hitlDetails`` that
Airflow answers 403 (not an assigned reviewer) or 409 (already answered), appends a row to
``review_attempts`` with the user, the status and Airflow's message. Recording never changes the
response; a recording failure is logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

log = logging.getLogger(__name__)

HITL_PATH = re.compile(r"^/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/(?P<run_id>[^/]+)/taskInstances/(?P<task_id>[^/]+)"
                       r"(?:/(?P<map_index>-?\d+))?/hitlDetails/?$")
REFUSED = (403, 409)


def parse(path: str) -> dict[str, Any] | None:
    m = HITL_PATH.match(path)
    if m is None:
        return None
    return {"dag_id": unquote(m["dag_id"]), "dag_run_id": unquote(m["run_id"]), "task_id": unquote(m["task_id"]),
            "map_index": int(m["map_index"]) if m["map_index"] is not None else -1}


def _token(scope) -> str | None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "_token":
            return value
    return None


async def airflow_user(scope) -> str:
    """The user name behind the request's credential, as Airflow's auth manager reads it."""
    from airflow.api_fastapi.app import get_auth_manager

    token = _token(scope)
    if not token:
        return "(no credential)"
    try:
        return (await get_auth_manager().get_user_from_token(token)).get_name()
    except Exception:  # noqa: BLE001 - an invalid token is itself worth recording
        return "(invalid credential)"


def subject_of(attempt: dict[str, Any]) -> str | None:
    from sqlalchemy import select

    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(
            select(HITLDetail.subject).join(TaskInstance, HITLDetail.ti_id == TaskInstance.id).where(
                TaskInstance.dag_id == attempt["dag_id"], TaskInstance.run_id == attempt["dag_run_id"],
                TaskInstance.task_id == attempt["task_id"], TaskInstance.map_index == attempt["map_index"]))


def record(attempt: dict[str, Any]) -> None:
    from flywheel.adapters import postgres as store
    from flywheel_ui.app import get_conn

    attempt = {**attempt, "subject": attempt.get("subject")}
    if attempt["subject"] is None:
        try:
            attempt["subject"] = subject_of(attempt)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read the review's subject: %s", exc)
    conn = get_conn()
    try:
        store.execute(conn, "insert_review_attempt", attempt)
    finally:
        conn.close()


class RecordRefusedReviewAnswers:
    def __init__(self, app, *, resolve_user: Callable[[Any], Awaitable[str]] | None = None,
                 recorder: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.app = app
        self.resolve_user = resolve_user or airflow_user
        self.recorder = recorder or record

    async def __call__(self, scope, receive, send):
        target = parse(scope.get("path", "")) if scope.get("type") == "http" and scope.get("method") == "PATCH" else None
        if target is None:
            return await self.app(scope, receive, send)
        status: dict[str, Any] = {"code": None, "body": b""}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and status["code"] in REFUSED:
                status["body"] += message.get("body", b"")[:4000]
            await send(message)

        await self.app(scope, receive, watch)
        if status["code"] not in REFUSED:
            return
        try:
            detail = json.loads(status["body"] or b"{}").get("detail")
        except ValueError:
            detail = None
        attempt = {**target, "username": await self.resolve_user(scope), "http_status": status["code"],
                   "detail": str(detail or status["body"][:500].decode("utf-8", "replace"))}
        try:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(self.recorder, attempt)
        except Exception as exc:  # noqa: BLE001 - never turn a recorded refusal into a server error
            log.error("could not record the refused review answer %s: %s", attempt, exc)
