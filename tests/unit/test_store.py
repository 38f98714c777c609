"""The flywheel schema on a real PostgreSQL: migrations, idempotent upserts, invariants."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flywheel.adapters import postgres as store


def test_migrations_apply_once(flywheel_db):
    assert store.migrate(flywheel_db) == []  # the fixture applied them already
    with flywheel_db.cursor() as cur:
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        rows = cur.fetchall()
    assert rows == [(v, n) for v, n, _ in store.migrations()]


def test_edited_migration_is_refused(flywheel_db, tmp_path):
    for version, name, sql in store.migrations():
        (tmp_path / name).write_text(sql + "\n-- edited\n")
    with pytest.raises(store.MigrationError, match="changed after it was applied"):
        store.migrate(flywheel_db, tmp_path)


def _run(conn, key="flywheel_on_demand/r1"):
    store.execute(conn, "upsert_run", {
        "run_key": key, "dag_id": "flywheel_on_demand", "airflow_run_id": "r1",
        "interval_start": datetime(2026, 11, 1, tzinfo=timezone.utc),
        "interval_end": datetime(2026, 11, 8, tzinfo=timezone.utc), "params": {"a": 1},
    })
    return key


def _dataset(key, **over):
    row = {"run_key": key, "workload_id": "w", "kind": "chat", "n_in": 10, "n_accepted": 7, "n_quarantined": 2,
           "n_duplicates": 1, "n_eval": 3, "n_train": 3, "n_val": 1, "usable": True, "reason": None,
           "pii": {"email": 2}, "dataset_hash": "h", "uri": "file:///x", "n_over_limit": 0,
           "class_counts": {"eval": {"text": 3}}, "warnings": []}
    return {**row, **over}


def test_upserts_are_idempotent(flywheel_db):
    key = _run(flywheel_db)
    _run(flywheel_db)
    for _ in range(2):  # a retried task writes the same rows again
        store.execute(flywheel_db, "upsert_dataset", _dataset(key))
        store.execute(flywheel_db, "upsert_experiment", {"run_key": key, "workload_id": "w", "candidate": "c",
                                                         "strategy": "base", "status": "planned", "backend": "local",
                                                         "gpus": 1})
    with flywheel_db.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*), max(n_in) FROM datasets")
        assert cur.fetchone() == (1, 10)
        cur.execute("SELECT count(*) FROM experiments")
        assert cur.fetchone()[0] == 1
    flywheel_db.commit()


def test_dict_values_round_trip_as_json(flywheel_db):
    key = _run(flywheel_db)
    store.execute(flywheel_db, "upsert_dataset", _dataset(key, pii={"email": 3, "phone": 1}))
    rows = store.fetch_all(flywheel_db, "leaderboard", {"run_key": key})
    assert rows == []  # no experiments yet
    with flywheel_db.cursor() as cur:
        cur.execute("SELECT pii FROM datasets")
        assert cur.fetchone()[0] == {"email": 3, "phone": 1}
    flywheel_db.commit()


def test_counts_must_add_up(flywheel_db):
    key = _run(flywheel_db)
    with pytest.raises(Exception, match="violates check constraint"):
        store.execute(flywheel_db, "upsert_dataset", _dataset(key, n_in=11))
    with pytest.raises(Exception, match="datasets_splits_add_up"):
        store.execute(flywheel_db, "upsert_dataset", _dataset(key, n_over_limit=1))
    store.execute(flywheel_db, "upsert_dataset", _dataset(key, n_in=12, n_accepted=9, n_over_limit=2))


def test_scores_must_be_in_unit_interval(flywheel_db):
    key = _run(flywheel_db)
    store.execute(flywheel_db, "upsert_dataset", _dataset(key))
    exp = {"run_key": key, "workload_id": "w", "candidate": "c", "strategy": "base"}
    store.execute(flywheel_db, "upsert_experiment", {**exp, "status": "planned", "backend": "local", "gpus": 1})
    item = {**exp, "item_id": "1", "slice": "text", "method": "embedding_cosine", "score": 1.5,
            "score_vs_prod": 1.5, "score_vs_gold": None, "reference_source": "production", "failure": None,
            "reference": "a", "prediction": "b", "detail": {}}
    with pytest.raises(Exception, match="violates check constraint"):
        store.execute(flywheel_db, "upsert_evaluation", item)
    # An item may go unscored only with the reason why.
    with pytest.raises(Exception, match="evaluations_scored_or_failed"):
        store.execute(flywheel_db, "upsert_evaluation", {**item, "score": None, "score_vs_prod": None})


def test_hostile_values_are_data_not_sql(flywheel_db):
    key = _run(flywheel_db, key="x'; DROP TABLE runs;--")
    rows = store.fetch_all(flywheel_db, "latest_run_key", {"dag_id": "flywheel_on_demand"})
    assert [r["run_key"] for r in rows] == [key]
    assert store.fetch_all(flywheel_db, "run_params", {"run_key": key}) == [{"params": {"a": 1}}]
