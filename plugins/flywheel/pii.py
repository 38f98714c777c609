"""PII redaction with patterns: emails, phone numbers, payment card numbers (Luhn-checked).

A Presidio-backed redactor can replace ``redact_text`` later; callers only rely on
``(text, Counter of what was replaced)``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from typing import Any

from flywheel.records import LogRecord

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# International (+CC ...) or North-American ((415) 555-0132, 415-555-0132) shapes; digits only in
# groups separated by space, dot or dash, so order numbers (A-100234) and dates do not match.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{2,4}){1,4}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\b\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
)
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


def _luhn(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return total % 10 == 0


def redact_text(text: str) -> tuple[str, Counter]:
    counts: Counter = Counter()
    if not text:
        return text, counts

    def sub(pattern, label, check=None):
        nonlocal text

        def repl(m: re.Match) -> str:
            if check and not check(m.group(0)):
                return m.group(0)
            counts[label.strip("<>").lower()] += 1
            return label

        text = pattern.sub(repl, text)

    sub(EMAIL, "<EMAIL>")
    sub(CARD, "<CARD>", _luhn)  # before phones: a card number must not become three phone numbers
    sub(PHONE, "<PHONE>")
    return text, counts


def _redact_value(value: Any, counts: Counter) -> Any:
    if isinstance(value, str):
        new, c = redact_text(value)
        counts.update(c)
        return new
    if isinstance(value, list):
        return [_redact_value(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, counts) for k, v in value.items()}
    return value


def _redact_message(message: dict, counts: Counter) -> dict:
    out = dict(message)
    if "content" in out:
        out["content"] = _redact_value(out["content"], counts)
    if out.get("tool_calls"):
        calls = []
        for call in out["tool_calls"]:
            fn = dict(call.get("function") or {})
            try:
                args = json.loads(fn.get("arguments") or "{}")
                fn["arguments"] = json.dumps(_redact_value(args, counts), ensure_ascii=False)
            except ValueError:
                fn["arguments"] = _redact_value(fn.get("arguments"), counts)
            calls.append({**call, "function": fn})
        out["tool_calls"] = calls
    return out


def redact_record(record: LogRecord) -> tuple[LogRecord, Counter]:
    """Every message of the request and the answer, tool-call arguments included."""
    counts: Counter = Counter()
    request = dict(record.request)
    request["messages"] = [_redact_message(m, counts) for m in record.request.get("messages") or []]
    response = json.loads(json.dumps(record.response))
    response["choices"][0]["message"] = _redact_message(record.response["choices"][0]["message"], counts)
    return replace(record, request=request, response=response), counts
