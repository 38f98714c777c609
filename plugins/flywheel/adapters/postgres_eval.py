"""PostgreSQL side of evaluation: scores, slices, traffic, the judge cache, gold references, human
labels and judge calibration (tables of migration 0040, named queries in include/sql/queries.sql).

Issue 10's review evidence and UI read the named queries ``leaderboard``,
``experiment_slices_for_run`` and ``evaluation_items``; the review adds gold answers with
:func:`add_gold_reference` and human grades with :func:`add_human_label`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flywheel.adapters import postgres as store
from flywheel.evaluation import Evaluation
from flywheel.gold import GoldIndex, GoldReference, as_message, request_hash
from flywheel.judge import CallResult, JudgeItem
from flywheel.costs import WorkloadTraffic


def save_evaluation(conn, key: dict[str, str], evaluation: Evaluation) -> None:
    """Items, slices and the experiment's scores, in one transaction (a retry rewrites them)."""
    with store.transaction(conn) as cur:
        for item in evaluation.items:
            store.run_query(cur, "upsert_evaluation", item)
        store.run_query(cur, "delete_experiment_slices", key)
        for s in evaluation.slices:
            store.run_query(cur, "upsert_experiment_slice", {**key, **s.model_dump()})
        store.run_query(cur, "upsert_experiment_score", {**key, **evaluation.result.to_row()})


def save_traffic(conn, run_key: str, traffic: WorkloadTraffic) -> None:
    store.execute(conn, "upsert_workload_traffic", {"run_key": run_key, **traffic.model_dump()})


def run_window(conn, run_key: str, workload_id: str) -> dict[str, Any] | None:
    rows = store.fetch_all(conn, "run_window", {"run_key": run_key, "workload_id": workload_id})
    return rows[0] if rows else None


class PostgresJudgeCache:
    """The judge's replies by (model, prompt version, comparison hash, order): reruns are free."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def get(self, model: str, prompt_version: str, item_hashes: Sequence[str]) -> dict[tuple[str, str], CallResult]:
        rows = store.fetch_all(self.conn, "judge_cache_get", {"judge_model": model, "prompt_version": prompt_version,
                                                              "item_hashes": list(item_hashes)})
        return {(r["item_hash"], r["position"]): CallResult(text=r["reply"], prompt_tokens=r["prompt_tokens"],
                                                            completion_tokens=r["completion_tokens"])
                for r in rows}

    def put(self, model: str, prompt_version: str, entries: Sequence[tuple[str, str, CallResult]]) -> None:
        store.execute_many(self.conn, "judge_cache_put", (
            {"judge_model": model, "prompt_version": prompt_version, "item_hash": h, "position": p,
             "reply": r.text or "", "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
            for h, p, r in entries))


# --- gold references ----------------------------------------------------------------------------

def add_gold_reference(conn, *, workload_id: str, request: dict[str, Any] | None = None,
                       request_hash_: str | None = None, reference: Any, author: str, source: str = "review",
                       item_id: str | None = None, note: str = "") -> GoldReference:
    """Record a human-corrected answer for an eval item (the review calls this; so does the import).

    Give the item's ``request`` (as curated) or its hash; ``reference`` is the right answer (text
    or an assistant message). A newer correction of the same item replaces the older one.
    """
    if request is None and request_hash_ is None:
        raise ValueError("give the item's request or its request hash")
    gold = GoldReference(workload_id=workload_id, request_hash=request_hash_ or request_hash(request),
                         item_id=item_id, reference=as_message(reference), author=author, source=source, note=note)
    save_gold(conn, [gold])
    return gold


def save_gold(conn, references: Iterable[GoldReference]) -> int:
    return store.execute_many(conn, "upsert_gold_reference", (r.model_dump() for r in references))


def gold_index(conn, workload_id: str) -> GoldIndex:
    return GoldIndex(store.fetch_all(conn, "gold_references_for_workload", {"workload_id": workload_id}))


# --- human labels and calibration -----------------------------------------------------------------

def add_human_label(conn, *, item: JudgeItem, score: float, labeler: str, source: str = "review",
                    workload_id: str | None = None) -> str:
    """A person's grade in [0, 1] of one comparison (request, reference, candidate); returns its hash."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"a human label is a score in [0, 1], got {score}")
    h = item.item_hash()
    store.execute(conn, "upsert_human_label", {"item_hash": h, "labeler": labeler, "score": float(score),
                                               "source": source, "item": item.model_dump(), "workload_id": workload_id})
    return h


def human_labels(conn, workload_id: str | None = None) -> list[dict[str, Any]]:
    return store.fetch_all(conn, "human_labels", {"workload_id": workload_id})


def save_calibration(conn, *, judge_model: str, prompt_version: str, n: int, kappa: float | None,
                     spearman: float | None, pass_mark: float, n_unscored: int, note: str) -> dict[str, Any]:
    return store.fetch_all(conn, "insert_judge_calibration", {
        "judge_model": judge_model, "prompt_version": prompt_version, "n": n, "kappa": kappa, "spearman": spearman,
        "pass_mark": pass_mark, "n_unscored": n_unscored, "note": note})[0]


def latest_calibration(conn, judge_model: str, prompt_version: str) -> dict[str, Any] | None:
    rows = store.fetch_all(conn, "latest_judge_calibration", {"judge_model": judge_model,
                                                               "prompt_version": prompt_version})
    return rows[0] if rows else None
