"""Evaluation end to end in the domain: one scorer per experiment, gold items, slices, unscored
items, bad input, cost; and the review gate that reads the result."""

from __future__ import annotations

import json

import pytest

from flywheel.config import load_config
from flywheel.costs import Prices, workload_traffic
from flywheel.evaluation import Prediction, Scorer, evaluate, request_text
from flywheel.experiments import ExperimentSpec
from flywheel.gold import GoldIndex, GoldReference, request_hash
from flywheel.judge import JudgeStats, Verdict
from flywheel.report import gate, pick_winners, render_leaderboard, review_request
from flywheel.scoring import EMBEDDING_COSINE, LLM_JUDGE, TOOL_CALL_EXACT, TOOL_CALL_JUDGED
from flywheel_local.rule_judge import overlap_score

CFG = load_config()
CANDIDATE = "tiny-lm-1.6m"


def spec(kind="tool_calling", strategy="lora"):
    return ExperimentSpec(run_key="r/1", workload_id="router", kind=kind, candidate=CANDIDATE, strategy=strategy,
                          dataset_uri="file:///unused")


def call_msg(name, **args):
    return {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def hermes(name, **args):
    """A candidate's raw output in the Hermes/Qwen format the default parser reads."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def row(i, label, message, text=None, split="eval"):
    request = {"messages": [{"role": "user", "content": text or f"request {i}"}],
               "tools": [{"type": "function", "function": {"name": "refund"}}]}
    return {"id": f"logs.jsonl:{i}", "split": split, "label": label, "request": request,
            "response": {"choices": [{"message": message}], "usage": {"prompt_tokens": 200, "completion_tokens": 20}}}


def rule_judge(items):
    """An in-process judge by word overlap (the rule of flywheel_local.rule_judge)."""
    verdicts = [Verdict(score=overlap_score(i.reference, i.candidate) / 10) for i in items]
    return verdicts, JudgeStats(items=len(items), scored=len(items), calls=len(items))


def tokens(text):
    return len(text.split())


# --- a slice where production is wrong ----------------------------------------------------------

def router_case():
    """Refunds: production and the candidate agree. Tracking: production calls the wrong tool (a
    production error); the candidate calls the right one."""
    rows, preds = [], {}
    for i in range(4):
        rows.append(row(i, "refund", call_msg("refund", order_id=f"A-{i}")))
        preds[f"logs.jsonl:{i}"] = Prediction(id=f"logs.jsonl:{i}", output=hermes("refund", order_id=f"A-{i}"))
    for i in range(4, 8):
        rows.append(row(i, "track_shipment", call_msg("get_order_status", order_id=f"T-{i}")))
        preds[f"logs.jsonl:{i}"] = Prediction(id=f"logs.jsonl:{i}",
                                              output=hermes("track_shipment", order_id=f"T-{i}"))
    rows.append(row(99, "refund", call_msg("refund", order_id="A-99"), split="train"))
    return rows, preds


def _leaderboard_row(result, status="succeeded"):
    return {"workload_id": "router", "candidate": CANDIDATE, "strategy": "lora", "status": status,
            **result.to_row(), "output_uri": "file:///x", "requests_per_month": None}


def test_gold_items_change_the_verdict_where_production_is_wrong():
    rows, preds = router_case()
    scorer = Scorer(embedder=None)
    before = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG, scorer=scorer, count_tokens=tokens).result
    assert before.method == TOOL_CALL_EXACT and before.scorer == "deterministic"
    assert before.score == pytest.approx(0.5) and before.n_gold == 0 and before.score_vs_gold is None
    assert (before.worst_slice, before.worst_slice_score) == ("track_shipment", 0.0)
    assert before.tool_metrics.name_accuracy == 0.5 and before.tool_metrics.exact_match == 0.5

    # A reviewer corrects production on the tracking slice.
    gold = GoldIndex([GoldReference(workload_id="router", request_hash=request_hash(r["request"]),
                                    reference=call_msg("track_shipment", order_id=f"T-{r['id'].split(':')[1]}"),
                                    author="alice") for r in rows if r["label"] == "track_shipment"])
    after = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG, scorer=scorer, count_tokens=tokens,
                     gold=gold).result
    assert after.score == 1.0 and after.n_gold == 4 and after.score_vs_gold == 1.0
    assert after.score_vs_prod == pytest.approx(0.5)  # both are reported
    assert after.worst_slice_score == 1.0 and after.tool_metrics.exact_match == 1.0

    threshold, floor = 0.8, 0.5
    assert "threshold" in gate(_leaderboard_row(before), CFG, threshold, floor)
    assert gate(_leaderboard_row(after), CFG, threshold, floor) is None
    assert pick_winners([_leaderboard_row(before)], CFG, threshold, floor) == []
    (winner,) = pick_winners([_leaderboard_row(after)], CFG, threshold, floor)
    body = review_request(winner, "r/1", CFG, threshold, floor)["body"]
    assert "Against 4 human gold answers: 1.000" in body and "production's answers: 0.500" in body


def test_worst_slice_below_the_floor_is_held_back_with_the_reason():
    rows, preds = router_case()
    preds["logs.jsonl:0"] = Prediction(id="logs.jsonl:0", output=hermes("cancel", order_id="A-0"))
    for r in rows:
        if r["label"] == "track_shipment":
            r["response"]["choices"][0]["message"] = call_msg("track_shipment", order_id=f"T-{r['id'].split(':')[1]}")
    for i in (1, 2, 3):  # the refund slice goes wrong: 1 of 4 right
        preds[f"logs.jsonl:{i}"] = Prediction(id=f"logs.jsonl:{i}", output="I cannot help with refunds.")
    result = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG, scorer=Scorer(), count_tokens=tokens).result
    assert result.score == pytest.approx(0.5) and result.worst_slice == "refund" and result.worst_slice_score == 0.0
    lb = _leaderboard_row(result)
    reason = gate(lb, CFG, threshold=0.4, slice_floor=0.3)
    assert reason == "worst slice 'refund' 0.000 < floor 0.30"
    text = render_leaderboard([lb], CFG, run_key="r/1", threshold=0.4, slice_floor=0.3)
    assert "not sent to review: worst slice 'refund'" in text and "not sent" in text
    assert gate(lb, CFG, threshold=0.4, slice_floor=0.0) is None


def test_one_scorer_per_experiment_and_unscored_items_are_counted():
    rows = [row(i, "text", {"role": "assistant", "content": "Your parcel ships on Friday."}) for i in range(5)]
    outputs = ["Your parcel ships on Friday.", "It ships Friday.", "", "x" * 100_000, "Your parcel ships Friday."]
    preds = {f"logs.jsonl:{i}": Prediction(id=f"logs.jsonl:{i}", output=o) for i, o in enumerate(outputs)}

    def flaky_judge(items):
        verdicts, stats = rule_judge(items)
        verdicts[-1] = Verdict(score=None, failure="refusal", reason="I cannot")
        return verdicts, stats.model_copy(update={"unscored": {"refusal": 1}, "scored": len(items) - 1})

    scorer = Scorer(judge=flaky_judge, judge_model="m", prompt_version="v1")
    ev = evaluate(spec("chat", "base"), rows=rows, predictions=preds, cfg=CFG, scorer=scorer, count_tokens=tokens)
    result = ev.result
    assert result.method == LLM_JUDGE and result.scorer == "judge"
    assert {it["method"] for it in ev.items} == {LLM_JUDGE}
    assert result.n_items == 5 and result.n == 4 and result.unscored == {"judge: refusal": 1}
    last = ev.items[-1]
    assert last["score"] is None and last["failure"] == "judge: refusal"
    assert ev.items[2]["score"] == 0.0  # the empty answer: no judge needed, and no credit
    assert len(ev.items[3]["prediction"]) < 20_100  # a 100 KB answer is stored cut
    assert result.score == pytest.approx((1.0 + overlap_score("Your parcel ships on Friday.", "It ships Friday.") / 10
                                          + 0.0 + 0.0) / 4)
    assert result.judge["model"] == "m" and result.judge["prompt_version"] == "v1"
    assert gate(_leaderboard_row(result), CFG, threshold=0.0, slice_floor=0.0).startswith("1/5 items unscored")

    deterministic = evaluate(spec("chat", "base"), rows=rows, predictions=preds, cfg=CFG,
                             scorer=Scorer(embedder=_WordEmbedder()), count_tokens=tokens)
    assert deterministic.result.method == EMBEDDING_COSINE and deterministic.result.judge is None
    assert deterministic.result.n == 5 and deterministic.result.unscored == {}


class _WordEmbedder:
    """Bag-of-words vectors: enough to exercise the deterministic path without loading MiniLM."""

    name = "words"

    def embed(self, texts):
        import numpy as np

        vocab = sorted({w for t in texts for w in t.lower().split()}) or ["_"]
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, vocab.index(w)] = 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def test_free_text_arguments_go_to_the_judge_structured_ones_do_not():
    rows = [row(0, "reply", call_msg("reply", ticket=7, message="We have refunded your card in full today"))]
    preds = {"logs.jsonl:0": Prediction(id="logs.jsonl:0",
                                        output=hermes("reply", ticket="7", message="We refunded your card today"))}
    seen = []

    def judge(items):
        seen.extend(items)
        return rule_judge(items)

    result = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG,
                      scorer=Scorer(judge=judge, judge_model="m", prompt_version="v1"), count_tokens=tokens).result
    assert [i.what for i in seen] == ["argument message of reply"]
    assert "tools offered: refund" in seen[0].request and "user: request 0" in seen[0].request
    graded = overlap_score("We have refunded your card in full today", "We refunded your card today") / 10
    assert result.method == TOOL_CALL_JUDGED
    assert result.score == pytest.approx(0.5 + 0.25 * 1.0 + 0.25 * graded)
    assert result.tool_metrics.exact_match == 0.0 and result.tool_metrics.name_accuracy == 1.0  # exact stays exact


def test_cost_uses_measured_tokens_when_the_generator_reports_them():
    rows, preds = router_case()
    traffic = workload_traffic("router", [r["response"] for r in rows], requests_in_window=3000, window_days=3,
                               prices=CFG.production_prices)
    measured = {k: p.model_copy(update={"prompt_tokens": 100, "completion_tokens": 10}) for k, p in preds.items()}
    result = evaluate(spec(), rows=rows, predictions=measured, cfg=CFG, scorer=Scorer(), count_tokens=tokens,
                      traffic=traffic, training_gpu_seconds=360).result
    prices = CFG.candidates[CANDIDATE].prices
    assert result.cost.tokens_source == "measured"
    assert result.cost_per_1k == pytest.approx(prices.cost_per_1k_requests(100, 10))
    prod = CFG.production_prices.cost_per_1k_requests(200, 20)
    assert result.cost.prod_cost_per_1k == pytest.approx(prod)
    assert result.cost.monthly_savings == pytest.approx((prod - result.cost_per_1k) / 1000 * 30_000)
    assert result.cost.training_cost == pytest.approx(360 / 3600 * CFG.gpu_price_per_hour)
    counted = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG, scorer=Scorer(), count_tokens=tokens,
                       eval_prompts={"logs.jsonl:0": "a b c"}).result
    assert counted.cost.tokens_source == "tokenizer" and counted.cost.monthly_savings is None


def test_missing_prediction_scores_zero_with_a_reason():
    rows, preds = router_case()
    del preds["logs.jsonl:1"]
    ev = evaluate(spec(), rows=rows, predictions=preds, cfg=CFG, scorer=Scorer(), count_tokens=tokens)
    item = next(it for it in ev.items if it["item_id"] == "logs.jsonl:1")
    assert item["score"] == 0.0 and "did not answer" in item["detail"]["reason"]


def test_request_text_for_the_judge():
    request = {"tools": [{"function": {"name": "a"}}, "junk"], "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        "junk"]}
    assert request_text(request) == "tools offered: a\nsystem: Be brief.\nuser: hi"
    assert len(request_text({"messages": [{"role": "user", "content": "x" * 50_000}]})) == 6000
