"""Judge calibration: does the judge grade like people do?

Human labels are grades of comparisons (request, reference, candidate) on the judge's own 0-10
rubric, from reviews or an imported labelled file. The judge grades the same comparisons; the
agreement is Cohen's kappa on pass/fail and Spearman's rho on the scores
(``flywheel.stats.agreement``), stored per judge model and prompt version and shown next to
every judged score. Several people's labels of one item are averaged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from flywheel.judge import JudgeItem, JudgeStats, Verdict
from flywheel.stats import Agreement, agreement


class LabelError(ValueError):
    """A labelled item that cannot be used; the message names the line and the field."""


class HumanLabel(BaseModel):
    item: JudgeItem
    score: float  # in [0, 1]
    labeler: str
    workload_id: str | None = None


def parse_label_line(line: str, *, line_no: int, default_labeler: str) -> HumanLabel:
    """{"request", "reference", "candidate", "score" (0-10 rubric points), ["labeler", "what", "workload_id"]}."""
    where = f"line {line_no}"
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise LabelError(f"{where}: not valid JSON; one JSON object per line") from None
    if not isinstance(obj, dict):
        raise LabelError(f"{where}: expected a JSON object")
    for key in ("request", "reference", "candidate"):
        if not isinstance(obj.get(key), str):
            raise LabelError(f"{where}: {key} must be text")
    score = obj.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 10:
        raise LabelError(f"{where}: score must be a number of rubric points from 0 to 10")
    item = JudgeItem(request=obj["request"], reference=obj["reference"], candidate=obj["candidate"],
                     what=str(obj.get("what") or "answer"))
    workload = obj.get("workload_id")
    return HumanLabel(item=item, score=float(score) / 10.0, labeler=str(obj.get("labeler") or default_labeler),
                      workload_id=str(workload) if workload else None)


class Calibration(BaseModel):
    agreement: Agreement
    n_items: int
    n_unscored: int  # items the judge gave no valid score for (left out of the agreement)
    judge_stats: JudgeStats


def calibrate(labels: Iterable[Mapping[str, Any] | HumanLabel],
              run_judge: Callable[[list[JudgeItem]], tuple[list[Verdict], JudgeStats]],
              *, pass_mark: float = 0.5) -> Calibration:
    """Grade every labelled comparison with the judge and measure the agreement."""
    human: dict[str, list[float]] = defaultdict(list)
    items: dict[str, JudgeItem] = {}
    for label in labels:
        label = label if isinstance(label, HumanLabel) else HumanLabel(
            item=JudgeItem(**label["item"]), score=label["score"], labeler=label.get("labeler", "?"))
        h = label.item.item_hash()
        items.setdefault(h, label.item)
        human[h].append(label.score)
    hashes = sorted(items)
    verdicts, stats = run_judge([items[h] for h in hashes]) if hashes else ([], JudgeStats())
    judge_scores, human_scores = [], []
    for h, verdict in zip(hashes, verdicts):
        if verdict.score is not None:
            judge_scores.append(verdict.score)
            human_scores.append(sum(human[h]) / len(human[h]))
    return Calibration(agreement=agreement(judge_scores, human_scores, pass_mark=pass_mark), n_items=len(hashes),
                       n_unscored=len(hashes) - len(judge_scores), judge_stats=stats)
