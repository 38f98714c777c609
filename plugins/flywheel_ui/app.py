"""The flywheel page's FastAPI app, mounted by Airflow's api-server at /flywheel (see plugin.py).

It runs under Airflow's own authentication: the JWT Airflow's UI keeps in the ``_token`` cookie
(or a bearer token) is checked by Airflow's auth manager, a visitor without one is sent to
Airflow's login, and actions are authorised like DAG edits. Rollbacks are recorded with the
logged-in user as the actor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

TEMPLATES = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                        autoescape=select_autoescape(["html"]))
FLYWHEEL_CONN_ID = "flywheel_db"


def get_conn():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from flywheel.adapters.airflow_tasks import FLYWHEEL_CONN_ID as conn_id

    return PostgresHook(postgres_conn_id=conn_id).get_conn()


async def current_user(request: Request):
    """The Airflow user of this request (cookie or bearer token), as Airflow's API resolves it."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    return await get_user(request, None, credentials)


async def optional_user(request: Request):
    """The user, or None when the request carries no valid credential (the page then sends to login)."""
    try:
        return await current_user(request)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            return None
        raise


def _auth_manager():
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def _may(user, method: str) -> bool:
    return _auth_manager().is_authorized_dag(method=method, user=user)


class RollbackBody(BaseModel):
    workload_id: str = Field(min_length=1, max_length=64)
    to_version: int | None = Field(default=None, ge=1)
    reason: str = Field(min_length=1, max_length=2000)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _money(v: Any) -> str:
    if v is None:
        return "-"
    return f"${v:,.2f}" if abs(v) >= 1 else f"${v:.5f}"


TEMPLATES.filters["num"] = _fmt
TEMPLATES.filters["money"] = _money


def create_app() -> FastAPI:
    app = FastAPI(title="Data flywheel", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user=Depends(optional_user)):
        if user is None:
            login = _auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        if not _may(user, "GET"):
            raise HTTPException(403, "you may not read the flywheel's DAGs")
        from flywheel.config import load_config
        from flywheel_ui.data import page_data, pending_reviews

        cfg = load_config()
        from flywheel.adapters import postgres as store

        conn = get_conn()
        try:
            workloads = page_data(conn, cfg)
            attempts = list(reversed(store.fetch_all(conn, "review_attempts")))[:10]
        finally:
            conn.close()
        html = TEMPLATES.get_template("flywheel.html").render(
            user=user.get_name(), workloads=workloads, pending=pending_reviews(), cfg=cfg, attempts=attempts,
            may_rollback=_may(user, "PUT"), message=request.query_params.get("message", ""))
        return HTMLResponse(html)

    @app.get("/api/workloads")
    def workloads_json(user=Depends(current_user)):
        if not _may(user, "GET"):
            raise HTTPException(403, "you may not read the flywheel's DAGs")
        from flywheel.config import load_config
        from flywheel_ui.data import page_data

        conn = get_conn()
        try:
            data = page_data(conn, load_config())
        finally:
            conn.close()
        out = []
        for w in data:
            out.append({
                "workload_id": w["workload_id"], "run_key": w["run_key"], "threshold": w["threshold"],
                "leaderboard": [{k: r.get(k) for k in ("candidate", "strategy", "status", "score", "ci_low", "ci_high",
                                                       "worst_slice", "worst_slice_score", "method", "cost_per_1k",
                                                       "prod_cost_per_1k", "monthly_savings", "gate")}
                                | {"guard": r["guard"]["reason"] if r.get("guard") else None}
                                for r in w["leaderboard"]],
                "deployments": [d.model_dump(mode="json") for d in w["deployments"]],
                "route": w["route"].model_dump(mode="json") if w["route"] else None,
            })
        return JSONResponse(out)

    @app.get("/api/routes")
    def routes_json(user=Depends(current_user)):
        """The routing records: which model serves each workload, and where (for applications that
        cannot read the flywheel database; authenticate with an Airflow JWT)."""
        if not _may(user, "GET"):
            raise HTTPException(403, "you may not read the flywheel's DAGs")
        from flywheel.adapters import deployments

        conn = get_conn()
        try:
            return [r.model_dump(mode="json") for r in deployments.routes(conn)]
        finally:
            conn.close()

    @app.post("/api/rollback")
    def rollback(body: RollbackBody, request: Request, user=Depends(current_user)):
        # A JSON body with this header cannot be sent by a cross-site form: no CSRF through the cookie.
        if request.headers.get("x-flywheel-action") != "rollback":
            raise HTTPException(400, "send the rollback from the flywheel page (X-Flywheel-Action header missing)")
        if not _may(user, "PUT"):
            raise HTTPException(403, f"{user.get_name()} may not change deployments (needs edit rights on DAGs)")
        from flywheel.adapters import deployments, serving
        from flywheel.deploy import DeploymentError

        conn = get_conn()
        try:
            dep = deployments.rollback(conn, serving.client(), body.workload_id, to_version=body.to_version,
                                       actor=user.get_name(), reason=body.reason)
        except DeploymentError as exc:
            return JSONResponse({"ok": False, "message": str(exc)}, status_code=409)
        finally:
            conn.close()
        return {"ok": True, "message": f"{dep.workload_id}: v{dep.version} (restores v{dep.rollback_of}) is active, "
                                       f"served as {dep.served_model}", "version": dep.version}

    return app


app = create_app()
