"""Deploy and roll back: the deployment rules of flywheel.deploy applied to PostgreSQL and the
serving endpoint.

One transaction per change, holding the workload's advisory lock from the registration of the new
version to the routing switch: two changes of one workload never interleave, and a crash before
the commit leaves no half-made version behind. The endpoint is asked to load the new model
*before* anything switches; when it is down or refuses, the version is recorded as failed with the
endpoint's answer, the event is recorded, and the active version and its route stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flywheel.adapters import postgres as store
from flywheel.adapters.serving import ServingClient, ServingError, stage_adapter
from flywheel.deploy import (
    Deployment,
    DeploymentError,
    RollbackRefused,
    Route,
    current,
    rollback_target,
    served_model_name,
)

log = logging.getLogger(__name__)


class DeployRequest(BaseModel):
    """An approved candidate to register and serve (crosses the review task -> deployment boundary)."""

    run_key: str
    workload_id: str
    candidate: str
    strategy: str
    model_path: str
    adapter_uri: str | None = None
    template_version: str | None = None
    dataset_hash: str | None = None
    scores: dict[str, Any] = Field(default_factory=dict)
    approved_by: str


def template_version(model_path: str) -> str:
    """The prompt format a model is prompted with: its chat template (by content hash) when its
    tokenizer has one, else the flywheel's own line format (flywheel.prompts)."""
    config = Path(model_path) / "tokenizer_config.json"
    try:
        template = json.loads(config.read_text()).get("chat_template")
    except (OSError, ValueError):
        template = None
    jinja = Path(model_path) / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text()
    if template:
        text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
        return f"chat_template:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return "flywheel.prompts:1"


def history(conn, workload_id: str | None = None) -> list[Deployment]:
    return [Deployment(**_deployment_fields(r)) for r in store.fetch_all(conn, "deployment_history",
                                                                         {"workload_id": workload_id})]


def _deployment_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in Deployment.model_fields if k in row}


def routes(conn, workload_id: str | None = None) -> list[Route]:
    return [Route(**r) for r in store.fetch_all(conn, "routes", {"workload_id": workload_id})]


def events(conn, workload_id: str | None = None) -> list[dict[str, Any]]:
    return store.fetch_all(conn, "deployment_events", {"workload_id": workload_id})


def _event(cur, workload_id: str, action: str, outcome: str, actor: str, *, version=None, from_version=None,
           to_version=None, reason: str = "", error: str | None = None) -> None:
    store.run_query(cur, "insert_deployment_event", {
        "workload_id": workload_id, "action": action, "outcome": outcome, "version": version,
        "from_version": from_version, "to_version": to_version, "actor": actor, "reason": reason,
        "error": error[:2000] if error else None,
    })


def _load(serving: ServingClient, served: str, dep: dict[str, Any]) -> str:
    """Make the endpoint serve this version; returns the name applications call it by."""
    if dep["serving_path"]:
        if served in serving.model_ids():
            # Left by an attempt whose transaction did not commit (nothing routes to it): load afresh.
            serving.unload_adapter(served)
        serving.load_adapter(served, dep["serving_path"], base_model=dep["candidate"])
        return served
    # base / icl: the candidate's base model itself serves the workload.
    served_now = serving.model_ids()
    if dep["candidate"] not in served_now:
        raise ServingError(f"serving endpoint {serving.base_url} does not serve base model {dep['candidate']!r} "
                           f"(it serves {sorted(served_now)}); start it with that model")
    return dep["candidate"]


def _switch(cur, serving: ServingClient, *, workload_id: str, version: int, dep: dict[str, Any], actor: str,
            action: str, retire_as: str, from_version: int | None, to_version: int | None,
            reason: str) -> tuple[bool, str | None]:
    """Load version `version` on the endpoint, then make it active and route to it. (ok, error)."""
    try:
        if dep["adapter_uri"] and not dep["serving_path"]:
            dep["serving_path"] = stage_adapter(dep["adapter_uri"], workload_id, version)
            store.run_query(cur, "set_serving_path", {"workload_id": workload_id, "version": version,
                                                      "serving_path": dep["serving_path"]})
        served = _load(serving, served_model_name(workload_id, version), dep)
    except ServingError as exc:
        store.run_query(cur, "fail_deployment", {"workload_id": workload_id, "version": version, "error": str(exc),
                                                 "endpoint": serving.base_url})
        _event(cur, workload_id, action, "failed", actor, version=version, from_version=from_version,
               to_version=to_version, reason=reason, error=str(exc))
        return False, str(exc)
    store.run_query(cur, "retire_active", {"workload_id": workload_id, "status": retire_as})
    store.run_query(cur, "activate_deployment", {"workload_id": workload_id, "version": version,
                                                 "served_model": served, "endpoint": serving.base_url})
    store.run_query(cur, "upsert_route", {"workload_id": workload_id, "endpoint": serving.base_url, "model": served,
                                          "base_model": dep["candidate"], "version": version, "updated_by": actor})
    _event(cur, workload_id, action, "succeeded", actor, version=version, from_version=from_version,
           to_version=to_version, reason=reason)
    return True, None


def _unload_stale(serving: ServingClient, workload_id: str, keep: set[str]) -> None:
    """Unload this workload's adapters except the active one and the one it replaced (applications
    that read the route a moment ago still reach it). Best effort: a leftover adapter serves nobody."""
    pattern = re.compile(re.escape(served_model_name(workload_id, 0)[:-1]) + r"\d+$")
    try:
        loaded = [m for m in serving.model_ids() if pattern.match(m)]
        for name in loaded:
            if name not in keep:
                serving.unload_adapter(name)
    except ServingError as exc:
        log.warning("could not unload old adapters of %s: %s", workload_id, exc)


def deploy(conn, serving: ServingClient, req: DeployRequest) -> Deployment:
    """Register an approved candidate as a new version and serve it; idempotent per experiment.

    A retried task finds the version it made: an active (or since superseded) one is returned as
    it is, a failed one is tried again under the same version number.
    """
    w = req.workload_id
    key = {"run_key": req.run_key, "workload_id": w, "candidate": req.candidate, "strategy": req.strategy}
    with store.transaction(conn) as cur:
        store.advisory_lock(cur, f"deployments/{w}")
        before = history_cur(cur, w)
        active = current(before)
        existing = store.run_query(cur, "first_deployment_of_experiment", key)
        if existing and existing[0]["status"] != "failed":
            return next(d for d in before if d.version == existing[0]["version"])
        if existing:
            version = existing[0]["version"]
            store.run_query(cur, "retry_deployment", {"workload_id": w, "version": version,
                                                      "approved_by": req.approved_by})
        else:
            version = store.run_query(cur, "register_deployment", {
                **key, "model_path": req.model_path, "adapter_uri": req.adapter_uri, "approved_by": req.approved_by,
                "base_model": req.candidate, "template_version": req.template_version,
                "dataset_hash": req.dataset_hash, "scores": req.scores, "rollback_of": None, "serving_path": None,
            })[0]["version"]
        dep = {"candidate": req.candidate, "adapter_uri": req.adapter_uri, "serving_path": None}
        prior = next((d for d in before if d.version == version), None)
        if prior and prior.serving_path:
            dep["serving_path"] = prior.serving_path
        ok, error = _switch(cur, serving, workload_id=w, version=version, dep=dep, actor=req.approved_by,
                            action="deploy", retire_as="superseded",
                            from_version=active.version if active else None, to_version=None,
                            reason=f"approved in review of {req.run_key}")
        after = history_cur(cur, w)
    if not ok:
        raise DeploymentError(f"deployment v{version} of {w} failed; v{active.version if active else '-'} "
                              f"stays active: {error}")
    _unload_stale(serving, w, {d.served_model for d in after if d.served_model and
                               (d.status == "active" or (active and d.version == active.version))})
    return next(d for d in after if d.version == version)


def rollback(conn, serving: ServingClient, workload_id: str, *, actor: str, reason: str,
             to_version: int | None = None) -> Deployment:
    """Serve an earlier version again, as a new version that points back at it (rollback_of).

    Refused (nothing changes, the refusal is recorded) when there is no earlier version to go
    back to; failed (recorded, the active version stays) when the endpoint is down or refuses.
    """
    if not actor.strip():
        raise DeploymentError("a rollback needs the name of who does it")
    if not reason.strip():
        raise DeploymentError("a rollback needs a reason (it is recorded with the rollback)")
    w = workload_id
    with store.transaction(conn) as cur:
        store.advisory_lock(cur, f"deployments/{w}")
        before = history_cur(cur, w)
        try:
            active, target = rollback_target(before, w, to_version)
        except RollbackRefused as exc:
            active = current(before) if before else None
            _event(cur, w, "rollback", "refused", actor, from_version=active.version if active else None,
                   to_version=to_version, reason=reason, error=str(exc))
            refused: Exception | None = exc
        else:
            refused = None
            version = store.run_query(cur, "register_deployment", {
                "run_key": target.run_key, "workload_id": w, "candidate": target.candidate,
                "strategy": target.strategy, "model_path": target.model_path, "adapter_uri": target.adapter_uri,
                "approved_by": actor, "base_model": target.candidate,
                "template_version": target.template_version, "dataset_hash": target.dataset_hash,
                "scores": target.scores,
                "rollback_of": target.version, "serving_path": target.serving_path,
            })[0]["version"]
            dep = {"candidate": target.candidate, "adapter_uri": target.adapter_uri,
                   "serving_path": target.serving_path}
            ok, error = _switch(cur, serving, workload_id=w, version=version, dep=dep, actor=actor,
                                action="rollback", retire_as="rolled_back", from_version=active.version,
                                to_version=target.version, reason=reason)
            after = history_cur(cur, w)
    if refused is not None:
        raise refused
    if not ok:
        raise DeploymentError(f"rollback of {w} to v{target.version} failed; v{active.version} stays active: {error}")
    _unload_stale(serving, w, {d.served_model for d in after if d.served_model and
                               (d.status == "active" or d.version == active.version)})
    return next(d for d in after if d.version == version)


def history_cur(cur, workload_id: str) -> list[Deployment]:
    return [Deployment(**_deployment_fields(r))
            for r in store.run_query(cur, "deployment_history", {"workload_id": workload_id})]
