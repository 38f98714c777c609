"""Cost and savings from measured numbers, not from a price ratio.

Per workload: what production spends, from the ``usage`` the production model reported in each
logged response (mean prompt and completion tokens) at the production model's prices, and how
much traffic it has (records in the run's data interval, scaled to a 30-day month). Per
candidate: its own measured tokens on the eval items (its prompt as its chat template renders it,
few-shot examples included, and what it generated) at its prices. Together: $ per 1,000 requests
for both, the projected monthly saving, and for LoRA the training cost (GPU-seconds at the
configured GPU price) paid back in days.

Everything unknown stays None with the reason, never a guess: logs without ``usage`` give no
production cost and so no saving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

DAYS_PER_MONTH = 30.0


class Prices(BaseModel):
    """USD per million tokens."""

    input_per_1m: float
    output_per_1m: float

    def cost_per_1k_requests(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for 1,000 requests of this many tokens each (on average)."""
        return 1000 * (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1_000_000


class WorkloadTraffic(BaseModel):
    """A workload's production usage and volume over one run's data interval."""

    workload_id: str
    requests_in_window: int
    window_days: float
    requests_per_month: float
    n_with_usage: int  # records whose response carried usage
    n_records: int  # curated records looked at
    avg_prompt_tokens: float | None
    avg_completion_tokens: float | None
    prod_cost_per_1k: float | None
    note: str = ""


class CandidateCost(BaseModel):
    """One experiment's cost against production's."""

    avg_prompt_tokens: float
    avg_completion_tokens: float
    tokens_source: str  # "measured" (reported by the generator) or "tokenizer" (counted here)
    cost_per_1k: float
    prod_cost_per_1k: float | None
    saving_per_1k: float | None
    monthly_savings: float | None
    training_gpu_seconds: float | None
    training_cost: float | None
    payback_days: float | None
    note: str = ""


def _usage(response: Any) -> tuple[int, int] | None:
    usage = response.get("usage") if isinstance(response, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)):
        return None
    return prompt, completion


def workload_traffic(workload_id: str, responses: Iterable[Any], *, requests_in_window: int,
                     window_days: float, prices: Prices) -> WorkloadTraffic:
    """Production usage from the logged responses' ``usage`` and the volume of the window."""
    if window_days <= 0:
        raise ValueError(f"the data interval must be longer than 0 days, got {window_days}")
    n = 0
    usages = []
    for response in responses:
        n += 1
        u = _usage(response)
        if u is not None:
            usages.append(u)
    per_month = requests_in_window / window_days * DAYS_PER_MONTH
    if not usages:
        return WorkloadTraffic(workload_id=workload_id, requests_in_window=requests_in_window, window_days=window_days,
                               requests_per_month=per_month, n_with_usage=0, n_records=n, avg_prompt_tokens=None,
                               avg_completion_tokens=None, prod_cost_per_1k=None,
                               note="no logged response carries usage: production cost unknown")
    prompt = sum(p for p, _ in usages) / len(usages)
    completion = sum(c for _, c in usages) / len(usages)
    note = "" if len(usages) == n else f"usage in {len(usages)} of {n} responses"
    return WorkloadTraffic(workload_id=workload_id, requests_in_window=requests_in_window, window_days=window_days,
                           requests_per_month=per_month, n_with_usage=len(usages), n_records=n,
                           avg_prompt_tokens=prompt, avg_completion_tokens=completion,
                           prod_cost_per_1k=prices.cost_per_1k_requests(prompt, completion), note=note)


def candidate_cost(*, prompt_tokens: list[int], completion_tokens: list[int], tokens_source: str, prices: Prices,
                   traffic: WorkloadTraffic | None, training_gpu_seconds: float | None,
                   gpu_price_per_hour: float) -> CandidateCost:
    """$ per 1,000 requests of the candidate, the monthly saving and the training payback."""
    if len(prompt_tokens) != len(completion_tokens):
        raise ValueError("one prompt and one completion token count per eval item")
    n = max(len(prompt_tokens), 1)
    avg_prompt, avg_completion = sum(prompt_tokens) / n, sum(completion_tokens) / n
    cost = prices.cost_per_1k_requests(avg_prompt, avg_completion)
    prod = traffic.prod_cost_per_1k if traffic else None
    saving = None if prod is None else prod - cost
    monthly = None if saving is None else saving / 1000 * traffic.requests_per_month
    training = None if training_gpu_seconds is None else training_gpu_seconds / 3600 * gpu_price_per_hour
    payback = None
    notes = []
    if prod is None:
        notes.append(traffic.note if traffic else "no production traffic figures")
    if training is not None and monthly is not None:
        if monthly > 0:
            payback = training / (monthly / DAYS_PER_MONTH)
        else:
            notes.append("no saving: the training cost is never paid back")
    return CandidateCost(avg_prompt_tokens=avg_prompt, avg_completion_tokens=avg_completion,
                         tokens_source=tokens_source, cost_per_1k=cost, prod_cost_per_1k=prod, saving_per_1k=saving,
                         monthly_savings=monthly, training_gpu_seconds=training_gpu_seconds, training_cost=training,
                         payback_days=payback, note="; ".join(notes))
