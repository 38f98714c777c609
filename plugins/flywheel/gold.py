"""Gold items: human-corrected reference answers for eval items.

Production answers are not the truth. A reviewer who sees that production got an item wrong
records the right answer (during review, or in a JSONL file imported with ``flywheel gold
import``); evaluation then scores the candidate against the gold answer wherever one exists and
reports both scores (against production, against gold), so a candidate that is right where
production was wrong is no longer punished for it.

An item is identified by its request: the SHA-256 of the request's canonical JSON (as curated,
i.e. after PII redaction, which is what ``flywheel gold export`` writes), and, where known, by the
log record id the eval item came from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, field_validator

from flywheel.records import valid_workload_id

SOURCES = ("import", "review")


class GoldError(ValueError):
    """A gold item that cannot be used; the message names the line, the field and the fix."""


def request_hash(request: Any) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class GoldReference(BaseModel):
    workload_id: str
    request_hash: str
    item_id: str | None = None
    reference: dict[str, Any]  # an OpenAI assistant message
    author: str
    source: str = "import"
    note: str = ""

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        return v


def as_message(reference: Any) -> dict[str, Any]:
    """A gold answer as an assistant message: a message object as given, or plain text content."""
    if isinstance(reference, str):
        return {"role": "assistant", "content": reference}
    if isinstance(reference, dict) and ("content" in reference or "tool_calls" in reference):
        calls = reference.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise GoldError("reference.tool_calls must be a list of tool calls")
        content = reference.get("content")
        if content is not None and not isinstance(content, str):
            raise GoldError("reference.content must be text")
        return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    raise GoldError("reference must be the corrected answer: text, or an assistant message "
                    '{"content": ...} / {"tool_calls": [...]}')


def parse_gold_line(line: str, *, line_no: int, author: str, source: str = "import") -> GoldReference:
    """One line of a gold file: {"workload_id", "request" (or "request_hash"), "reference", ["item_id", "note"]}."""
    where = f"line {line_no}"
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise GoldError(f"{where}: not valid JSON ({exc.__class__.__name__}); one JSON object per line") from None
    if not isinstance(obj, dict):
        raise GoldError(f"{where}: expected a JSON object")
    workload_id = obj.get("workload_id")
    if not valid_workload_id(workload_id):
        raise GoldError(f"{where}: workload_id is missing or not a valid workload id")
    if "request" in obj:
        if not isinstance(obj["request"], dict):
            raise GoldError(f"{where}: request must be the logged request object")
        h = request_hash(obj["request"])
    elif isinstance(obj.get("request_hash"), str) and len(obj["request_hash"]) == 64:
        h = obj["request_hash"]
    else:
        raise GoldError(f"{where}: give the item's request (as `flywheel gold export` writes it) or its request_hash")
    if "reference" not in obj:
        raise GoldError(f"{where}: reference (the corrected answer) is missing")
    try:
        message = as_message(obj["reference"])
    except GoldError as exc:
        raise GoldError(f"{where}: {exc}") from None
    item_id = obj.get("item_id")
    return GoldReference(workload_id=workload_id, request_hash=h, item_id=str(item_id) if item_id else None,
                         reference=message, author=author, source=source, note=str(obj.get("note") or "")[:2000])


class GoldIndex:
    """The gold references of one workload, found by eval item id or request hash."""

    def __init__(self, references: list[GoldReference] | list[dict[str, Any]] = ()) -> None:
        self.by_item: dict[str, dict] = {}
        self.by_hash: dict[str, dict] = {}
        for ref in references:
            ref = ref if isinstance(ref, GoldReference) else GoldReference(**ref)
            self.by_hash[ref.request_hash] = ref.reference
            if ref.item_id:
                self.by_item[ref.item_id] = ref.reference

    def __len__(self) -> int:
        return len(self.by_hash)

    def find(self, item_id: str, request: Any) -> dict[str, Any] | None:
        return self.by_item.get(str(item_id)) or self.by_hash.get(request_hash(request))
