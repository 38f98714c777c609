"""The evidence a reviewer decides on, as Markdown (the HITL task's body; the flywheel page renders
the same text): beyond the scores and cost (flywheel.report.review_request), the data the
candidate learned from and was tested on, answers side by side, what got worse against the
version serving now, the regression guard's verdict and the LoRA training curve.

Every text here comes from logged production traffic, redacted before it was stored; it is still
untrusted: table cells are flattened, cut and escaped, so an answer cannot break the layout or
inject markup into the review.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

MAX_CELL = 160
_SPARK = "▁▂▃▄▅▆▇█"


class EvidenceItem(BaseModel):
    """One eval item side by side (crosses the database -> review boundary)."""

    item_id: str
    slice: str
    request: str
    production: str
    candidate: str
    score: float | None


class Regression(BaseModel):
    """An anchor item the candidate answers worse than the version serving now."""

    item_id: str
    slice: str
    request: str
    deployed_answer: str
    candidate: str
    deployed_score: float
    candidate_score: float

    @property
    def drop(self) -> float:
        return self.deployed_score - self.candidate_score


def cell(text: Any, limit: int = MAX_CELL) -> str:
    """One safe Markdown table cell from untrusted text."""
    flat = re.sub(r"\s+", " ", str(text if text is not None else "")).strip()
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    flat = flat.replace("\\", "\\\\")
    for ch in "|`*_[]<>#":
        flat = flat.replace(ch, "\\" + ch)
    return flat or "(empty)"


def request_text(request: dict[str, Any]) -> str:
    """The last user turn of a request (what the application asked), tools named when offered."""
    messages = request.get("messages") if isinstance(request, dict) else None
    user = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    content = user[-1].get("content") if user else ""
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def pick_items(items: list[EvidenceItem], n: int = 8) -> list[EvidenceItem]:
    """Up to n items: the worst-scored first (where the candidate fails), then the best ones (what
    it gets right), in a stable order."""
    scored = sorted(items, key=lambda i: (i.score if i.score is not None else -1.0, i.item_id))
    worst = scored[: max(1, (n * 5) // 8)]
    best = [i for i in reversed(scored) if i not in worst][: n - len(worst)]
    return worst + best


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(_SPARK[min(len(_SPARK) - 1, int((v - lo) / span * (len(_SPARK) - 1)))] for v in values)


def _score(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def evidence_markdown(
    *,
    dataset: dict[str, Any] | None,
    items: list[EvidenceItem],
    regressions: list[Regression] | None,
    active_version: int | None,
    guard_reason: str | None,
    training: dict[str, Any] | None,
) -> str:
    lines: list[str] = []
    if dataset:
        pii = dataset.get("pii") or {}
        pii_text = ", ".join(f"{k} {v}" for k, v in sorted(pii.items())) if pii else "none found"
        lines += ["### Data",
                  f"- Records in the window: {dataset.get('n_in')}; accepted {dataset.get('n_accepted')}, "
                  f"quarantined {dataset.get('n_quarantined')}, duplicates {dataset.get('n_duplicates')}.",
                  f"- Split: eval {dataset.get('n_eval')}, train {dataset.get('n_train')}, val {dataset.get('n_val')}.",
                  f"- PII redacted before storage (this run's records): {pii_text}.", ""]
    if guard_reason:
        lines += ["### Regression guard", f"- {guard_reason}", ""]
    if items:
        lines += [f"### {len(items)} eval items side by side (worst first, then the best; redacted)", "",
                  "| item | slice | request | production answer | candidate answer | score |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {cell(i.item_id, 40)} | {cell(i.slice, 30)} | {cell(i.request)} | {cell(i.production)} | "
                  f"{cell(i.candidate)} | {_score(i.score)} |" for i in items]
        lines.append("")
    lines.append("### Against the version serving now")
    if active_version is None:
        lines.append("- Nothing is deployed for this workload yet: this would be its first version, and its eval "
                     "items would become the workload's anchor set.")
    elif regressions is None:
        lines.append(f"- v{active_version} serves now, but the candidate was not scored on the anchor set, so it "
                     "cannot be compared item by item.")
    elif not regressions:
        lines.append(f"- No anchor item is answered worse than by v{active_version}.")
    else:
        lines += [f"The anchor items answered worse than by v{active_version} (biggest drops first):", "",
                  f"| item | slice | request | v{active_version} answer | candidate answer | v{active_version} | candidate |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {cell(r.item_id, 40)} | {cell(r.slice, 30)} | {cell(r.request)} | {cell(r.deployed_answer)} | "
                  f"{cell(r.candidate)} | {r.deployed_score:.2f} | {r.candidate_score:.2f} |" for r in regressions]
    lines.append("")
    if training:
        losses = [float(x) for x in training.get("train_loss_per_epoch") or []]
        if losses:
            lines += ["### LoRA training curve",
                      f"- Train loss per epoch {sparkline(losses)}: " + ", ".join(f"{x:.3f}" for x in losses)
                      + (f" (before training {training['train_loss_first']:.3f})"
                         if training.get("train_loss_first") is not None else "") + ".",
                      f"- Validation loss after the last epoch: "
                      + (f"{training['val_loss']:.3f}" if training.get("val_loss") is not None else "not measured")
                      + f"; {training.get('train_examples', '?')} train"
                      + (f" (a sample of {training['train_examples_usable']})"
                         if (training.get("train_examples_usable") or 0) > (training.get("train_examples") or 0) else "")
                      + f" / {training.get('val_examples', '?')} val examples, {training.get('train_seconds', '?')} s.",
                      ""]
    return "\n".join(lines).rstrip() + "\n"


def biggest_regressions(candidate: dict[str, dict[str, Any]], deployed: dict[str, dict[str, Any]],
                        records: dict[str, dict[str, Any]], n: int = 5) -> list[Regression]:
    """Anchor items (id -> {slice, score, prediction}) the candidate scores lower on than the
    deployed version, biggest drop first."""
    out = []
    for item_id in sorted(set(candidate) & set(deployed)):
        c, d = candidate[item_id], deployed[item_id]
        if c["score"] < d["score"]:
            out.append(Regression(item_id=item_id, slice=d.get("slice") or "all",
                                  request=request_text((records.get(item_id) or {}).get("request") or {}),
                                  deployed_answer=d.get("prediction") or "", candidate=c.get("prediction") or "",
                                  deployed_score=d["score"], candidate_score=c["score"]))
    return sorted(out, key=lambda r: (-r.drop, r.item_id))[:n]
