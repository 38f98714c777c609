"""The leaderboard and the review gate: who is good enough, what it costs, and the evidence.

Each experiment row shows its mean score with the 95% CI, its worst slice, the score against gold
items where humans corrected production, the scorer (the judge, or a labelled deterministic
stand-in), and money: $ per 1,000 requests for the candidate and for production (from the
production logs' own token usage), the projected monthly saving at the window's traffic and the
days a LoRA adapter's training takes to pay back. Tool-calling experiments get their exact
metrics in a table of their own; judged experiments get the judge's reliability (unscored items,
order agreement, calibration against humans) and cost.
"""

from __future__ import annotations

from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.scoring import describe


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _money(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"${v:,.0f}"
    return f"${v:,.2f}" if abs(v) >= 1 else f"${v:.4f}"


def _days(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1 / 24:
        return f"{v * 24 * 60:.0f} min"
    return f"{v * 24:.1f} h" if v < 1 else f"{v:.1f} d"


def gate(row: dict[str, Any], cfg: FlywheelConfig, threshold: float, slice_floor: float | None = None) -> str | None:
    """Why this experiment is not sent to review (None: it may be).

    Below the threshold, a slice below the floor (one number must not hide a class of requests
    the candidate fails), or too many items the judge could not score.
    """
    floor = cfg.slice_floor if slice_floor is None else slice_floor
    if row.get("status") != "succeeded":
        return f"experiment {row.get('status')}"
    if row.get("score") is None:
        return "no scored items"
    if row["score"] < threshold:
        return f"score {row['score']:.3f} < threshold {threshold:.2f}"
    worst = row.get("worst_slice_score")
    if worst is not None and worst < floor:
        return f"worst slice '{row.get('worst_slice')}' {worst:.3f} < floor {floor:.2f}"
    items = row.get("n_items") or 0
    unscored = items - (row.get("n") or 0)
    if items and unscored / items > cfg.max_unscored_share:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted((row.get("unscored") or {}).items()))
        return f"{unscored}/{items} items unscored by the judge ({reasons}) > {cfg.max_unscored_share:.0%}"
    return None


def pick_winners(rows: list[dict[str, Any]], cfg: FlywheelConfig, threshold: float,
                 slice_floor: float | None = None) -> list[dict[str, Any]]:
    """Per workload, the cheapest experiment that passes the gate.

    Cheapest, not best: the flywheel's job is to find the least expensive model that is still good
    enough; ties on cost go to the higher score. Every winner still waits for a human decision.
    """
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if gate(r, cfg, threshold, slice_floor) is not None:
            continue
        current = best.get(r["workload_id"])
        if current is None or (r["cost_per_1k"], -r["score"]) < (current["cost_per_1k"], -current["score"]):
            best[r["workload_id"]] = r
    keys = ("workload_id", "candidate", "strategy", "score", "ci_low", "ci_high", "n", "n_items", "method",
            "scorer", "cost_per_1k", "output_uri", "score_vs_prod", "score_vs_gold", "n_gold", "worst_slice",
            "worst_slice_score", "worst_slice_n", "tool_metrics", "judge", "prod_cost_per_1k", "monthly_savings",
            "training_cost", "payback_days", "requests_per_month", "cost_note", "judge_kappa", "judge_spearman",
            "judge_calibration_n")
    return [{k: best[w].get(k) for k in keys} for w in sorted(best)]


def _table(header: tuple[str, ...], body: list[tuple]) -> list[str]:
    table = [header, *body]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _calibration(r: dict[str, Any]) -> str:
    if r.get("judge_calibration_n") is None:
        return "not calibrated against human labels yet (flywheel judge calibrate)"
    return (f"calibration vs humans: kappa {_fmt(r.get('judge_kappa'), '.2f')}, "
            f"spearman {_fmt(r.get('judge_spearman'), '.2f')} (n={r['judge_calibration_n']})")


def render_leaderboard(rows: list[dict[str, Any]], cfg: FlywheelConfig, *, run_key: str, threshold: float,
                       slice_floor: float | None = None) -> str:
    floor = cfg.slice_floor if slice_floor is None else slice_floor
    body = []
    for r in rows:
        ci = f"[{_fmt(r.get('ci_low'), '.2f')}, {_fmt(r.get('ci_high'), '.2f')}]" if r.get("ci_low") is not None else "-"
        worst = (f"{r['worst_slice']} {_fmt(r.get('worst_slice_score'), '.2f')} (n={r.get('worst_slice_n')})"
                 if r.get("worst_slice") is not None else "-")
        gold = f"{_fmt(r.get('score_vs_gold'), '.2f')} (n={r['n_gold']})" if r.get("n_gold") else "-"
        n = "-" if r.get("n") is None else (f"{r['n']}" if r.get("n_items") in (None, r["n"]) else f"{r['n']}/{r['n_items']}")
        reason = gate(r, cfg, threshold, floor)
        status = r["status"] if r["status"] != "succeeded" else ("to review" if reason is None else "not sent")
        body.append((
            r["workload_id"], r["candidate"], r["strategy"], _fmt(r.get("score")), ci, worst, gold,
            r.get("method") or "-", n, _money(r.get("cost_per_1k")), _money(r.get("prod_cost_per_1k")),
            _money(r.get("monthly_savings")), _days(r.get("payback_days")), status,
        ))
    lines = [f"Leaderboard for {run_key} (review threshold {threshold:.2f}, slice floor {floor:.2f}; "
             f"production: {cfg.production_model})"]
    lines += _table(("workload", "candidate", "strategy", "score", "95% CI", "worst slice", "vs gold", "scorer", "n",
                     "$/1k req", "prod $/1k", "saving/month", "payback", "status"), body)

    tool_rows = [r for r in rows if r.get("tool_metrics")]
    if tool_rows:
        lines += ["", "Tool calls (exact, no judge):"]
        lines += _table(("workload", "candidate", "strategy", "function name", "name+args exact", "arguments", "n"), [
            (r["workload_id"], r["candidate"], r["strategy"], _fmt(r["tool_metrics"]["name_accuracy"], ".0%"),
             _fmt(r["tool_metrics"]["exact_match"], ".0%"), _fmt(r["tool_metrics"]["arg_accuracy"], ".0%"),
             r["tool_metrics"]["n"]) for r in tool_rows])

    judged = [r for r in rows if r.get("judge")]
    if judged:
        lines += ["", "Judge:"]
        for r in judged:
            j = r["judge"]
            agreement = (f"order agreement {j['order_agreement']:.0%} of {j['both_orders']}"
                         if j.get("order_agreement") is not None else "one order per item (seeded)")
            unscored = ", ".join(f"{k} {v}" for k, v in sorted((r.get("unscored") or {}).items())) or "none"
            lines.append(f"  {r['workload_id']} · {r['candidate']} · {r['strategy']}: {j['model']} prompt "
                         f"{j['prompt_version']}; {j['calls']} calls ({j['cached']} cached), unscored: {unscored}; "
                         f"{agreement}; {j['prompt_tokens'] + j['completion_tokens']} tokens, "
                         f"{_money(j.get('cost_usd'))}; {_calibration(r)}")

    notes = []
    for r in rows:
        reason = gate(r, cfg, threshold, floor)
        if r["status"] == "succeeded" and reason and "threshold" not in reason:
            notes.append(f"  {r['workload_id']} · {r['candidate']} · {r['strategy']} not sent to review: {reason}")
    if notes:
        lines += ["", "Held back although above the threshold:", *notes]
    methods = sorted({r["method"] for r in rows if r.get("method")})
    if methods:
        lines += ["", "Scorers:"] + [f"  {describe(m)}" for m in methods]
    lines += ["", "$/1k req: measured tokens at the candidate's price; prod $/1k: the production logs' token usage at "
              "the production price; saving/month at the run window's traffic; payback: LoRA training GPU time at "
              f"${cfg.gpu_price_per_hour:.2f}/GPU-hour over the daily saving."]
    return "\n".join(lines)


def review_request(winner: dict[str, Any], run_key: str, cfg: FlywheelConfig, threshold: float,
                   slice_floor: float | None = None) -> dict[str, str]:
    """Subject and Markdown body of the HITL approval for one winner: the evidence for the decision."""
    w = winner
    floor = cfg.slice_floor if slice_floor is None else slice_floor
    subject = f"Deploy {w['candidate']} ({w['strategy']}) for {w['workload_id']}?"
    n = w["n"] if w.get("n_items") in (None, w["n"]) else f"{w['n']} of {w['n_items']}"
    lines = [
        f"**{w['candidate']} · {w['strategy']}** scored **{w['score']:.3f}** "
        f"(95% CI {w['ci_low']:.3f}–{w['ci_high']:.3f}, n={n}, scorer `{w['method']}`) on workload "
        f"`{w['workload_id']}`; threshold {threshold:.2f}.",
        "",
        f"- Worst slice: `{w.get('worst_slice')}` {_fmt(w.get('worst_slice_score'), '.3f')} "
        f"(n={w.get('worst_slice_n')}; floor {floor:.2f}).",
    ]
    if w.get("n_gold"):
        lines.append(f"- Against {w['n_gold']} human gold answers: {_fmt(w.get('score_vs_gold'), '.3f')}; "
                     f"against production's answers: {_fmt(w.get('score_vs_prod'), '.3f')}.")
    else:
        lines.append(f"- Scored against the production model `{cfg.production_model}`'s answers (no gold items).")
    tm = w.get("tool_metrics")
    if tm:
        lines.append(f"- Tool calls (exact): function name {tm['name_accuracy']:.0%}, name and arguments "
                     f"{tm['exact_match']:.0%}, arguments {_fmt(tm['arg_accuracy'], '.0%')}.")
    if w.get("judge"):
        j = w["judge"]
        lines.append(f"- Judge `{j['model']}` (prompt {j['prompt_version']}): {_calibration(w)}.")
    saving = w.get("monthly_savings")
    lines.append(
        f"- Cost: {_money(w['cost_per_1k'])} per 1,000 requests vs {_money(w.get('prod_cost_per_1k'))} on production; "
        + (f"projected saving {_money(saving)} per month at {w.get('requests_per_month') or 0:,.0f} requests/month"
           if saving is not None else f"saving unknown ({w.get('cost_note') or 'no production usage'})")
        + (f"; LoRA training {_money(w.get('training_cost'))} paid back in {_days(w.get('payback_days'))}."
           if w.get("training_cost") is not None else "."))
    lines += ["", f"Run `{run_key}`. Approve to record a new deployment version (nothing is overwritten). "
                  f"Scorer: {describe(w['method'])}."]
    return {"subject": subject, "body": "\n".join(lines)}


def render_failures(failures: list[dict[str, Any]]) -> str:
    """What failed in a run and why (curations and experiments; query run_failures): each failure
    stays its own, the rest of the run went on."""
    lines = [f"Failed ({len(failures)}; the rest of the run went on without them):"]
    for f in failures:
        what = " · ".join(str(x) for x in (f["workload_id"], f.get("candidate"), f.get("strategy")) if x)
        error = " ".join(str(f.get("error") or "unknown error").split())
        lines.append(f"  {what}: {error[:300]}")
    return "\n".join(lines)
