"""Gathers a review's evidence from PostgreSQL and object storage (flywheel.evidence renders it)."""

from __future__ import annotations

from typing import Any

from flywheel.adapters import object_storage
from flywheel.adapters import postgres as store
from flywheel.evidence import EvidenceItem, biggest_regressions, evidence_markdown, pick_items, request_text


def review_evidence(conn, run_key: str, winner: dict[str, Any], *, n_items: int = 8) -> str:
    from flywheel.adapters.deployments import history
    from flywheel.deploy import current

    w = winner["workload_id"]
    key = {"run_key": run_key, "workload_id": w, "candidate": winner["candidate"], "strategy": winner["strategy"]}
    dataset = (store.fetch_all(conn, "dataset_of_run", {"run_key": run_key, "workload_id": w}) or [None])[0]
    requests: dict[str, Any] = {}
    if dataset and dataset.get("uri"):
        requests = {str(r["id"]): r.get("request") or {} for r in object_storage.read_jsonl(dataset["uri"])
                    if r.get("split") == "eval"}
    items = [EvidenceItem(item_id=r["item_id"], slice=r["slice"], request=request_text(requests.get(r["item_id"], {})),
                          production=r["reference"], candidate=r["prediction"], score=r["score"])
             for r in store.fetch_all(conn, "evaluation_items", key)]

    active = current(history(conn, w))
    regressions = None
    if active is not None:
        mine = {r["item_id"]: r for r in store.fetch_all(conn, "anchor_scores_of_experiment", key)}
        theirs = {r["item_id"]: r for r in store.fetch_all(conn, "anchor_scores_of_experiment", {
            "run_key": active.run_key, "workload_id": w, "candidate": active.candidate, "strategy": active.strategy})}
        if mine and theirs:
            records = {r["item_id"]: r["record"] for r in store.fetch_all(conn, "anchor_items", {"workload_id": w})}
            regressions = biggest_regressions(mine, theirs, records)
    verdict = next((v for v in store.fetch_all(conn, "guard_verdicts_of_run", {"run_key": run_key})
                    if (v["workload_id"], v["candidate"], v["strategy"]) == (w, winner["candidate"], winner["strategy"])),
                   None)
    exp = (store.fetch_all(conn, "experiment_metrics", key) or [{}])[0]
    training = exp.get("metrics") if winner["strategy"] == "lora" else None
    return evidence_markdown(dataset=dataset, items=pick_items(items, n_items), regressions=regressions,
                             active_version=active.version if active else None,
                             guard_reason=verdict["reason"] if verdict else None, training=training)
