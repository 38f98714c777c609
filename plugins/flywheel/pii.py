"""PII redaction with patterns: emails, phone numbers, payment card numbers (Luhn-checked).

Everything that can hold user text is redacted: every message's content, the answer's content
and the string values inside tool-call arguments. A :class:`Redactor` is anything with
``redact_text(text) -> (text, Counter of entity -> count)``; :class:`PatternRedactor` is the
default, and a Presidio-backed redactor can be passed to :func:`redact_record` (and ``curate``)
without changing the callers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from flywheel.records import LogRecord

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")

# Phone shapes: international (+CC and groups, or +CC and 7-14 digits in one run) and
# North-American ((415) 555-0132, 415-555-0132, 415.555.0132, 415 555 0132). Digit groups must be
# separated by a single space, dot or dash, and the match may not touch a letter, digit or '-',
# so order numbers (A-100234), invoice numbers (INV-2026-12345), dates (2026-11-24) and amounts
# ($1,234.50) never match. The digit count is checked afterwards (7-15, as E.164 allows).
PHONE = re.compile(
    r"(?<![\w+-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]\d{1,5}){1,5}"  # +1 415-555-0132, +44 20 7946 0958, +1 (415) 555 0132
    r"|\+\d{7,15}"                                             # +4915112345678
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"                        # (415) 555-0132
    r"|\d{3}([.\- ])\d{3}\1\d{4}"                              # 415-555-0132, 415 555 0132 (one separator kind)
    r")(?![\w-])"
)
CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w-])")

LABELS = {"email": "<EMAIL>", "phone": "<PHONE>", "card": "<CARD>"}


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_valid(number: str) -> bool:
    """The payment-card checksum over the digits of ``number`` (13-19 of them)."""
    digits = [int(d) for d in _digits(number)]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _phone_length_ok(text: str) -> bool:
    return 7 <= len(_digits(text)) <= 15


class Redactor(Protocol):
    def redact_text(self, text: str) -> tuple[str, Counter]: ...


class PatternRedactor:
    """Regex redaction. Cards go before phones: a 16-digit card must not become two phone numbers."""

    rules: tuple[tuple[str, re.Pattern, Callable[[str], bool] | None], ...] = (
        ("email", EMAIL, None),
        ("card", CARD, luhn_valid),
        ("phone", PHONE, _phone_length_ok),
    )

    def redact_text(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        if not text:
            return text, counts
        for entity, pattern, accept in self.rules:
            def substitute(match: re.Match, entity=entity, accept=accept) -> str:
                if accept is not None and not accept(match.group(0)):
                    return match.group(0)
                counts[entity] += 1
                return LABELS[entity]

            text = pattern.sub(substitute, text)
        return text, counts


DEFAULT_REDACTOR = PatternRedactor()


def redact_text(text: str, redactor: Redactor | None = None) -> tuple[str, Counter]:
    """``text`` with PII replaced by ``<EMAIL>``, ``<PHONE>``, ``<CARD>``, and what was replaced."""
    return (redactor or DEFAULT_REDACTOR).redact_text(text)


def _redact_value(value: Any, redactor: Redactor, counts: Counter) -> Any:
    """Strings anywhere in a JSON value (content parts, argument objects); keys are left alone."""
    if isinstance(value, str):
        new, found = redactor.redact_text(value)
        counts.update(found)
        return new
    if isinstance(value, list):
        return [_redact_value(v, redactor, counts) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, redactor, counts) for k, v in value.items()}
    return value


def _redact_arguments(raw: Any, redactor: Redactor, counts: Counter) -> Any:
    try:
        args = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        return _redact_value(raw, redactor, counts)
    redacted = _redact_value(args, redactor, counts)
    # Re-serialize only when something changed, so clean arguments stay byte-identical.
    return raw if redacted == args else json.dumps(redacted, ensure_ascii=False)


def _redact_message(message: Any, redactor: Redactor, counts: Counter) -> Any:
    if not isinstance(message, dict):
        return message
    out = dict(message)
    if "content" in out:
        out["content"] = _redact_value(out["content"], redactor, counts)
    if isinstance(out.get("tool_calls"), list):
        calls = []
        for call in out["tool_calls"]:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                fn = dict(call["function"])
                fn["arguments"] = _redact_arguments(fn.get("arguments"), redactor, counts)
                call = {**call, "function": fn}
            calls.append(call)
        out["tool_calls"] = calls
    return out


def redact_record(record: LogRecord, redactor: Redactor | None = None) -> tuple[LogRecord, Counter]:
    """A copy of ``record`` with every message of the request and the answer redacted.

    The input record is not modified (its dicts may be shared with the caller).
    """
    redactor = redactor or DEFAULT_REDACTOR
    counts: Counter = Counter()
    request = {**record.request,
               "messages": [_redact_message(m, redactor, counts) for m in record.request.get("messages") or []]}
    choices = list(record.response["choices"])
    choices[0] = {**choices[0], "message": _redact_message(choices[0]["message"], redactor, counts)}
    response = {**record.response, "choices": choices}
    return replace(record, request=request, response=response), counts
