"""Cost and savings arithmetic on a hand-computed case."""

from __future__ import annotations

import pytest

from flywheel.costs import Prices, candidate_cost, workload_traffic

PROD = Prices(input_per_1m=0.60, output_per_1m=1.80)
CANDIDATE = Prices(input_per_1m=0.02, output_per_1m=0.04)


def _responses():
    return [{"usage": {"prompt_tokens": 300, "completion_tokens": 100}},
            {"usage": {"prompt_tokens": 500, "completion_tokens": 60}},
            {"usage": {"prompt_tokens": 400, "completion_tokens": 80}}]


def test_savings_on_a_hand_computed_case():
    traffic = workload_traffic("w", _responses(), requests_in_window=7000, window_days=7, prices=PROD)
    # Production: 400 prompt + 80 completion tokens on average:
    # 1,000 x (400 x 0.60 + 80 x 1.80) / 1e6 = 1,000 x 384 / 1e6 = $0.384 per 1,000 requests.
    assert (traffic.avg_prompt_tokens, traffic.avg_completion_tokens) == (400, 80)
    assert traffic.prod_cost_per_1k == pytest.approx(0.384)
    assert traffic.requests_per_month == pytest.approx(30_000)  # 7,000 in 7 days -> 1,000 a day x 30
    cost = candidate_cost(prompt_tokens=[350, 450], completion_tokens=[50, 70], tokens_source="measured",
                          prices=CANDIDATE, traffic=traffic, training_gpu_seconds=1800, gpu_price_per_hour=2.50)
    # Candidate: 400 + 60 tokens: 1,000 x (400 x 0.02 + 60 x 0.04) / 1e6 = $0.0104 per 1,000 requests.
    assert cost.cost_per_1k == pytest.approx(0.0104)
    assert cost.saving_per_1k == pytest.approx(0.3736)
    assert cost.monthly_savings == pytest.approx(0.3736 * 30)  # $11.208 a month
    # Training: 1,800 GPU-seconds = 0.5 GPU-hour x $2.50 = $1.25, paid back by $0.3736 a day in 3.35 days.
    assert cost.training_cost == pytest.approx(1.25)
    assert cost.payback_days == pytest.approx(1.25 / 0.3736)
    assert cost.tokens_source == "measured" and cost.note == ""


def test_unknown_usage_gives_no_saving_rather_than_a_guess():
    traffic = workload_traffic("w", [{"usage": None}, {"choices": []}, "garbage"], requests_in_window=10,
                               window_days=1, prices=PROD)
    assert traffic.prod_cost_per_1k is None and traffic.n_with_usage == 0 and "usage" in traffic.note
    cost = candidate_cost(prompt_tokens=[10], completion_tokens=[5], tokens_source="tokenizer", prices=CANDIDATE,
                          traffic=traffic, training_gpu_seconds=None, gpu_price_per_hour=2.5)
    assert cost.monthly_savings is None and cost.payback_days is None and "usage" in cost.note


def test_partial_and_hostile_usage_values():
    responses = _responses() + [{"usage": {"prompt_tokens": -5, "completion_tokens": 1}},
                                {"usage": {"prompt_tokens": True, "completion_tokens": 1}},
                                {"usage": {"prompt_tokens": "400", "completion_tokens": 1}}]
    traffic = workload_traffic("w", responses, requests_in_window=6, window_days=2, prices=PROD)
    assert traffic.n_with_usage == 3 and traffic.n_records == 6 and "3 of 6" in traffic.note
    with pytest.raises(ValueError):
        workload_traffic("w", [], requests_in_window=1, window_days=0, prices=PROD)


def test_a_dearer_candidate_never_pays_back():
    traffic = workload_traffic("w", _responses(), requests_in_window=7000, window_days=7, prices=PROD)
    dear = candidate_cost(prompt_tokens=[400], completion_tokens=[80], tokens_source="measured",
                          prices=Prices(input_per_1m=1.0, output_per_1m=2.0), traffic=traffic,
                          training_gpu_seconds=60, gpu_price_per_hour=2.5)
    assert dear.monthly_savings < 0 and dear.payback_days is None and "never paid back" in dear.note
