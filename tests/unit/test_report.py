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
