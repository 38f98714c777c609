"""The review's evidence (flywheel.evidence) and its gathering from the database
(flywheel.adapters.review_evidence)."""

from __future__ import annotations

import json

from flywheel.evidence import (
    EvidenceItem,
    Regression,
    biggest_regressions,
    cell,
    evidence_markdown,
    pick_items,
    sparkline,
)


def _item(i, score):
    return EvidenceItem(item_id=f"logs.jsonl:{i}", slice="refund" if i % 2 else "status", request=f"question {i}",
                        production=f"prod {i}", candidate=f"cand {i}", score=score)


def test_untrusted_text_cannot_break_the_table_or_inject_markup():
    nasty = "a | b\n<script>alert(1)</script> `code` **bold** [link](http://x) # h"
    out = cell(nasty)
    assert "\n" not in out and "|" not in out.replace("\\|", "")
    assert "<" not in out.replace("\\<", "") and "`" not in out.replace("\\`", "")
    assert cell("x" * 500).endswith("…") and len(cell("x" * 500)) == 160
    assert cell(None) == "(empty)" and cell("  ") == "(empty)"


def test_items_worst_first_then_best():
    items = [_item(i, s) for i, s in enumerate([0.9, 0.1, 0.5, None, 1.0, 0.0, 0.7, 0.3, 0.6, 0.2])]
    picked = pick_items(items, 8)
    assert len(picked) == 8 and len({p.item_id for p in picked}) == 8
    assert [p.score for p in picked[:5]] == [None, 0.0, 0.1, 0.2, 0.3]
    assert [p.score for p in picked[5:]] == [1.0, 0.9, 0.7]
    assert pick_items(items[:3], 8) == pick_items(items[:3], 8) and len(pick_items(items[:3], 8)) == 3


def test_regressions_biggest_drop_first_with_the_request():
    cand = {"a": {"slice": "s", "score": 0.5, "prediction": "ca"}, "b": {"slice": "s", "score": 0.0, "prediction": "cb"},
            "c": {"slice": "s", "score": 1.0, "prediction": "cc"}}
    dep = {"a": {"slice": "s", "score": 1.0, "prediction": "da"}, "b": {"slice": "s", "score": 1.0, "prediction": "db"},
           "c": {"slice": "s", "score": 1.0, "prediction": "dc"}}
    records = {"b": {"request": {"messages": [{"role": "system", "content": "sys"},
                                              {"role": "user", "content": "where is B?"}]}}}
    regs = biggest_regressions(cand, dep, records)
    assert [(r.item_id, r.drop) for r in regs] == [("b", 1.0), ("a", 0.5)]
    assert regs[0].request == "where is B?" and regs[0].deployed_answer == "db" and regs[0].candidate == "cb"


def test_markdown_has_every_section():
    md = evidence_markdown(
        dataset={"n_in": 100, "n_accepted": 90, "n_quarantined": 6, "n_duplicates": 4, "n_eval": 20, "n_train": 63,
                 "n_val": 7, "pii": {"EMAIL_ADDRESS": 3, "PHONE_NUMBER": 1}},
        items=[_item(1, 0.0), _item(2, 1.0)],
        regressions=[Regression(item_id="b", slice="s", request="q", deployed_answer="d", candidate="c",
                                deployed_score=1.0, candidate_score=0.0)],
        active_version=3, guard_reason="within the regression budgets", training={
            "train_loss_per_epoch": [2.0, 1.0, 0.5], "train_loss_first": 3.1, "val_loss": 0.6, "train_examples": 63,
            "val_examples": 7, "train_seconds": 12.5})
    assert "accepted 90, quarantined 6, duplicates 4" in md and "EMAIL_ADDRESS 3, PHONE_NUMBER 1" in md
    assert "| logs.jsonl:1 | refund | question 1 | prod 1 | cand 1 | 0.00 |" in md
    assert "answered worse than by v3" in md and "| b | s | q | d | c | 1.00 | 0.00 |" in md
    assert "2.000, 1.000, 0.500 (before training 3.100)" in md and "Validation loss after the last epoch: 0.600" in md
    assert "within the regression budgets" in md
    assert "; 63 train / 7 val examples, 12.5 s." in md
    sampled = evidence_markdown(dataset=None, items=[], regressions=None, active_version=None, guard_reason=None,
                                training={"train_loss_per_epoch": [1.0], "train_examples": 330,
                                          "train_examples_usable": 647, "val_examples": 72, "train_seconds": 119})
    assert "; 330 train (a sample of 647) / 72 val examples, 119 s." in sampled
    first = evidence_markdown(dataset=None, items=[], regressions=None, active_version=None, guard_reason=None,
                              training=None)
    assert "Nothing is deployed for this workload yet" in first
    assert sparkline([3.0, 2.0, 1.0]) == "█▄▁"


def test_gathered_from_the_database(flywheel_db, tmp_path, monkeypatch):
    from flywheel.adapters import anchors, review_evidence
    from flywheel.adapters import postgres as store

    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}")
    rows = [{"id": f"logs.jsonl:{i}", "split": "eval", "label": "status",
             "request": {"messages": [{"role": "user", "content": f"where is order {i}?"}]},
             "response": {"choices": [{"message": {"role": "assistant", "content": f"shipped {i}"}}]}} for i in range(3)]
    uri = f"file://{tmp_path}/ds.jsonl"
    (tmp_path / "ds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for run, metrics in (("run/1", {}), ("run/2", {"train_loss_per_epoch": [1.5, 0.5], "val_loss": 0.7})):
        store.execute(flywheel_db, "upsert_run", {"run_key": run, "dag_id": "d", "airflow_run_id": run,
                                                  "interval_start": "2026-11-01T00:00:00Z",
                                                  "interval_end": "2026-11-08T00:00:00Z", "params": {}})
        with flywheel_db.cursor() as cur:
            cur.execute("INSERT INTO datasets (run_key, workload_id, n_in, n_accepted, n_quarantined, n_duplicates,"
                        " n_eval, n_train, n_val, usable, pii, uri) VALUES (%s, 'w', 3, 3, 0, 0, 3, 0, 0, true,"
                        " '{\"EMAIL_ADDRESS\": 2}', %s)", (run, uri))
            cur.execute("INSERT INTO experiments (run_key, workload_id, candidate, strategy, status, metrics) VALUES"
                        " (%s, 'w', 'c', 'lora', 'succeeded', %s)", (run, json.dumps(metrics)))
            for i, r in enumerate(rows):
                cur.execute("INSERT INTO evaluations (run_key, workload_id, candidate, strategy, item_id, slice, method,"
                            " score, reference, prediction) VALUES (%s, 'w', 'c', 'lora', %s, 'status', 'm', %s,"
                            " %s, %s)", (run, r["id"], 1.0 if run == "run/1" else i / 2, f"shipped {i}",
                                         f"{run} says {i}"))
        flywheel_db.commit()
    with flywheel_db.cursor() as cur:
        cur.execute("INSERT INTO deployments (workload_id, version, candidate, strategy, model_path, run_key, status,"
                    " approved_by) VALUES ('w', 1, 'c', 'lora', 'm', 'run/1', 'active', 'alice')")
    flywheel_db.commit()
    anchors.freeze_anchor_set(flywheel_db, workload_id="w", run_key="run/1", candidate="c", strategy="lora",
                              eval_rows=rows, added_by="alice")
    key2 = {"run_key": "run/2", "workload_id": "w", "candidate": "c", "strategy": "lora"}
    anchors.store_anchor_scores(flywheel_db, key2, [
        {"item_id": r["id"], "slice": "status", "score": i / 2, "prediction": f"run/2 says {i}"}
        for i, r in enumerate(rows)])

    md = review_evidence.review_evidence(flywheel_db, "run/2", {"workload_id": "w", "candidate": "c", "strategy": "lora"})
    assert "| logs.jsonl:0 | status | where is order 0? | shipped 0 | run/2 says 0 | 0.00 |" in md
    assert "EMAIL\\_ADDRESS 2" in md or "EMAIL_ADDRESS 2" in md
    # v1 answered every anchor item right (it was scored 1.0 on its own eval items, now the anchors).
    assert "answered worse than by v1" in md
    assert "| logs.jsonl:0 | status | where is order 0? | run/1 says 0 | run/2 says 0 | 1.00 | 0.00 |" in md
    assert "Train loss per epoch" in md and "1.500, 0.500" in md
