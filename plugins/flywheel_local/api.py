"""A small client of Airflow's public REST API (v2): what the CLI and the tests use to trigger
runs, follow them and answer reviews — the same calls a user's own tooling would make."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class AirflowAPI:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # Reads are retried with backoff on a server error or a dropped connection (the api-server
        # answers 500 "Database error" when its metadata database is momentarily unavailable, e.g.
        # on a loaded machine); writes are not, so nothing is ever done twice.
        retry = Retry(total=5, connect=5, read=2, status=5, backoff_factor=1.0,
                      status_forcelist=(500, 502, 503, 504), allowed_methods=frozenset({"GET"}),
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        resp = self.session.post(f"{self.base_url}/auth/token", json={"username": username, "password": password},
                                 timeout=timeout)
        resp.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _url(self, *parts: str) -> str:
        return self.base_url + "/api/v2/" + "/".join(urllib.parse.quote(str(p), safe="~") for p in parts)

    def _call(self, method: str, *parts: str, **kwargs: Any) -> Any:
        resp = self.session.request(method, self._url(*parts), timeout=self.timeout, **kwargs)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {resp.url} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180.0) -> dict:
        """Wait until the dag-processor has parsed the DAG (a fresh install has not yet)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._call("GET", "dags", dag_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", "dags", dag_id, json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._call("POST", "dags", dag_id, "dagRuns", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", "dags", dag_id, "dagRuns", run_id)

    def dag_runs(self, dag_id: str, *, conf_contains: str | None = None, limit: int = 100) -> list[dict]:
        """Runs of a DAG, newest first; `conf_contains` keeps those whose conf contains the text."""
        params: dict[str, Any] = {"limit": limit, "order_by": "-id"}
        if conf_contains:
            params["conf_contains"] = conf_contains
        return self._call("GET", "dags", dag_id, "dagRuns", params=params)["dag_runs"]

    def create_backfill(self, body: dict[str, Any]) -> dict:
        """POST /api/v2/backfills: what the UI's backfill form sends."""
        return self._call("POST", "backfills", json=body)

    def backfills(self, dag_id: str) -> list[dict]:
        return self._call("GET", "backfills", params={"dag_id": dag_id, "limit": 100})["backfills"]

    def pool(self, name: str) -> dict:
        return self._call("GET", "pools", name)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        out: list[dict] = []
        while True:
            page = self._call("GET", "dags", dag_id, "dagRuns", run_id, "taskInstances",
                              params={"limit": 100, "offset": len(out)})
            out += page["task_instances"]
            if len(out) >= page["total_entries"] or not page["task_instances"]:
                return out

    def pending_reviews(self, dag_id: str = "~", run_id: str = "~") -> list[dict]:
        page = self._call("GET", "dags", dag_id, "dagRuns", run_id, "hitlDetails",
                          params={"response_received": "false", "limit": 100})
        return page["hitl_details"]

    def respond(self, review: dict, option: str, comment: str = "") -> dict:
        ti = review["task_instance"]
        return self._call("PATCH", "dags", ti["dag_id"], "dagRuns", ti["dag_run_id"], "taskInstances",
                          ti["task_id"], str(ti["map_index"]), "hitlDetails",
                          json={"chosen_options": [option], "params_input": {"comment": comment}})
