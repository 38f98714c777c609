"""Step 4, evaluate: score a candidate's answers against the production answers.

No judge endpoint is needed: the deterministic scorers of flywheel.scoring (exact tool-call and
JSON-field match, MiniLM embedding similarity for free text) are used and labelled as such. An LLM
judge arrives as a separate scorer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.experiments import ExperimentSpec
from flywheel.prompts import parse_completion


@dataclass(frozen=True)
class ExperimentResult:
    method: str
    n: int
    score: float | None
    ci_low: float | None
    ci_high: float | None
    avg_tokens: float
    cost_per_1k: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_message(response: dict[str, Any]) -> dict[str, Any]:
    return response["choices"][0]["message"]


def evaluate(
    spec: ExperimentSpec,
    *,
    rows: list[dict[str, Any]],
    eval_prompts: dict[str, str],
    predictions: dict[str, str],
    cfg: FlywheelConfig,
    count_tokens,
    embedder,
) -> tuple[list[dict[str, Any]], ExperimentResult]:
    """Per-item rows for the evaluations table and the experiment's aggregate.

    An eval item with no prediction scores 0 (the candidate did not answer), so a crashed
    generation can never look better than a wrong one.
    """
    from flywheel.scoring import aggregate, score_items

    eval_rows = [r for r in rows if r["split"] == "eval"]
    pairs = [
        (reference_message(r["response"]), parse_completion(predictions.get(str(r["id"]), "")))
        for r in eval_rows
    ]
    scores = score_items(spec.kind, pairs, embedder)
    summary = aggregate(scores, seed=cfg.bootstrap_seed)
    item_rows = [
        {
            **spec.key,
            "item_id": str(r["id"]),
            "slice": r.get("label") or "all",
            "method": s.method,
            "score": float(s.score),
            "reference": r["completion"],
            "prediction": predictions.get(str(r["id"]), ""),
            "detail": s.detail,
        }
        for r, s in zip(eval_rows, scores)
    ]
    tokens = [
        count_tokens(eval_prompts.get(str(r["id"]), r["prompt"])) + count_tokens(predictions.get(str(r["id"]), ""))
        for r in eval_rows
    ]
    avg_tokens = sum(tokens) / len(tokens) if tokens else 0.0
    price = cfg.candidates[spec.candidate].price_per_1m_tokens
    result = ExperimentResult(
        method=summary.method,
        n=summary.n,
        score=summary.mean,
        ci_low=summary.ci_low,
        ci_high=summary.ci_high,
        avg_tokens=round(avg_tokens, 2),
        cost_per_1k=round(avg_tokens * price / 1_000_000 * 1000, 6),
    )
    return item_rows, result
