"""The regression guard's data: each workload's frozen anchor set in PostgreSQL, every experiment's
scores on it, and the guard's verdict per candidate (the rule itself is flywheel.regression).

How a candidate gets anchor scores: its GPU job generates on the eval items *and* on the anchor
items (ids prefixed ``anchor:``, so they never collide with this run's eval items); the evaluate
step scores the anchor answers with the same scorer and stores them apart, so the leaderboard's
numbers stay those of the run's own eval split.
"""

from __future__ import annotations

import logging
from typing import Any

from flywheel.adapters import postgres as store
from flywheel.deploy import SERVED_STATUSES
from flywheel.regression import AnchorScore, GuardBudgets, GuardVerdict, check_candidate

log = logging.getLogger(__name__)

ANCHOR_PREFIX = "anchor:"


def anchor_rows(conn, workload_id: str) -> list[dict[str, Any]]:
    """The workload's anchor items as curated dataset rows (id, split, label, request, response, ...)."""
    return [{**r["record"], "id": r["item_id"], "label": r["slice"]}
            for r in store.fetch_all(conn, "anchor_items", {"workload_id": workload_id})]


def with_anchors(rows: list[dict[str, Any]], anchors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dataset rows plus the anchor items as extra eval rows (prefixed ids): what a job generates on."""
    return [*rows, *({**a, "id": f"{ANCHOR_PREFIX}{a['id']}", "split": "eval"} for a in anchors)]


def split_predictions(predictions: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(eval predictions, anchor predictions by anchor item id)."""
    plain = {k: v for k, v in predictions.items() if not k.startswith(ANCHOR_PREFIX)}
    anchors = {k[len(ANCHOR_PREFIX):]: v for k, v in predictions.items() if k.startswith(ANCHOR_PREFIX)}
    return plain, anchors


def freeze_anchor_set(conn, *, workload_id: str, run_key: str, candidate: str, strategy: str,
                      eval_rows: list[dict[str, Any]], added_by: str) -> int:
    """At a workload's first deployment: its run's eval items become the anchor set, and the
    deployed experiment's eval scores become its anchor scores (the baseline). Returns the number
    of items frozen now (0 when the workload already has an anchor set)."""
    with store.transaction(conn) as cur:
        store.advisory_lock(cur, f"anchors/{workload_id}")
        if store.run_query(cur, "anchor_items", {"workload_id": workload_id}):
            return 0
        for r in eval_rows:
            store.run_query(cur, "insert_anchor_item", {
                "workload_id": workload_id, "item_id": str(r["id"]), "slice": r.get("label") or "all",
                "record": _record(r), "source": "first_deployment", "source_run_key": run_key, "added_by": added_by,
            })
        key = {"run_key": run_key, "workload_id": workload_id, "candidate": candidate, "strategy": strategy}
        for item in store.run_query(cur, "eval_items_of_experiment", key):
            store.run_query(cur, "upsert_anchor_score", {**key, **item})
    log.info("anchor set of %s frozen: %d items of %s", workload_id, len(eval_rows), run_key)
    return len(eval_rows)


def extend_anchor_set(conn, *, workload_id: str, run_key: str, eval_rows: list[dict[str, Any]], item_ids: list[str],
                      added_by: str) -> list[str]:
    """A reviewer adds items of a run's eval split to the anchor set (never removes one). Returns
    the ids added; an id that is not an eval item of that run is an error naming it."""
    by_id = {str(r["id"]): r for r in eval_rows}
    unknown = [i for i in item_ids if i not in by_id]
    if unknown:
        raise ValueError(f"{unknown} are not eval items of {run_key} for {workload_id}; pick ids from its evidence")
    added = []
    with store.transaction(conn) as cur:
        existing = {r["item_id"] for r in store.run_query(cur, "anchor_items", {"workload_id": workload_id})}
        for item_id in item_ids:
            if item_id in existing:
                continue
            r = by_id[item_id]
            store.run_query(cur, "insert_anchor_item", {
                "workload_id": workload_id, "item_id": item_id, "slice": r.get("label") or "all",
                "record": _record(r), "source": "review", "source_run_key": run_key, "added_by": added_by,
            })
            added.append(item_id)
    return added


def _record(row: dict[str, Any]) -> dict[str, Any]:
    # The redacted record as curated (the same fields as a dataset row), without its split.
    return {k: v for k, v in row.items() if k not in ("split",)}


def store_anchor_scores(conn, key: dict[str, str], item_rows: list[dict[str, Any]]) -> int:
    """Anchor scores of one experiment: the evaluator's item rows for the anchor items."""
    return store.execute_many(conn, "upsert_anchor_score", (
        {**key, "item_id": r["item_id"], "slice": r["slice"], "score": r["score"], "prediction": r.get("prediction", "")}
        for r in item_rows))


def _scores(conn, key: dict[str, str]) -> dict[str, AnchorScore]:
    return {r["item_id"]: AnchorScore(slice=r["slice"], score=r["score"])
            for r in store.fetch_all(conn, "anchor_scores_of_experiment", key)}


def _key(d) -> dict[str, str]:
    return {"run_key": d.run_key, "workload_id": d.workload_id, "candidate": d.candidate, "strategy": d.strategy}


def guard_candidate(conn, candidate: dict[str, Any], budgets: GuardBudgets, *, run_key: str) -> GuardVerdict:
    """Check one candidate experiment against the active version and the baseline; record the verdict."""
    from flywheel.adapters.deployments import history
    from flywheel.deploy import current

    w = candidate["workload_id"]
    key = {"run_key": run_key, "workload_id": w, "candidate": candidate["candidate"], "strategy": candidate["strategy"]}
    anchors = {r["item_id"] for r in store.fetch_all(conn, "anchor_items", {"workload_id": w})}
    active_scores = baseline_scores = None
    active_version = baseline_version = None
    if anchors:
        served = [d for d in history(conn, w) if d.status in SERVED_STATUSES]
        # The baseline: the first served version that was scored on the anchor set (the one whose
        # deployment froze it; versions deployed before the guard existed have no anchor scores).
        for d in served:
            scores = _scores(conn, _key(d))
            if scores:
                baseline_scores, baseline_version = scores, d.version
                break
        active = current(served)
        if active is not None:
            scores = _scores(conn, _key(active))
            if scores:
                active_scores, active_version = scores, active.version
    verdict = check_candidate(_scores(conn, key) if anchors else {}, active=active_scores, baseline=baseline_scores,
                              budgets=budgets, active_version=active_version, baseline_version=baseline_version)
    store.execute(conn, "upsert_guard_verdict", {
        **key, "passed": verdict.passed, "reason": verdict.reason,
        "checks": [c.model_dump() for c in verdict.checks], "active_version": active_version,
        "baseline_version": baseline_version, "budgets": budgets.model_dump(),
    })
    return verdict


def score_anchor_predictions(conn, spec, job: dict[str, Any], cfg, scorer) -> int:
    """Score a finished job's answers on the anchor items with the experiment's own scorer and
    store them; returns how many. An item the scorer could not score (a judge failure) is left out
    rather than counted as a zero: the guard compares the items both versions were scored on."""
    from flywheel.adapters.jobs import load_predictions
    from flywheel.evaluation import evaluate

    _, answers = split_predictions(load_predictions(job["spec"]["output_uri"]))
    if not answers:
        return 0
    # Only items the job generated on: an item added by review after the job started has no answer
    # yet and must not count as a zero.
    rows = [{**a, "split": "eval"} for a in anchor_rows(conn, spec.workload_id) if str(a["id"]) in answers]
    from flywheel.toolcalls import parser_for

    evaluation = evaluate(spec, rows=rows, predictions=answers, cfg=cfg, scorer=scorer,
                          count_tokens=lambda text: len(text.split()),  # tokens only price the run: unused here
                          parse=parser_for(cfg.candidates[spec.candidate].tool_call_parser))
    return store_anchor_scores(conn, spec.key, [i for i in evaluation.items if i["score"] is not None])
