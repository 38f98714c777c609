"""Step 4, evaluate: score a candidate's answers, per item, per slice and overall, and price them.

One scorer per experiment (``flywheel.scoring.method_for``): the LLM judge when an endpoint is
configured (the adapter hands in a :data:`JudgeRunner`), else the deterministic scorers, labelled
as such. Each eval item is scored against production's answer and, where a human recorded one,
against the gold answer; the item's score is the gold one where it exists (a candidate is not
punished for disagreeing with a production error), and both are reported.

An eval item with no prediction scores 0 (the candidate did not answer), so a crashed generation
can never look better than a wrong one. An item the judge could not score (refusal, garbage,
endpoint down) is left out of the mean and counted with its reason, never averaged in as 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from flywheel.config import FlywheelConfig
from flywheel.costs import CandidateCost, WorkloadTraffic, candidate_cost
from flywheel.experiments import ExperimentSpec
from flywheel.gold import GoldIndex
from flywheel.judge import JudgeItem, JudgeStats, Verdict, judge_cost
from flywheel.toolcalls import parse_output
from flywheel.scoring import (
    DETERMINISTIC_METHODS,
    FreeText,
    ItemScore,
    ScorePlan,
    message_text,
    method_for,
    plan_scores,
    resolve_with_embeddings,
    tool_metrics,
)
from flywheel.stats import SliceScore, bootstrap_ci, slice_scores, worst_slice

# What the evaluations table keeps of an answer (a 100 KB answer is scored, not stored whole).
MAX_STORED_CHARS = 20_000
MAX_REQUEST_CHARS = 6000

JudgeRunner = Callable[[list[JudgeItem]], tuple[list[Verdict], JudgeStats]]


class Prediction(BaseModel):
    """One row of the trainer's predictions.jsonl (token counts when the generator reports them)."""

    id: str
    output: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None


@dataclass
class Scorer:
    """The experiment's one scorer: the judge (``judge`` set) or the deterministic scorers."""

    judge: JudgeRunner | None = None
    embedder: Any = None
    judge_model: str | None = None
    prompt_version: str | None = None
    judge_price_in: float = 0.0
    judge_price_out: float = 0.0

    @property
    def uses_judge(self) -> bool:
        return self.judge is not None

    @property
    def label(self) -> str:
        return f"judge {self.judge_model} (prompt {self.prompt_version})" if self.uses_judge else "deterministic"


class ToolMetricsSummary(BaseModel):
    n: int
    name_accuracy: float
    exact_match: float
    arg_accuracy: float | None  # None when no reference call has arguments


class ExperimentResult(BaseModel):
    """What the experiment_scores table holds for one experiment (the leaderboard's row)."""

    method: str
    scorer: str  # "deterministic" or "judge"
    n: int  # items scored
    n_items: int  # eval items
    score: float | None
    ci_low: float | None
    ci_high: float | None
    score_vs_prod: float | None
    score_vs_gold: float | None
    n_gold: int
    unscored: dict[str, int] = Field(default_factory=dict)
    worst_slice: str | None = None
    worst_slice_score: float | None = None
    worst_slice_n: int | None = None
    tool_metrics: ToolMetricsSummary | None = None
    avg_tokens: float
    cost_per_1k: float
    cost: CandidateCost
    judge: dict[str, Any] | None = None

    def to_row(self) -> dict[str, Any]:
        """Columns of experiment_scores (JSON columns as dicts)."""
        row = self.model_dump(exclude={"cost", "tool_metrics", "judge"})
        row.update(self.cost.model_dump(exclude={"cost_per_1k"}))
        row["tool_metrics"] = self.tool_metrics.model_dump() if self.tool_metrics else None
        row["judge"] = self.judge
        return row


class Evaluation(BaseModel):
    items: list[dict[str, Any]]
    slices: list[SliceScore]
    result: ExperimentResult


def reference_message(response: Mapping[str, Any]) -> dict[str, Any]:
    return response["choices"][0]["message"]


def request_text(request: Mapping[str, Any]) -> str:
    """The request as the judge reads it: offered tools, then the conversation, one line per turn."""
    lines = []
    tools = [t.get("function", {}).get("name") for t in request.get("tools") or [] if isinstance(t, dict)]
    if tools:
        lines.append("tools offered: " + ", ".join(str(t) for t in tools if t))
    for m in request.get("messages") or []:
        if isinstance(m, dict):
            lines.append(f"{m.get('role', 'user')}: {message_text(m) if m.get('role') == 'assistant' else _content(m)}")
    text = "\n".join(lines)
    return text if len(text) <= MAX_REQUEST_CHARS else text[-MAX_REQUEST_CHARS:]  # the latest turns matter most


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _grade(plans: Sequence[ScorePlan], requests: Sequence[str], scorer: Scorer) -> tuple[list[ItemScore], JudgeStats | None]:
    """Resolve every plan's free text with the experiment's one free-text scorer."""
    if not scorer.uses_judge:
        return resolve_with_embeddings(plans, scorer.embedder), None
    parts: list[tuple[int, FreeText]] = [(i, part) for i, plan in enumerate(plans) for part in plan.free_text]
    items = [JudgeItem(request=requests[i], reference=p.reference, candidate=p.candidate, what=p.what)
             for i, p in parts]
    verdicts, stats = scorer.judge(items) if items else ([], JudgeStats())
    graded = {id(p): v.score for (_, p), v in zip(parts, verdicts)}
    failures = {id(p): f"judge: {v.failure}" for (_, p), v in zip(parts, verdicts) if v.failure}
    by_plan: dict[int, list[dict]] = {}
    for (i, _), v in zip(parts, verdicts):
        by_plan.setdefault(i, []).append(v.model_dump(exclude_none=True))
    scores = []
    for i, plan in enumerate(plans):
        if i in by_plan:
            plan.detail = {**plan.detail, "judge": by_plan[i]}
        scores.append(plan.resolve(graded, failures))
    return scores, stats


def _tool_summary(pairs: Sequence[tuple[dict, dict]]) -> ToolMetricsSummary | None:
    if not pairs:
        return None
    ms = [tool_metrics(ref, cand) for ref, cand in pairs]
    total = sum(m.args_total for m in ms)
    return ToolMetricsSummary(
        n=len(ms),
        name_accuracy=sum(m.name_match for m in ms) / len(ms),
        exact_match=sum(m.exact_match for m in ms) / len(ms),
        arg_accuracy=sum(m.args_matched for m in ms) / total if total else None,
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_STORED_CHARS else text[:MAX_STORED_CHARS] + f"... [{len(text)} characters]"


def evaluate(
    spec: ExperimentSpec,
    *,
    rows: list[dict[str, Any]],
    predictions: Mapping[str, Prediction],
    cfg: FlywheelConfig,
    scorer: Scorer,
    count_tokens: Callable[[str], int],
    eval_prompts: Mapping[str, str] | None = None,
    gold: GoldIndex | None = None,
    traffic: WorkloadTraffic | None = None,
    training_gpu_seconds: float | None = None,
    parse: Callable[[str], dict[str, Any]] = parse_output,
) -> Evaluation:
    """Items for the evaluations table, the per-slice table and the experiment's result.

    ``parse`` turns a raw output into an assistant message: the candidate's tool-call parser
    (``flywheel.toolcalls``, chosen by its model family in the configuration).
    """
    gold = gold or GoldIndex()
    eval_prompts = eval_prompts or {}
    method = method_for(spec.kind, judge=scorer.uses_judge)
    eval_rows = [r for r in rows if r["split"] == "eval"]
    ids = [str(r["id"]) for r in eval_rows]
    preds = [predictions.get(i) for i in ids]
    candidates = [parse(p.output if p else "") for p in preds]
    prod_refs = [reference_message(r["response"]) for r in eval_rows]
    gold_refs = [gold.find(i, r.get("request")) for i, r in zip(ids, eval_rows)]
    gold_at = [k for k, g in enumerate(gold_refs) if g is not None]
    requests = [request_text(r.get("request") or {}) for r in eval_rows]

    pairs = list(zip(prod_refs, candidates)) + [(gold_refs[k], candidates[k]) for k in gold_at]
    plans = plan_scores(spec.kind, pairs, judge=scorer.uses_judge)
    scored, judge_stats = _grade(plans, requests + [requests[k] for k in gold_at], scorer)
    vs_prod = scored[: len(eval_rows)]
    vs_gold: dict[int, ItemScore] = dict(zip(gold_at, scored[len(eval_rows):]))
    assert all(s.method == method for s in scored), "one experiment, one scorer"

    items, primary, unscored = [], [], Counter()
    for k, (row, pred) in enumerate(zip(eval_rows, preds)):
        chosen = vs_gold.get(k, vs_prod[k])
        primary.append(chosen.score)
        if chosen.score is None:
            unscored[chosen.failure or "unscored"] += 1
        detail = dict(chosen.detail)
        if pred is None:
            detail["reason"] = "no prediction for this item: the candidate did not answer"
        reference = gold_refs[k] if k in vs_gold else prod_refs[k]
        items.append({
            **spec.key,
            "item_id": ids[k],
            "slice": row.get("label") or "all",
            "method": method,
            "score": chosen.score,
            "score_vs_prod": vs_prod[k].score,
            "score_vs_gold": vs_gold[k].score if k in vs_gold else None,
            "reference_source": "gold" if k in vs_gold else "production",
            "reference": _clip(message_text(reference)),
            "prediction": _clip(pred.output if pred else ""),
            "failure": chosen.failure,
            "detail": detail,
        })

    seed = cfg.bootstrap_seed
    overall = bootstrap_ci([s for s in primary if s is not None], seed=seed)
    prod_mean = bootstrap_ci([s.score for s in vs_prod if s.score is not None], seed=seed).mean
    gold_mean = bootstrap_ci([s.score for s in vs_gold.values() if s.score is not None], seed=seed).mean
    slices = slice_scores([it["slice"] for it in items], primary, seed=seed)
    worst = worst_slice(slices)
    tools = None
    if spec.kind == "tool_calling":
        tools = _tool_summary([(gold_refs[k] if k in vs_gold else prod_refs[k], candidates[k])
                               for k in range(len(eval_rows))])

    prompt_tokens, completion_tokens, measured = [], [], True
    for i, row, pred in zip(ids, eval_rows, preds):
        if pred is not None and pred.prompt_tokens is not None and pred.completion_tokens is not None:
            prompt_tokens.append(pred.prompt_tokens)
            completion_tokens.append(pred.completion_tokens)
        else:
            measured = False
            prompt_tokens.append(count_tokens(eval_prompts.get(i, row.get("prompt", ""))))
            completion_tokens.append(count_tokens(pred.output if pred else ""))
    cost = candidate_cost(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        tokens_source="measured" if measured and eval_rows else "tokenizer",
        prices=cfg.candidates[spec.candidate].prices, traffic=traffic,
        training_gpu_seconds=training_gpu_seconds, gpu_price_per_hour=cfg.gpu_price_per_hour,
    )
    judge = None
    if scorer.uses_judge:
        stats = judge_stats or JudgeStats()
        judge = {"model": scorer.judge_model, "prompt_version": scorer.prompt_version, **stats.model_dump(),
                 "cost_usd": judge_cost(stats, scorer.judge_price_in, scorer.judge_price_out)}
    result = ExperimentResult(
        method=method,
        scorer="deterministic" if method in DETERMINISTIC_METHODS else "judge",
        n=overall.n,
        n_items=len(eval_rows),
        score=overall.mean,
        ci_low=overall.ci_low,
        ci_high=overall.ci_high,
        score_vs_prod=prod_mean,
        score_vs_gold=gold_mean,
        n_gold=len(vs_gold),
        unscored=dict(unscored),
        worst_slice=worst.slice if worst else None,
        worst_slice_score=worst.mean if worst else None,
        worst_slice_n=worst.n if worst else None,
        tool_metrics=tools,
        avg_tokens=round(cost.avg_prompt_tokens + cost.avg_completion_tokens, 2),
        cost_per_1k=round(cost.cost_per_1k, 8),
        cost=cost,
        judge=judge,
    )
    return Evaluation(items=items, slices=slices, result=result)
