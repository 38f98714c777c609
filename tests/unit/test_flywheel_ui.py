"""The flywheel page's data, charts and app on a real PostgreSQL (seeded with a run, scores and
deployments). Airflow's authentication is replaced here by a fixed user (and the pending reviews,
which live in Airflow's metadata DB, by an empty list): the page under Airflow's real auth, with
the real reviews, is tested in a browser by the e2e test."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flywheel.adapters import postgres as store
from flywheel_ui import charts

RUN = "flywheel_on_demand/manual__2026-11-30"


def test_scatter_is_log_scaled_and_skips_unpriced_points():
    chart = charts.score_vs_cost([
        {"label": "a", "kind": "candidate", "score": 0.5, "cost": 0.001},
        {"label": "p", "kind": "production", "score": 1.0, "cost": 0.1},
        {"label": "free", "kind": "candidate", "score": 0.2, "cost": None},
    ])
    assert [p["label"] for p in chart.points] == ["a", "p"]
    a, p = chart.points
    assert a["x"] == chart.plot["x0"] and p["x"] == chart.plot["x1"]  # 1e-3 .. 1e-1 spans the axis
    assert a["y"] == pytest.approx((chart.plot["y0"] + chart.plot["y1"]) / 2, abs=0.1)
    assert [t["label"] for t in chart.x_ticks] == ["0.001", "0.01", "0.1"]
    assert charts.score_vs_cost([]).empty


def test_history_puts_a_runs_points_in_one_column_and_draws_the_budget():
    chart = charts.score_history(
        [{"label": "r1", "score": 0.6, "guard": []},
         {"label": "r2", "score": 0.7, "guard": [{"label": "g", "score": 0.55, "passed": False}]}],
        [{"label": "baseline", "score": 0.6, "style": "base"}, {"label": "budget", "score": 0.585, "style": "budget"}])
    best = [p for p in chart.points if p["kind"] == "best"]
    blocked = [p for p in chart.points if p["kind"] == "blocked"]
    assert len(best) == 2 and blocked[0]["x"] == best[1]["x"]
    assert chart.polyline == f"{best[0]['x']},{best[0]['y']} {best[1]['x']},{best[1]['y']}"
    assert [ln["style"] for ln in chart.lines] == ["base", "budget"] and chart.lines[1]["y"] > chart.lines[0]["y"]


class _User:
    def get_name(self):
        return "alice"

    def get_id(self):
        return "alice"


def _seed(conn):
    store.execute(conn, "upsert_run", {"run_key": RUN, "dag_id": "flywheel_on_demand", "airflow_run_id": "manual__2026-11-30",
                                       "interval_start": "2026-11-23T00:00:00Z", "interval_end": "2026-11-30T00:00:00Z",
                                       "params": {"threshold": 0.4, "slice_floor": 0.3}})
    with conn.cursor() as cur:
        cur.execute("INSERT INTO datasets (run_key, workload_id, kind, n_in, n_accepted, n_quarantined, n_duplicates,"
                    " n_eval, n_train, n_val, usable, pii) VALUES (%s, 'tool_router', 'tool_calling', 100, 90, 6, 4,"
                    " 20, 63, 7, true, '{\"email\": 3}')", (RUN,))
        for strategy, score, cost in (("base", 0.0, 0.00125), ("lora", 0.5, 0.0014)):
            cur.execute("INSERT INTO experiments (run_key, workload_id, candidate, strategy, status) VALUES"
                        " (%s, 'tool_router', 'tiny-lm-1.6m', %s, 'succeeded')", (RUN, strategy))
            cur.execute("INSERT INTO experiment_scores (run_key, workload_id, candidate, strategy, method, n, n_items,"
                        " score, ci_low, ci_high, avg_tokens, cost_per_1k, prod_cost_per_1k, worst_slice,"
                        " worst_slice_score) VALUES (%s, 'tool_router', 'tiny-lm-1.6m', %s, 'tool_call_exact', 20, 20,"
                        " %s, %s, %s, 150, %s, 0.11, 'refund', %s)", (RUN, strategy, score, score, score, cost, score))
        cur.execute("INSERT INTO deployments (workload_id, version, candidate, strategy, model_path, run_key, status,"
                    " approved_by, served_model, scores) VALUES ('tool_router', 1, 'tiny-lm-1.6m', 'lora', 'm', %s,"
                    " 'active', 'alice', 'tool_router-v1', '{\"score\": 0.5, \"cost_per_1k\": 0.0014}')", (RUN,))
        cur.execute("INSERT INTO routing (workload_id, endpoint, model, base_model, version, updated_by) VALUES"
                    " ('tool_router', 'http://127.0.0.1:8000', 'tool_router-v1', 'tiny-lm-1.6m', 1, 'alice')")
    conn.commit()


@pytest.fixture
def client(flywheel_db, monkeypatch, pg_socket):
    from fastapi.testclient import TestClient

    from flywheel_ui import app as ui
    from flywheel_ui import data

    _seed(flywheel_db)
    import psycopg2

    monkeypatch.setattr(ui, "get_conn", lambda: psycopg2.connect(f"host={pg_socket} user=postgres dbname=flywheel"))
    monkeypatch.setattr(ui, "_may", lambda user, method: True)
    monkeypatch.setattr(data, "pending_reviews", lambda: [{
        "dag_id": "flywheel_on_demand", "run_id": "manual__2026-11-30", "task_id": "review", "map_index": 0,
        "subject": "Deploy tiny-lm-1.6m (lora) for support_qa?", "assignees": ["Alice"],
        "body_html": data.markdown_html("| item | answer |\n|---|---|\n| a | <script>x</script> |"),
        "created_at": datetime(2026, 11, 30, tzinfo=timezone.utc),
        "link": data.required_action_link("flywheel_on_demand", "manual__2026-11-30", "review", 0)}])
    ui.app.dependency_overrides[ui.current_user] = _User
    ui.app.dependency_overrides[ui.optional_user] = _User
    yield TestClient(ui.app)
    ui.app.dependency_overrides.clear()


def test_page_shows_leaderboard_deployments_and_reviews(client):
    resp = client.get("/")
    assert resp.status_code == 200, resp.text
    html = resp.text
    assert 'id="workload-tool_router"' in html and "Signed in as <b>alice</b>" in html
    assert '<td class="num score">0.500</td>' in html and '<td class="num score">0.000</td>' in html
    assert "tool_router-v1" in html and "Roll back" in html
    assert "/dags/flywheel_on_demand/runs/manual__2026-11-30/tasks/review/required_actions?map_index=0" in html
    assert "email 3" in html  # the PII audit of the dataset
    # The review's evidence is rendered, the HTML in quoted traffic escaped.
    assert "<td>&lt;script&gt;x&lt;/script&gt;</td>" in html and "<script>x</script>" not in html
    assert html.count('<circle class="pt-') >= 4  # two candidates, production, the deployed version, history


def test_json_and_rollback_refusal(client, flywheel_db):
    data = client.get("/api/workloads").json()
    (w,) = data
    assert w["workload_id"] == "tool_router" and w["route"]["model"] == "tool_router-v1"
    assert {(r["strategy"], r["score"]) for r in w["leaderboard"]} == {("base", 0.0), ("lora", 0.5)}
    (route,) = client.get("/api/routes").json()
    assert (route["workload_id"], route["model"], route["version"]) == ("tool_router", "tool_router-v1", 1)
    body = {"workload_id": "tool_router", "reason": "test"}
    assert client.post("/api/rollback", json=body).status_code == 400  # not from the page (no action header)
    resp = client.post("/api/rollback", json=body, headers={"X-Flywheel-Action": "rollback"})
    assert resp.status_code == 409 and "no earlier version" in resp.json()["message"]
    events = store.fetch_all(flywheel_db, "deployment_events", {"workload_id": "tool_router"})
    assert [(e["action"], e["outcome"], e["actor"]) for e in events] == [("rollback", "refused", "alice")]
