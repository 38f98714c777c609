"""Validation of untrusted log records.

A raw line becomes either a :class:`LogRecord` or a :class:`Rejection` with a reason code from the
closed set :data:`REASONS`, the field at fault, and a message that names the record, the field and
the fix. Values that end up in file paths, Kubernetes labels and SQL (the workload id) are
rejected when they do not match the allowed pattern, never "sanitised" into something else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flywheel.prompts import workload_kind

# Always used with fullmatch: "$" alone would let a trailing newline through ("tool_router\n").
WORKLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule for function names, plus '.' 
ROLES = ("system", "developer", "user", "assistant", "tool")
REQUIRED_FIELDS = ("timestamp", "workload_id", "client_id", "request", "response")
DEFAULT_MAX_BYTES = 64 * 1024
# Real records nest about 10 levels deep (a tool's JSON schema a few more). Deeper is hostile or
# broken, and would exhaust the recursion limit of whatever walks the record later.
MAX_DEPTH = 64

# The closed set of rejection reasons; nothing else is ever written to the quarantine table.
REASONS: dict[str, str] = {
    "invalid_json": "the line is not one JSON document (truncated write, NaN, invalid Unicode)",
    "not_an_object": "the JSON document is not an object",
    "missing_field": "a required top-level field is absent or null",
    "invalid_timestamp": "timestamp is not an ISO-8601 date-time with a time zone",
    "invalid_workload_id": "workload_id does not match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    "invalid_client_id": "client_id is not 1-128 printable ASCII characters without spaces",
    "invalid_request": "request is not a chat.completions request (or its tools are malformed)",
    "invalid_messages": "request.messages is not a non-empty list of {role, content} messages",
    "invalid_response": "response has no assistant message with content or well-formed tool calls",
    "too_large": "the record is over the size limit (curation.max_record_bytes) or nested too deep",
}


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


class _Invalid(Exception):
    """Raised by the checks below; turned into a Rejection by ``parse_obj``."""

    def __init__(self, reason: str, field: str, fix: str) -> None:
        super().__init__(fix)
        self.reason, self.field, self.fix = reason, field, fix


def _rejection(source_id: str, reason: str, field: str, fix: str) -> Rejection:
    assert reason in REASONS, reason
    where = f" field '{field}'" if field else ""
    return Rejection(source_id, reason, field, f"record {source_id}{where}: {fix}")


def valid_workload_id(value: Any) -> bool:
    return isinstance(value, str) and WORKLOAD_ID.fullmatch(value) is not None


def nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a scalar); iterative, so it cannot
    itself run out of stack on hostile input."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


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


# ---------------------------------------------------------------- request

def _check_content(content: Any, field: str) -> None:
    if content is None or isinstance(content, str):
        return
    # OpenAI also allows a list of content parts ({"type": "text", "text": ...}).
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return
    raise _Invalid("invalid_messages", field, "content must be a string, a list of content parts or null")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Invalid("invalid_messages", "request.messages", "must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        field = f"request.messages[{i}]"
        if not isinstance(message, dict):
            raise _Invalid("invalid_messages", field, "must be an object with role and content")
        if message.get("role") not in ROLES:
            raise _Invalid("invalid_messages", f"{field}.role", f"must be one of {', '.join(ROLES)}")
        _check_content(message.get("content"), f"{field}.content")
        if message.get("tool_calls"):
            _check_tool_calls(message["tool_calls"], f"{field}.tool_calls", "invalid_messages")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _Invalid("invalid_request", "request.tools", "must be a list of tool definitions")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not TOOL_NAME.fullmatch(fn["name"]):
            raise _Invalid("invalid_request", f"request.tools[{i}].function.name",
                           "each tool needs a function name of 1-64 letters, digits, '_', '.', '-'")


def _check_request(request: Any) -> None:
    if not isinstance(request, dict):
        raise _Invalid("invalid_request", "request", "must be the chat.completions request object")
    _check_messages(request.get("messages"))
    _check_tools(request.get("tools"))


# ---------------------------------------------------------------- response

def _check_tool_calls(calls: Any, field: str, reason: str) -> None:
    if not isinstance(calls, list):
        raise _Invalid(reason, field, "tool_calls must be a list")
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not TOOL_NAME.fullmatch(fn["name"]):
            raise _Invalid(reason, f"{field}[{i}].function.name",
                           "each tool call needs a function name of 1-64 letters, digits, '_', '.', '-'")
        raw = fn.get("arguments")
        try:
            args = _loads(raw) if isinstance(raw, str) else None
        except (ValueError, RecursionError):
            args = None
        if not isinstance(args, dict) or nesting_depth(args) > MAX_DEPTH:
            raise _Invalid(reason, f"{field}[{i}].function.arguments",
                           "arguments must be a JSON object encoded as a string, e.g. \"{\\\"order_id\\\": \\\"A-1\\\"}\"")


def _check_response(response: Any) -> None:
    if not isinstance(response, dict):
        raise _Invalid("invalid_response", "response", "must be the chat.completion object the API returned")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Invalid("invalid_response", "response.choices", "must be a non-empty list; log the whole completion")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _Invalid("invalid_response", "response.choices[0].message", "must be the assistant message object")
    calls, content = message.get("tool_calls"), message.get("content")
    if calls:
        _check_tool_calls(calls, "response.choices[0].message.tool_calls", "invalid_response")
    elif not isinstance(content, str) or not content.strip():
        raise _Invalid("invalid_response", "response.choices[0].message.content",
                       "the answer has neither text content nor tool calls; log the final, non-streamed message")


# ---------------------------------------------------------------- records

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(line: str) -> Any:
    # NaN and Infinity are Python extensions of JSON: PostgreSQL and other readers refuse them.
    return json.loads(line, parse_constant=_reject_constant)


def _encodable(obj: Any) -> bool:
    """False when a string holds a lone surrogate ("\\ud800"): it cannot be written as UTF-8."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_obj(source_id: str, obj: Any) -> LogRecord | Rejection:
    """Validate one decoded record."""
    if not isinstance(obj, dict):
        return _rejection(source_id, "not_an_object", "", "a log record must be a JSON object")
    if nesting_depth(obj) > MAX_DEPTH:
        return _rejection(source_id, "too_large", "", f"the record nests more than {MAX_DEPTH} levels deep; "
                          "log the chat.completions objects as they are")
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            return _rejection(source_id, "missing_field", name, f"'{name}' is required; add it in the logging client")
    timestamp = parse_timestamp(obj["timestamp"])
    if timestamp is None:
        return _rejection(source_id, "invalid_timestamp", "timestamp",
                          "use an ISO-8601 date-time with a time zone, e.g. 2026-11-24T10:00:00Z")
    if not valid_workload_id(obj["workload_id"]):
        return _rejection(source_id, "invalid_workload_id", "workload_id",
                          "use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit "
                          "(no slashes, quotes or spaces)")
    if not isinstance(obj["client_id"], str) or not CLIENT_ID.fullmatch(obj["client_id"]):
        return _rejection(source_id, "invalid_client_id", "client_id",
                          "use 1-128 printable ASCII characters without spaces")
    try:
        _check_request(obj["request"])
        _check_response(obj["response"])
    except _Invalid as exc:
        return _rejection(source_id, exc.reason, exc.field, exc.fix)
    if not _encodable(obj):
        return _rejection(source_id, "invalid_json", "", "a string holds an unpaired UTF-16 surrogate; log valid Unicode")
    return LogRecord(source_id, timestamp, obj["workload_id"], obj["client_id"], obj["request"], obj["response"])


def parse_line(source_id: str, line: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LogRecord | Rejection:
    """Validate one raw JSONL line; the size cap is checked before anything is parsed."""
    size = len(line.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return _rejection(source_id, "too_large", "",
                          f"{size} bytes is over the {max_bytes}-byte limit; log attachments by reference, "
                          "or raise curation.max_record_bytes")
    try:
        obj = _loads(line)
    except (ValueError, RecursionError):
        return _rejection(source_id, "invalid_json", "", "not valid JSON; log exactly one complete JSON object per line")
    return parse_obj(source_id, obj)


def class_label(record: LogRecord) -> str:
    """The class used to stratify splits: the tool called first, or the kind of answer."""
    kind = record.kind
    if kind == "tool_calling":
        calls = record.assistant_message.get("tool_calls") or []
        return calls[0]["function"]["name"] if calls else "no_call"
    return "json" if kind == "json_extraction" else "text"
