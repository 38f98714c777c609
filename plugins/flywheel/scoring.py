"""Scoring a candidate model's answers against a reference answer (production's, or a human's gold).

One experiment is scored by exactly one scorer, chosen by the workload's kind and by whether an
LLM judge endpoint is configured (:func:`method_for`):

============== =========================== ==============================================
kind           no judge (deterministic)    judge configured
============== =========================== ==============================================
tool_calling   ``tool_call_exact``         ``tool_call_judged`` (free-text arguments judged)
json_extraction ``json_field_exact``       ``json_field_judged`` (free-text fields judged)
chat           ``embedding_cosine``        ``llm_judge``
============== =========================== ==============================================

Tool calls and structured values are always compared exactly (with type normalisation: 7 is
7.0 and "7", "true" is true, key order never matters); the judge only sees free text. The exact
tool-calling metrics (function-name accuracy, exact match, per-argument match) are computed by
:func:`tool_metrics` whatever the scorer, and shown separately.

Scoring is planned first (:func:`plan_scores`): each item becomes weighted parts that are either a
number already or a :class:`FreeText` comparison left to the experiment's free-text scorer (the
judge, or embedding cosine for chat without a judge). ``flywheel.evaluation`` resolves them.

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
TOOL_CALL_JUDGED = "tool_call_judged"
JSON_FIELD_JUDGED = "json_field_judged"
LLM_JUDGE = "llm_judge"

SCORER_DESCRIPTIONS: dict[str, str] = {
    TOOL_CALL_EXACT: (
        "tool_call_exact: per reference call, in order, exact tool name (0.5) + the share of argument "
        "values reproduced (0.5; numbers, booleans and key order normalised); missing or extra calls "
        "score 0; no judge"
    ),
    JSON_FIELD_EXACT: (
        "json_field_exact: fraction of the reference JSON fields the candidate reproduces "
        "(strings trimmed and case-folded, numbers compared numerically); no judge"
    ),
    EMBEDDING_COSINE: (
        "embedding_cosine: cosine similarity of all-MiniLM-L6-v2 sentence embeddings of the two "
        "answers (or of the model the flywheel_embeddings connection names; each item records its "
        "embedder), clipped to [0, 1]; no judge"
    ),
    TOOL_CALL_JUDGED: (
        "tool_call_judged: as tool_call_exact, but free-text argument values (4+ words) are graded "
        "by the LLM judge instead of compared character for character"
    ),
    JSON_FIELD_JUDGED: (
        "json_field_judged: as json_field_exact, but free-text field values (4+ words) are graded "
        "by the LLM judge"
    ),
    LLM_JUDGE: "llm_judge: the LLM judge grades the answer against the reference on a 0-10 rubric, mapped to [0, 1]",
}
DETERMINISTIC_METHODS = (TOOL_CALL_EXACT, JSON_FIELD_EXACT, EMBEDDING_COSINE)

WORKLOAD_KINDS = ("tool_calling", "json_extraction", "chat")
METHOD_FOR_KIND = {
    "tool_calling": TOOL_CALL_EXACT,
    "json_extraction": JSON_FIELD_EXACT,
    "chat": EMBEDDING_COSINE,
}
JUDGED_METHOD_FOR_KIND = {
    "tool_calling": TOOL_CALL_JUDGED,
    "json_extraction": JSON_FIELD_JUDGED,
    "chat": LLM_JUDGE,
}
# A string value of at least this many words is free text (a message, a summary, an address):
# its wording may differ from the reference's and still be right, so a judge grades it.
FREE_TEXT_MIN_WORDS = 4

Message = dict[str, Any]


def method_for(kind: str, *, judge: bool) -> str:
    """The one scorer of an experiment of this workload kind."""
    if kind not in METHOD_FOR_KIND:
        raise ValueError(f"unknown workload kind {kind!r}; known: {list(WORKLOAD_KINDS)}")
    return (JUDGED_METHOD_FOR_KIND if judge else METHOD_FOR_KIND)[kind]


def describe(method: str) -> str:
    return SCORER_DESCRIPTIONS.get(method, method)


@dataclass(frozen=True)
class ItemScore:
    """Score of one candidate answer in [0, 1], or None when it could not be scored (the judge
    failed on it: ``failure`` says why; such an item is counted, never averaged in as 0)."""

    score: float | None
    method: str
    detail: dict = field(default_factory=dict)
    failure: str | None = None


@dataclass(frozen=True)
class FreeText:
    """A free-text comparison left to the experiment's free-text scorer (judge or embeddings).

    ``what`` says what is compared: "answer", or "argument NAME of TOOL" / "field NAME".
    """

    reference: str
    candidate: str
    what: str = "answer"


@dataclass
class ScorePlan:
    """An item's score as weighted parts (weights add up to 1): numbers, or free text to grade."""

    method: str
    parts: list[tuple[float, float | FreeText]]
    detail: dict = field(default_factory=dict)

    @property
    def free_text(self) -> list[FreeText]:
        return [p for _, p in self.parts if isinstance(p, FreeText)]

    def resolve(self, graded: dict[int, float | None], failures: dict[int, str] | None = None) -> ItemScore:
        """The score, given the grade of each FreeText part (keyed by ``id()`` of the part)."""
        total = 0.0
        for weight, part in self.parts:
            if isinstance(part, FreeText):
                value = graded.get(id(part))
                if value is None:
                    reason = (failures or {}).get(id(part), "free text was not graded")
                    return ItemScore(None, self.method, self.detail, failure=reason)
            else:
                value = part
            total += weight * value
        return ItemScore(min(max(total, 0.0), 1.0), self.method, self.detail)


# --- value normalisation --------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_MALFORMED = object()  # arguments that are not a JSON object


def canonical(value: Any) -> Any:
    """A comparable form of a JSON value for exact matching of tool-call arguments.

    Numbers are numbers whether sent as 7, 7.0 or "7"; booleans whether true or "true"; objects
    compare regardless of key order; strings are trimmed but keep their case (an order id
    "A-1" is not "a-1"). Booleans never equal numbers (true is not 1).
    """
    if isinstance(value, bool):
        return ("bool", value)
    if value is None:
        return ("null",)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return ("bool", text.lower() == "true")
        if _NUMBER.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return ("num", number)
        return ("str", text)
    if isinstance(value, list):
        return ("list", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("obj", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    return ("other", repr(value))


def values_equal(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def is_free_text(value: Any) -> bool:
    return isinstance(value, str) and len(value.split()) >= FREE_TEXT_MIN_WORDS


# --- tool calls ---------------------------------------------------------------------------------

def _tool_calls(msg: Message | None) -> list[dict]:
    calls = (msg or {}).get("tool_calls") or []
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _function(call: dict | None) -> dict:
    fn = (call or {}).get("function")
    return fn if isinstance(fn, dict) else {}


def _parse_arguments(raw: Any) -> dict | object:
    # Some providers send "" or null for a call without arguments; both mean {}.
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        return _MALFORMED
    return parsed if isinstance(parsed, dict) else _MALFORMED


@dataclass(frozen=True)
class ToolCallMetrics:
    """Exact tool-calling metrics of one item (no judge, whatever the experiment's scorer).

    ``name_match``: the candidate calls the same functions, in the same order, no more, no less;
    ``exact_match``: and with equal arguments (after :func:`canonical`), no extra ones;
    ``args_matched`` / ``args_total``: the reference's argument values reproduced at the same call
    position under the same function name.
    """

    name_match: bool
    exact_match: bool
    args_total: int
    args_matched: int
    malformed: int = 0


def tool_metrics(reference_msg: Message, candidate_msg: Message | None) -> ToolCallMetrics:
    ref_calls, cand_calls = _tool_calls(reference_msg), _tool_calls(candidate_msg)
    ref_names = [_function(c).get("name") for c in ref_calls]
    cand_names = [_function(c).get("name") for c in cand_calls]
    name_match = ref_names == cand_names
    exact = name_match
    total = matched = malformed = 0
    for i, ref_call in enumerate(ref_calls):
        ref_args = _parse_arguments(_function(ref_call).get("arguments"))
        cand_fn = _function(cand_calls[i]) if i < len(cand_calls) else {}
        cand_args = _parse_arguments(cand_fn.get("arguments")) if cand_fn else {}
        if cand_fn and cand_args is _MALFORMED:
            malformed += 1
        same_name = bool(cand_fn) and cand_fn.get("name") == ref_names[i]
        if ref_args is _MALFORMED:
            total += 1
            ok = same_name and cand_fn.get("arguments") == _function(ref_call).get("arguments")
            matched += ok
            exact = exact and ok
            continue
        total += len(ref_args)
        if not same_name or cand_args is _MALFORMED:
            exact = False
            continue
        hits = sum(1 for k, v in ref_args.items() if k in cand_args and values_equal(v, cand_args[k]))
        matched += hits
        exact = exact and hits == len(ref_args) and set(cand_args) == set(ref_args)
    return ToolCallMetrics(name_match=name_match, exact_match=exact, args_total=total, args_matched=matched,
                           malformed=malformed)


def _plan_tool_calls(reference_msg: Message, candidate_msg: Message | None, *, judge: bool) -> ScorePlan:
    """Per reference call, in order: 0.5 for the name + 0.5 x the share of argument values right.

    Argument credit needs the right name (the same arguments passed to another function do not do
    the same thing); extra candidate calls add to the denominator only (each a wrong action worth 0).
    With a judge, free-text argument values are graded by it instead of compared exactly.
    """
    method = TOOL_CALL_JUDGED if judge else TOOL_CALL_EXACT
    ref_calls, cand_calls = _tool_calls(reference_msg), _tool_calls(candidate_msg)
    metrics = tool_metrics(reference_msg, candidate_msg)
    detail: dict[str, Any] = {"name_match": metrics.name_match, "exact_match": metrics.exact_match,
                              "args_total": metrics.args_total, "args_matched": metrics.args_matched,
                              "reference_calls": len(ref_calls), "candidate_calls": len(cand_calls)}
    if metrics.malformed:
        detail["malformed_arguments"] = metrics.malformed
    if not ref_calls and not cand_calls:
        return ScorePlan(method, [(1.0, 1.0)], {**detail, "reason": "neither answer calls a tool"})
    call_weight = 1.0 / max(len(ref_calls), len(cand_calls))
    parts: list[tuple[float, float | FreeText]] = []
    for i, ref_call in enumerate(ref_calls):
        ref_fn = _function(ref_call)
        cand_fn = _function(cand_calls[i]) if i < len(cand_calls) else {}
        same_name = bool(cand_fn) and cand_fn.get("name") == ref_fn.get("name")
        parts.append((0.5 * call_weight, float(same_name)))
        ref_args = _parse_arguments(ref_fn.get("arguments"))
        cand_args = _parse_arguments(cand_fn.get("arguments")) if cand_fn else {}
        arg_weight = 0.5 * call_weight
        if not same_name or cand_args is _MALFORMED:
            parts.append((arg_weight, 0.0))
        elif ref_args is _MALFORMED:
            # A broken reference can only be matched by reproducing it character for character.
            parts.append((arg_weight, float(ref_fn.get("arguments") == cand_fn.get("arguments"))))
        elif not ref_args:
            parts.append((arg_weight, float(not cand_args)))
        else:
            each = arg_weight / len(ref_args)
            for key, value in ref_args.items():
                if key not in cand_args:
                    parts.append((each, 0.0))
                elif judge and is_free_text(value) and isinstance(cand_args[key], str):
                    what = f"argument {key} of {ref_fn.get('name')}"
                    parts.append((each, FreeText(value, cand_args[key], what)))
                else:
                    parts.append((each, float(values_equal(value, cand_args[key]))))
    return ScorePlan(method, parts, detail)


def score_tool_calls(reference_msg: Message, candidate_msg: Message | None) -> ItemScore:
    """The deterministic tool-call score; see ``SCORER_DESCRIPTIONS["tool_call_exact"]``."""
    return _plan_tool_calls(reference_msg, candidate_msg, judge=False).resolve({})


# --- JSON extraction ----------------------------------------------------------------------------

def _parse_json_object(content: Any) -> dict | None:
    if not isinstance(content, str) or not content:
        return None
    try:
        parsed = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _normalise(value: Any) -> Any:
    """Canonical form for field comparison: "12.50" and 12.5 are the same amount, " Paris" is "paris"."""
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            return ("str", text.casefold())
    if isinstance(value, list):
        return ("list", tuple(_normalise(v) for v in value))
    if isinstance(value, dict):
        return ("obj", tuple(sorted((str(k), _normalise(v)) for k, v in value.items())))
    return canonical(value)


def _fields_equal(a: Any, b: Any) -> bool:
    return _normalise(a) == _normalise(b)


def _text_equal(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _plan_json(reference_msg: Message, candidate_msg: Message | None, *, judge: bool) -> ScorePlan:
    method = JSON_FIELD_JUDGED if judge else JSON_FIELD_EXACT
    reference = _parse_json_object((reference_msg or {}).get("content"))
    cand_content = (candidate_msg or {}).get("content")
    if reference is None:
        # The reference is not a JSON object (production broke the format): compare whole texts,
        # with the experiment's own scorer, never by borrowing another one.
        ref_text, cand_text = message_text(reference_msg), message_text(candidate_msg)
        detail = {"reason": "reference is not a JSON object: whole answers compared"}
        if judge:
            return ScorePlan(method, [(1.0, FreeText(ref_text, cand_text))], detail)
        return ScorePlan(method, [(1.0, float(_text_equal(ref_text, cand_text)))], detail)
    candidate = _parse_json_object(cand_content)
    if candidate is None:
        return ScorePlan(method, [(1.0, 0.0)], {"reason": "candidate content is not a JSON object"})
    if not reference:
        return ScorePlan(method, [(1.0, float(not candidate))], {"fields": {}, "reason": "empty reference object"})
    weight = 1.0 / len(reference)
    parts: list[tuple[float, float | FreeText]] = []
    fields: dict[str, bool] = {}
    for key, value in reference.items():
        present = key in candidate
        fields[key] = present and _fields_equal(value, candidate[key])
        if judge and present and is_free_text(value) and isinstance(candidate[key], str) and not fields[key]:
            parts.append((weight, FreeText(value, candidate[key], f"field {key}")))
        else:
            parts.append((weight, float(fields[key])))
    return ScorePlan(method, parts, {"fields": fields})


def score_json_fields(reference_msg: Message, candidate_msg: Message | None) -> ItemScore:
    """Fraction of the reference's JSON fields reproduced; see ``SCORER_DESCRIPTIONS``."""
    return _plan_json(reference_msg, candidate_msg, judge=False).resolve({})


# --- free text ----------------------------------------------------------------------------------

def _render_call(call: dict) -> str:
    fn = _function(call)
    return f"call {fn.get('name', '')} {fn.get('arguments') or '{}'}"


def message_text(msg: Message | None) -> str:
    """The text of an answer: its content, then its tool calls as ``call NAME {args}``."""
    msg = msg or {}
    content = msg.get("content")
    if isinstance(content, list):  # OpenAI content parts
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    parts = [(content if isinstance(content, str) else "").strip()]
    calls = _tool_calls(msg)
    if calls:
        parts.append(" ; ".join(_render_call(c) for c in calls))
    return "\n".join(p for p in parts if p)


def _plan_chat(reference_msg: Message, candidate_msg: Message | None, *, judge: bool) -> ScorePlan:
    method = LLM_JUDGE if judge else EMBEDDING_COSINE
    ref, cand = message_text(reference_msg), message_text(candidate_msg)
    if not cand:
        # Saying nothing is not an answer (unless the reference says nothing too): no grader needed.
        reason = "both answers are empty" if not ref else "candidate answer is empty"
        return ScorePlan(method, [(1.0, float(not ref))], {"reason": reason})
    if not ref:
        return ScorePlan(method, [(1.0, 0.0)], {"reason": "reference answer is empty"})
    return ScorePlan(method, [(1.0, FreeText(ref, cand))], {})


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
    plans = [_plan_chat({"content": r}, {"content": c}, judge=False)
             for r, c in zip(reference_texts, candidate_texts)]
    return resolve_with_embeddings(plans, embedder)


def embedding_grades(texts: Sequence[FreeText], embedder: Embedder) -> list[tuple[float, float]]:
    """(grade in [0, 1], raw cosine) per comparison, all in one embed call."""
    if not texts:
        return []
    vectors = embedder.embed([t.reference.strip() for t in texts] + [t.candidate.strip() for t in texts])
    n = len(texts)
    out = []
    for ref_vec, cand_vec in zip(vectors[:n], vectors[n:]):
        cosine = float(np.dot(ref_vec, cand_vec))
        out.append((min(max(cosine, 0.0), 1.0), cosine))
    return out


def resolve_with_embeddings(plans: Sequence[ScorePlan], embedder: Embedder | None) -> list[ItemScore]:
    """Scores of deterministic plans: free text (chat answers) by embedding cosine, one embed call."""
    pending = [(plan, part) for plan in plans for part in plan.free_text]
    if pending and embedder is None:
        raise ValueError("scoring chat answers by embedding cosine needs an embedder")
    grades = embedding_grades([part for _, part in pending], embedder) if pending else []
    graded = {id(part): grade for (_, part), (grade, _) in zip(pending, grades)}
    cosines = {id(plan): cosine for (plan, _), (_, cosine) in zip(pending, grades)}
    scores = []
    for plan in plans:
        if id(plan) in cosines:
            plan.detail = {**plan.detail, "cosine": cosines[id(plan)], "embedder": embedder.name}
        scores.append(plan.resolve(graded))
    return scores


# --- dispatch -----------------------------------------------------------------------------------

_PLANNERS = {"tool_calling": _plan_tool_calls, "json_extraction": _plan_json, "chat": _plan_chat}


def plan_scores(kind: str, pairs: Sequence[tuple[Message, Message | None]], *, judge: bool) -> list[ScorePlan]:
    """One plan per (reference, candidate) pair, all with the experiment's one method."""
    method_for(kind, judge=judge)  # validates the kind
    return [_PLANNERS[kind](ref, cand, judge=judge) for ref, cand in pairs]


def score_items(
    kind: str, pairs: Sequence[tuple[Message, Message | None]], embedder: Embedder | None
) -> list[ItemScore]:
    """Deterministic scores of (reference, candidate) pairs; all chat text in one embed call."""
    return resolve_with_embeddings(plan_scores(kind, pairs, judge=False), embedder)
