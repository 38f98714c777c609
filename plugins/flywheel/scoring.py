"""Deterministic scoring of a candidate model's answers against the production model's answers.

There is no LLM judge: every score is an exact comparison (tool calls, JSON fields) or the cosine
similarity of sentence embeddings (free text). The method label of each score says which, and
:data:`SCORER_DESCRIPTIONS` gives the one-line explanation the leaderboard shows next to it.

Messages are OpenAI assistant messages::

    {"role": "assistant", "content": str | None,
     "tool_calls": [{"type": "function", "function": {"name": str, "arguments": "<JSON>"}}]}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from flywheel.embeddings import Embedder

TOOL_CALL_EXACT = "tool_call_exact"
JSON_FIELD_EXACT = "json_field_exact"
EMBEDDING_COSINE = "embedding_cosine"

SCORER_DESCRIPTIONS: dict[str, str] = {
    TOOL_CALL_EXACT: (
        "tool_call_exact: per reference call, in order, exact tool name (0.5) + exact argument "
        "values (0.5); missing or extra calls score 0; no judge"
    ),
    JSON_FIELD_EXACT: (
        "json_field_exact: fraction of the reference JSON fields the candidate reproduces "
        "(strings trimmed and case-folded, numbers compared numerically); no judge"
    ),
    EMBEDDING_COSINE: (
        "embedding_cosine: cosine similarity of all-MiniLM-L6-v2 sentence embeddings of the two "
        "answers, clipped to [0, 1]; no judge"
    ),
}

WORKLOAD_KINDS = ("tool_calling", "json_extraction", "chat")
METHOD_FOR_KIND = {
    "tool_calling": TOOL_CALL_EXACT,
    "json_extraction": JSON_FIELD_EXACT,
    "chat": EMBEDDING_COSINE,
}

BOOTSTRAP_RESAMPLES = 1000

Message = dict[str, Any]


@dataclass(frozen=True)
class ItemScore:
    """Score of one candidate answer in [0, 1]; ``method`` is one of :data:`SCORER_DESCRIPTIONS`."""

    score: float
    method: str
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentScore:
    """Mean item score with a 95% bootstrap confidence interval; all None when there are no items."""

    mean: float | None
    n: int
    ci_low: float | None
    ci_high: float | None
    method: str


def describe(method: str) -> str:
    """Human description of a method label, including the "a+b" labels of mixed experiments."""
    return "; ".join(SCORER_DESCRIPTIONS.get(m, m) for m in method.split("+") if m)


# --- tool calls ---------------------------------------------------------------------------------

_MALFORMED = object()  # arguments that are not a JSON object


def _tool_calls(msg: Message | None) -> list[dict]:
    return list((msg or {}).get("tool_calls") or [])


def _function(call: dict) -> dict:
    return call.get("function") or {}


def _parse_arguments(raw: Any) -> dict | object:
    # Some providers send "" or null for a call without arguments; both mean {}.
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        return _MALFORMED
    return parsed if isinstance(parsed, dict) else _MALFORMED


def _json_exact_equal(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values, except that true/false never equal 1/0 (Python's == would)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_exact_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_exact_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # 2 and 2.0 are the same JSON number
    return type(a) is type(b) and a == b


def _arguments_match(
    ref_args: dict | object, cand_args: dict | object, ref_raw: Any, cand_raw: Any
) -> float:
    """Fraction of the reference's argument keys whose values the candidate reproduces exactly."""
    if cand_args is _MALFORMED:
        return 0.0
    if ref_args is _MALFORMED:
        # A broken reference can only be matched by reproducing it character for character.
        return 1.0 if ref_raw == cand_raw else 0.0
    if not ref_args:
        return 1.0 if not cand_args else 0.0
    equal = sum(1 for k, v in ref_args.items() if k in cand_args and _json_exact_equal(v, cand_args[k]))
    return equal / len(ref_args)


def score_tool_calls(reference_msg: Message, candidate_msg: Message | None) -> ItemScore:
    """Compare tool calls position by position; see ``SCORER_DESCRIPTIONS["tool_call_exact"]``.

    Argument credit is only given when the name matches: the same arguments passed to another
    function do not do the same thing.
    """
    ref_calls, cand_calls = _tool_calls(reference_msg), _tool_calls(candidate_msg)
    if not ref_calls and not cand_calls:
        detail = {"name_match": [], "args_match": [], "reason": "neither answer calls a tool"}
        return ItemScore(1.0, TOOL_CALL_EXACT, detail)

    name_match: list[bool] = []
    args_match: list[float] = []
    malformed: list[int] = []
    for i, ref_call in enumerate(ref_calls):
        cand_call = cand_calls[i] if i < len(cand_calls) else None
        ref_fn = _function(ref_call)
        cand_fn = _function(cand_call) if cand_call is not None else {}
        same_name = cand_call is not None and cand_fn.get("name") == ref_fn.get("name")
        ref_args = _parse_arguments(ref_fn.get("arguments"))
        cand_args = _parse_arguments(cand_fn.get("arguments"))
        if cand_call is not None and cand_args is _MALFORMED:
            malformed.append(i)
        args = _arguments_match(ref_args, cand_args, ref_fn.get("arguments"), cand_fn.get("arguments"))
        name_match.append(same_name)
        args_match.append(args if same_name else 0.0)

    per_call = [0.5 * named + 0.5 * args for named, args in zip(name_match, args_match)]
    # Extra candidate calls add to the denominator only: each is a wrong action worth 0.
    score = sum(per_call) / max(len(ref_calls), len(cand_calls))
    detail = {
        "name_match": name_match,
        "args_match": args_match,
        "reference_calls": len(ref_calls),
        "candidate_calls": len(cand_calls),
    }
    if malformed:
        detail["malformed_arguments"] = malformed
    return ItemScore(score, TOOL_CALL_EXACT, detail)


# --- JSON extraction ----------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _parse_json_object(content: str | None) -> dict | None:
    if not content:
        return None
    try:
        parsed = json.loads(content)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _normalise(value: Any) -> Any:
    """Canonical form for field comparison: "12.50" and 12.5 are the same amount, " Paris" is "paris"."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        # Only plain numerals count as numbers, so "nan", "inf" or "1,000" stay strings.
        if _NUMBER.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
        return text.casefold()
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _fields_equal(a: Any, b: Any) -> bool:
    return _json_exact_equal(_normalise(a), _normalise(b))


def _score_json_object(reference: dict, candidate_content: str | None) -> ItemScore:
    candidate = _parse_json_object(candidate_content)
    if candidate is None:
        return ItemScore(0.0, JSON_FIELD_EXACT, {"reason": "candidate content is not a JSON object"})
    if not reference:
        detail = {"fields": {}, "reason": "empty reference object"}
        return ItemScore(float(not candidate), JSON_FIELD_EXACT, detail)
    fields = {k: k in candidate and _fields_equal(v, candidate[k]) for k, v in reference.items()}
    return ItemScore(sum(fields.values()) / len(fields), JSON_FIELD_EXACT, {"fields": fields})


def score_json_fields(
    reference_msg: Message, candidate_msg: Message | None, embedder: Embedder | None = None
) -> ItemScore:
    """Fraction of the reference's JSON fields reproduced; see ``SCORER_DESCRIPTIONS``.

    A reference that is not a JSON object cannot be compared field by field, so it falls back to
    embedding cosine (that needs ``embedder``); the method label and detail then say so.
    """
    return score_items("json_extraction", [(reference_msg, candidate_msg)], embedder)[0]


def _as_json_fallback(score: ItemScore) -> ItemScore:
    detail = {**score.detail, "fallback": "reference content is not a JSON object"}
    return ItemScore(score.score, score.method, detail)


# --- free text ----------------------------------------------------------------------------------


def _render_call(call: dict) -> str:
    fn = _function(call)
    return f"call {fn.get('name', '')} {fn.get('arguments') or '{}'}"


def message_text(msg: Message | None) -> str:
    """The text of an answer: its content, then its tool calls as ``call NAME {args}``."""
    msg = msg or {}
    parts = [(msg.get("content") or "").strip()]
    calls = _tool_calls(msg)
    if calls:
        parts.append(" ; ".join(_render_call(c) for c in calls))
    return "\n".join(p for p in parts if p)


def score_text(
    reference_texts: Sequence[str], candidate_texts: Sequence[str], embedder: Embedder
) -> list[ItemScore]:
    """Cosine similarity of each pair's embeddings, clipped to [0, 1], with one embed call.

    An empty candidate scores 0 (saying nothing is not an answer) unless the reference is empty
    too, in which case the two agree and score 1.
    """
    if len(reference_texts) != len(candidate_texts):
        raise ValueError(
            f"{len(reference_texts)} reference texts but {len(candidate_texts)} candidate texts"
        )
    pairs = [((r or "").strip(), (c or "").strip()) for r, c in zip(reference_texts, candidate_texts)]
    scores = [_empty_text_score(r, c) for r, c in pairs]
    to_embed = [i for i, score in enumerate(scores) if score is None]
    if not to_embed:
        return scores

    vectors = embedder.embed([pairs[i][0] for i in to_embed] + [pairs[i][1] for i in to_embed])
    ref_vecs, cand_vecs = vectors[: len(to_embed)], vectors[len(to_embed) :]
    for i, ref_vec, cand_vec in zip(to_embed, ref_vecs, cand_vecs):
        cosine = float(np.dot(ref_vec, cand_vec))
        detail = {"cosine": cosine, "embedder": embedder.name}
        scores[i] = ItemScore(min(max(cosine, 0.0), 1.0), EMBEDDING_COSINE, detail)
    return scores


def _empty_text_score(reference: str, candidate: str) -> ItemScore | None:
    if reference and candidate:
        return None  # scored by embedding
    if not candidate:
        both = not reference
        reason = "both answers are empty" if both else "candidate answer is empty"
        return ItemScore(float(both), EMBEDDING_COSINE, {"reason": reason})
    return ItemScore(0.0, EMBEDDING_COSINE, {"reason": "reference answer is empty"})


# --- dispatch and aggregation -------------------------------------------------------------------


def score_items(
    kind: str, pairs: Sequence[tuple[Message, Message | None]], embedder: Embedder | None
) -> list[ItemScore]:
    """Score (reference, candidate) pairs of one workload kind; all text goes in one embed call."""
    if kind not in METHOD_FOR_KIND:
        raise ValueError(f"unknown workload kind {kind!r}; known: {list(WORKLOAD_KINDS)}")
    if kind == "tool_calling":
        return [score_tool_calls(ref, cand) for ref, cand in pairs]

    scores: list[ItemScore | None] = [None] * len(pairs)
    text_items: list[int] = []
    for i, (ref, cand) in enumerate(pairs):
        reference = _parse_json_object((ref or {}).get("content")) if kind == "json_extraction" else None
        if reference is not None:
            scores[i] = _score_json_object(reference, (cand or {}).get("content"))
        else:
            text_items.append(i)
    if text_items:
        if embedder is None:
            what = "non-JSON references" if kind == "json_extraction" else "chat answers"
            raise ValueError(f"scoring {what} by embedding cosine needs an embedder")
        refs = [message_text(pairs[i][0]) for i in text_items]
        cands = [message_text(pairs[i][1]) for i in text_items]
        for i, text_score in zip(text_items, score_text(refs, cands, embedder)):
            scores[i] = _as_json_fallback(text_score) if kind == "json_extraction" else text_score
    return scores  # type: ignore[return-value]  # every slot is filled above


def aggregate(scores: Sequence[ItemScore], seed: int = 0) -> ExperimentScore:
    """Mean score with a percentile-bootstrap 95% CI (1000 resamples, seeded, so reproducible)."""
    method = "+".join(sorted({s.method for s in scores}))
    if not scores:
        return ExperimentScore(mean=None, n=0, ci_low=None, ci_high=None, method=method)
    values = np.array([s.score for s in scores], dtype=np.float64)
    rng = np.random.default_rng(seed)
    resampled = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))]
    low, high = np.percentile(resampled.mean(axis=1), [2.5, 97.5])
    return ExperimentScore(
        mean=float(values.mean()), n=len(values), ci_low=float(low), ci_high=float(high), method=method
    )
