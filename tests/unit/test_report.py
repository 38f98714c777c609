from flywheel.config import load_config
from flywheel.report import pick_winners, render_leaderboard, review_request


def _row(workload, candidate, strategy, score, cost, status="succeeded"):
    return {"workload_id": workload, "candidate": candidate, "strategy": strategy, "status": status,
            "method": "tool_call_exact", "n": 20, "score": score, "ci_low": None if score is None else score - 0.1,
            "ci_high": None if score is None else min(1.0, score + 0.1), "cost_per_1k": cost, "n_train": 100,
            "n_eval": 20, "gpu_seconds": 1.0, "output_uri": f"file:///a/{strategy}", "error": None}


ROWS = [
    _row("tool_router", "tiny-lm-1.6m", "lora", 0.91, 0.0015),
    _row("tool_router", "tiny-lm-1.6m", "icl", 0.93, 0.0030),   # better, but dearer: not the pick
    _row("tool_router", "tiny-lm-0.6m", "lora", 0.79, 0.0007),  # cheapest, but under the threshold
    _row("tool_router", "tiny-lm-0.6m", "base", None, 0.0, status="failed"),
    _row("support_qa", "tiny-lm-1.6m", "lora", 0.30, 0.0010),
]


def test_the_cheapest_good_enough_candidate_wins_per_workload():
    winners = pick_winners(ROWS, load_config(), threshold=0.8)
    assert [(w["workload_id"], w["candidate"], w["strategy"]) for w in winners] == [("tool_router", "tiny-lm-1.6m", "lora")]
    assert pick_winners(ROWS, load_config(), threshold=0.95) == []
    lower = pick_winners(ROWS, load_config(), threshold=0.75)
    assert [(w["candidate"], w["strategy"]) for w in lower] == [("tiny-lm-0.6m", "lora")]


def test_leaderboard_and_review_text():
    cfg = load_config()
    text = render_leaderboard(ROWS, cfg, run_key="flywheel_on_demand/r1", threshold=0.8)
    assert "review threshold 0.80" in text
    assert text.count("\n") >= len(ROWS) + 2
    assert "failed" in text and "0.910" in text
    request = review_request(pick_winners(ROWS, cfg, 0.8)[0], "flywheel_on_demand/r1", cfg, 0.8)
    assert request["subject"] == "Deploy tiny-lm-1.6m (lora) for tool_router?"
    assert "0.910" in request["body"] and "flywheel_on_demand/r1" in request["body"]


def test_leaderboard_shows_cost_savings_tool_metrics_and_judge():
    cfg = load_config()
    row = {**_row("tool_router", "tiny-lm-1.6m", "lora", 0.9, 0.0015), "n_items": 20, "worst_slice": "refund",
           "worst_slice_score": 0.75, "worst_slice_n": 4, "prod_cost_per_1k": 0.384, "monthly_savings": 11.21,
           "payback_days": 3.35, "training_cost": 1.25, "requests_per_month": 30000,
           "tool_metrics": {"n": 20, "name_accuracy": 1.0, "exact_match": 0.85, "arg_accuracy": 0.9},
           "judge": {"model": "judge-70b", "prompt_version": "v1", "calls": 40, "cached": 10, "both_orders": 20,
                     "order_agreement": 0.95, "prompt_tokens": 1000, "completion_tokens": 100, "cost_usd": 0.01},
           "unscored": {}, "judge_kappa": 0.71, "judge_spearman": 0.8, "judge_calibration_n": 50}
    text = render_leaderboard([row], cfg, run_key="r", threshold=0.8, slice_floor=0.5)
    assert "refund 0.75 (n=4)" in text and "$0.3840" in text and "$11.21" in text and "3.4 d" in text
    assert "to review" in text and "vs prod" not in text  # no constant price ratio any more
    assert "function name" in text and "85%" in text and "90%" in text
    assert "judge-70b" in text and "order agreement 95% of 20" in text and "kappa 0.71" in text
    (winner,) = pick_winners([row], cfg, threshold=0.8, slice_floor=0.5)
    body = review_request(winner, "r", cfg, 0.8, 0.5)["body"]
    assert "projected saving $11.21 per month at 30,000 requests/month" in body
    assert "paid back in 3.4 d" in body and "name and arguments 85%" in body and "kappa 0.71" in body
