"""What the flywheel page shows, read from the flywheel database (named queries) and, for the
pending reviews, from Airflow's own HITL records. Everything shown is a stored figure: nothing is
estimated here."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flywheel.adapters import deployments
from flywheel.adapters import postgres as store
from flywheel.config import FlywheelConfig
from flywheel.report import gate
from flywheel_ui import charts


def _scatter(rows: list[dict[str, Any]], active) -> charts.Chart:
    points = [{"label": f"{r['candidate']} · {r['strategy']}", "kind": "candidate", "score": r.get("score"),
               "cost": r.get("cost_per_1k")} for r in rows if r.get("status") == "succeeded"]
    prod = [r["prod_cost_per_1k"] for r in rows if r.get("prod_cost_per_1k")]
    if prod:
        # Production's answers are the reference the candidates are scored against: 1.0 by definition.
        points.append({"label": "production (the reference)", "kind": "production", "score": 1.0,
                       "cost": sum(prod) / len(prod)})
    if active is not None and active.scores.get("score") is not None:
        points.append({"label": f"deployed v{active.version} ({active.candidate} · {active.strategy})",
                       "kind": "deployed", "score": active.scores["score"], "cost": active.scores.get("cost_per_1k")})
    return charts.score_vs_cost(points)


def _history(conn, workload_id: str, cfg: FlywheelConfig, served: list) -> tuple[charts.Chart, str]:
    verdicts = store.fetch_all(conn, "guard_verdicts_of_workload", {"workload_id": workload_id})
    guard: dict[str, list[dict[str, Any]]] = {}
    for v in verdicts:
        vs_base = next((c for c in v["checks"] if c["against"] == "baseline" and c["scope"] == "anchor set"), None)
        if vs_base and vs_base.get("candidate") is not None:
            guard.setdefault(v["run_key"], []).append({
                "label": f"{v['run_key']}: {v['candidate']} · {v['strategy']} on the anchor set "
                         f"({'passed' if v['passed'] else 'blocked'})",
                "score": vs_base["candidate"], "passed": v["passed"]})
    runs = [{"label": r["run_key"], "score": r["best_score"], "guard": guard.get(r["run_key"], [])}
            for r in store.fetch_all(conn, "score_history", {"workload_id": workload_id})]
    lines, note = [], ""
    base = next((c for v in verdicts for c in v["checks"] if c["against"] == "baseline" and c["scope"] == "anchor set"
                 and c.get("reference") is not None), None)
    if base is not None:
        lines = [{"label": "first deployed version on the anchor set", "score": base["reference"], "style": "base"},
                 {"label": f"regression budget: baseline − {cfg.guard.cumulative:.3f}",
                  "score": base["reference"] - cfg.guard.cumulative, "style": "budget"}]
        note = ("a candidate whose anchor-set score falls below the dashed line is blocked (the cumulative budget); the "
                "per-iteration and per-slice checks are in each verdict's reason")
    elif served and served[0].scores.get("score") is not None:
        first = served[0]
        lines = [{"label": f"first deployed version v{first.version} (its eval score)", "score": first.scores["score"],
                  "style": "base"},
                 {"label": f"regression budget: − {cfg.guard.cumulative:.3f}",
                  "score": first.scores["score"] - cfg.guard.cumulative, "style": "budget"}]
        note = "no candidate has been checked on the anchor set yet; the line is the first deployment's eval score"
    return charts.score_history(runs, lines), note


def workload_view(conn, cfg: FlywheelConfig, latest: dict[str, Any]) -> dict[str, Any]:
    w = latest["workload_id"]
    plan = latest.get("params") or {}
    threshold = plan.get("threshold", cfg.threshold)
    floor = plan.get("slice_floor")
    rows = [r for r in store.fetch_all(conn, "leaderboard", {"run_key": latest["run_key"]}) if r["workload_id"] == w]
    verdicts = {(v["candidate"], v["strategy"]): v
                for v in store.fetch_all(conn, "guard_verdicts_of_run", {"run_key": latest["run_key"]})
                if v["workload_id"] == w}
    for r in rows:
        r["gate"] = gate(r, cfg, threshold, floor)
        r["guard"] = verdicts.get((r["candidate"], r["strategy"]))
    history = deployments.history(conn, w)
    served = [d for d in history if d.status in ("active", "superseded", "rolled_back")]
    active = next((d for d in history if d.status == "active"), None)
    route = deployments.routes(conn, w)
    hist_chart, hist_note = _history(conn, w, cfg, served)
    return {
        "workload_id": w,
        "run_key": latest["run_key"],
        "run_at": latest["created_at"],
        "threshold": threshold,
        "slice_floor": cfg.slice_floor if floor is None else floor,
        "dataset": {k: latest.get(k) for k in ("n_in", "n_accepted", "n_quarantined", "n_duplicates", "n_eval",
                                               "n_train", "n_val", "pii", "usable", "reason")},
        "leaderboard": rows,
        "scatter": _scatter(rows, active),
        "history": hist_chart,
        "history_note": hist_note,
        "deployments": list(reversed(history)),
        "active": active,
        "route": route[0] if route else None,
        "events": list(reversed(deployments.events(conn, w)))[:10],
        "rollback_targets": [d.version for d in reversed(served) if active is None or d.version != active.version],
    }


def page_data(conn, cfg: FlywheelConfig) -> list[dict[str, Any]]:
    return [workload_view(conn, cfg, latest) for latest in store.fetch_all(conn, "latest_run_per_workload")]


def markdown_html(text: str) -> str:
    """The review's Markdown evidence as HTML, raw HTML in it escaped (it quotes production traffic)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").render(text)


def required_action_link(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """Airflow's own page for answering a review (what HITLOperator.generate_link_to_ui builds)."""
    path = f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}/required_actions"
    return f"{path}?map_index={int(map_index)}"


def pending_reviews() -> list[dict[str, Any]]:
    """Unanswered reviews of the flywheel's DAGs (tagged `flywheel`), from Airflow's metadata DB."""
    from sqlalchemy import select

    from airflow.models.dag import DagTag
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index,
                   HITLDetail.subject, HITLDetail.body, HITLDetail.assignees, HITLDetail.created_at)
            .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
            .join(DagTag, DagTag.dag_id == TaskInstance.dag_id)
            .where(HITLDetail.responded_at.is_(None), DagTag.name == "flywheel")
            .order_by(HITLDetail.created_at)
        ).all()
    return [{"dag_id": r.dag_id, "run_id": r.run_id, "task_id": r.task_id, "map_index": r.map_index,
             "subject": r.subject, "body_html": markdown_html(r.body or ""),
             "assignees": [a.get("name") or a.get("id") for a in (r.assignees or [])],
             "created_at": r.created_at, "link": required_action_link(r.dag_id, r.run_id, r.task_id, r.map_index)}
            for r in rows]
