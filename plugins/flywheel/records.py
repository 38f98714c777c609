"""Validation of untrusted log records: a record is either a ``LogRecord`` or a ``Rejection``
with a reason code, the field and a message that names the record, the field and the fix."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flywheel.prompts import workload_kind

WORKLOAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces
ROLES = {"system", "developer", "user", "assistant", "tool"}
DEFAULT_MAX_BYTES = 64 * 1024

# The closed set of reasons (documented in docs/architecture.md).
REASONS = (
    "invalid_json", "not_an_object", "missing_field", "invalid_timestamp", "invalid_workload_id",
    "invalid_client_id", "invalid_request", "invalid_messages", "invalid_response", "too_large",
)


@dataclass(frozen=True)
class LogRecord:
    source_id: str
    timestamp: datetime
    workload_id: str
    client_id: str
    request: dict[str, Any]
    response: dict[str, Any]

    @property
    def assistant_message(self) -> dict[str, Any]:
        return self.response["choices"][0]["message"]

    @property
    def kind(self) -> str:
        return workload_kind(self.request)


@dataclass(frozen=True)
class Rejection:
    source_id: str
    reason: str
    field: str
    detail: str


def valid_workload_id(value: Any) -> bool:
    return isinstance(value, str) and WORKLOAD_ID.match(value) is not None


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 string with a zone, else None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        return None
    return ts.astimezone(timezone.utc)


class _Invalid(Exception):
    def __init__(self, reason: str, field: str, fix: str) -> None:
        super().__init__(fix)
        self.reason, self.field, self.fix = reason, field, fix


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Invalid("invalid_messages", "request.messages", "must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _Invalid("invalid_messages", f"request.messages[{i}]", "must be an object with role and content")
        if m.get("role") not in ROLES:
            raise _Invalid("invalid_messages", f"request.messages[{i}].role", f"must be one of {sorted(ROLES)}")
        content = m.get("content")
        if not (content is None or isinstance(content, (str, list))):
            raise _Invalid("invalid_messages", f"request.messages[{i}].content", "must be a string, a list of parts or null")


def _check_tool_calls(calls: Any, field: str) -> None:
    if not isinstance(calls, list):
        raise _Invalid("invalid_response", field, "tool_calls must be a list")
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _Invalid("invalid_response", f"{field}[{i}].function.name", "each tool call needs a function name")
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = None
        if not isinstance(args, dict):
            raise _Invalid("invalid_response", f"{field}[{i}].function.arguments",
                           "arguments must be a JSON object encoded as a string")


def _check_response(response: Any) -> None:
    if not isinstance(response, dict):
        raise _Invalid("invalid_response", "response", "must be a chat.completion object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Invalid("invalid_response", "response.choices", "must be a non-empty list (log the whole completion)")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _Invalid("invalid_response", "response.choices[0].message", "must be the assistant message object")
    calls, content = message.get("tool_calls"), message.get("content")
    if calls:
        _check_tool_calls(calls, "response.choices[0].message.tool_calls")
    elif not isinstance(content, str) or not content.strip():
        raise _Invalid("invalid_response", "response.choices[0].message.content",
                       "the answer has neither content nor tool calls")


def parse_obj(source_id: str, obj: Any) -> LogRecord | Rejection:
    def reject(reason: str, field: str, fix: str) -> Rejection:
        where = f" field '{field}'" if field else ""
        return Rejection(source_id, reason, field, f"record {source_id}{where}: {fix}")

    if not isinstance(obj, dict):
        return reject("not_an_object", "", "a log record must be a JSON object")
    for name in ("timestamp", "workload_id", "client_id", "request", "response"):
        if name not in obj or obj[name] is None:
            return reject("missing_field", name, f"'{name}' is required; add it in the logging client")
    ts = parse_timestamp(obj["timestamp"])
    if ts is None:
        return reject("invalid_timestamp", "timestamp", "use ISO-8601 with a time zone, e.g. 2026-11-24T10:00:00Z")
    if not valid_workload_id(obj["workload_id"]):
        return reject("invalid_workload_id", "workload_id",
                      "use 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit")
    if not isinstance(obj["client_id"], str) or not CLIENT_ID.match(obj["client_id"]):
        return reject("invalid_client_id", "client_id", "use 1-128 printable ASCII characters without spaces")
    request = obj["request"]
    if not isinstance(request, dict):
        return reject("invalid_request", "request", "must be the chat.completions request object")
    try:
        _check_messages(request.get("messages"))
        tools = request.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise _Invalid("invalid_request", "request.tools", "must be a list of tool definitions")
        _check_response(obj["response"])
    except _Invalid as exc:
        return reject(exc.reason, exc.field, exc.fix)
    return LogRecord(source_id, ts, obj["workload_id"], obj["client_id"], request, obj["response"])


def parse_line(source_id: str, line: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LogRecord | Rejection:
    size = len(line.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return Rejection(source_id, "too_large", "",
                         f"record {source_id}: {size} bytes is over the {max_bytes}-byte limit (curation.max_record_bytes)")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return Rejection(source_id, "invalid_json", "", f"record {source_id}: not valid JSON; log one JSON object per line")
    return parse_obj(source_id, obj)


def class_label(record: LogRecord) -> str:
    """The class used to stratify splits: the tool called, or the kind of answer."""
    kind = record.kind
    if kind == "tool_calling":
        calls = record.assistant_message.get("tool_calls") or []
        return calls[0]["function"]["name"] if calls else "no_call"
    return "json" if kind == "json_extraction" else "text"
