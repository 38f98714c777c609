"""The leaderboard: workload x candidate x strategy -> score, records, cost; and the winners."""

from __future__ import annotations

from typing import Any

from flywheel.config import FlywheelConfig

SCORER_NOTE = (
    "scores are deterministic (no LLM judge): tool_call_exact = exact tool name + argument match; "
    "json_field_exact = exact field match; embedding_cosine = all-MiniLM-L6-v2 similarity to the "
    "production answer"
)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def render_leaderboard(rows: list[dict[str, Any]], cfg: FlywheelConfig, *, run_key: str, threshold: float) -> str:
    header = ("workload", "candidate", "strategy", "score", "95% CI", "scorer", "eval n", "train n",
              "$/1k req", "vs prod", "status")
    table = [header]
    for r in rows:
        ci = f"[{_fmt(r['ci_low'], '.2f')}, {_fmt(r['ci_high'], '.2f')}]" if r.get("ci_low") is not None else "-"
        prod_cost = None
        if r.get("cost_per_1k") is not None and cfg.candidates.get(r["candidate"]):
            # Same tokens at the production model's price: what the workload pays today.
            price = cfg.candidates[r["candidate"]].price_per_1m_tokens
            prod_cost = r["cost_per_1k"] * cfg.production_price_per_1m_tokens / price if price else None
        saving = f"-{(1 - r['cost_per_1k'] / prod_cost) * 100:.0f}%" if prod_cost else "-"
        table.append((
            r["workload_id"], r["candidate"], r["strategy"], _fmt(r.get("score")), ci,
            r.get("method") or "-", _fmt(r.get("n"), "d"), _fmt(r.get("n_train"), "d"),
            _fmt(r.get("cost_per_1k"), ".5f"), saving, r["status"],
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = [f"Leaderboard for {run_key} (review threshold {threshold:.2f}; production: {cfg.production_model})"]
    for i, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(SCORER_NOTE)
    return "\n".join(lines)


def pick_winners(rows: list[dict[str, Any]], cfg: FlywheelConfig, threshold: float) -> list[dict[str, Any]]:
    """Per workload, the cheapest succeeded experiment scoring at or above the threshold.

    Cheapest, not best: the flywheel's job is to find the least expensive model that is still good
    enough; ties on cost go to the higher score. Every winner still waits for a human decision.
    """
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "succeeded" or r.get("score") is None or r["score"] < threshold:
            continue
        current = best.get(r["workload_id"])
        if current is None or (r["cost_per_1k"], -r["score"]) < (current["cost_per_1k"], -current["score"]):
            best[r["workload_id"]] = r
    return [
        {k: best[w][k] for k in ("workload_id", "candidate", "strategy", "score", "ci_low", "ci_high",
                                  "n", "method", "cost_per_1k", "output_uri")}
        for w in sorted(best)
    ]


def review_request(winner: dict[str, Any], run_key: str, cfg: FlywheelConfig, threshold: float) -> dict[str, str]:
    """Subject and Markdown body of the HITL approval for one winner: the evidence for the decision."""
    w = winner
    subject = f"Deploy {w['candidate']} ({w['strategy']}) for {w['workload_id']}?"
    body = (
        f"**{w['candidate']} · {w['strategy']}** scored **{w['score']:.3f}** "
        f"(95% CI {w['ci_low']:.3f}–{w['ci_high']:.3f}, n={w['n']}, scorer `{w['method']}`) against "
        f"the production model `{cfg.production_model}` on workload `{w['workload_id']}`; "
        f"threshold {threshold:.2f}.\n\n"
        f"Estimated cost: ${w['cost_per_1k']:.5f} per 1,000 requests.\n\n"
        f"Run `{run_key}`. Approve to record a new deployment version (nothing is overwritten; every "
        f"version can be rolled back). {SCORER_NOTE}."
    )
    return {"subject": subject, "body": body}
