"""Validation of untrusted log records.

A raw line becomes either a :class:`LogRecord` or a :class:`Rejection` with a reason code from the
closed set :data:`REASONS`, the field at fault, and a message that names the record, the field and
the fix. Values that end up in file paths, Kubernetes labels and SQL (the workload id) are
rejected when they do not match the allowed pattern, never "sanitised" into something else.

Real log stores write records in more than one shape, and all of these are accepted: timestamps as
ISO-8601 with a zone, or as integer/float epoch seconds or milliseconds (the NVIDIA blueprint's
Elasticsearch documents use integer epoch seconds), as numbers or numeric strings; ``request`` and
``response`` as objects or as JSON strings. Lines arrive as bytes: invalid UTF-8 and NUL are
rejected with their own reasons (never replaced), and only ``\n`` ends a line (see
:func:`iter_jsonl_lines`), so U+2028, U+2029, U+0085 or a bare CR inside a record never split it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from flywheel.prompts import workload_kind

# Always used with fullmatch: "$" alone would let a trailing newline through ("tool_router\n").
WORKLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule for function names, plus '.' 
ROLES = ("system", "developer", "user", "assistant", "tool")
REQUIRED_FIELDS = ("timestamp", "workload_id", "client_id", "request", "response")
# Records from before 1970 or after 2100 are clock bugs or unit mix-ups (microseconds read as
# seconds), never real traffic.
MIN_TIMESTAMP = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TIMESTAMP = datetime(2100, 1, 1, tzinfo=timezone.utc)
# An epoch number at or above this is milliseconds: as seconds it would be after the year 5138,
# as milliseconds it is after March 1973. Below it, it is seconds.
EPOCH_MS_THRESHOLD = 100_000_000_000
DEFAULT_MAX_BYTES = 64 * 1024
# Real records nest about 10 levels deep (a tool's JSON schema a few more). Deeper is hostile or
# broken, and would exhaust the recursion limit of whatever walks the record later.
MAX_DEPTH = 64

# The closed set of rejection reasons; nothing else is ever written to the quarantine table.
REASONS: dict[str, str] = {
    "invalid_json": "the line is not one JSON document (truncated write, NaN, invalid Unicode)",
    "invalid_utf8": "the line is not valid UTF-8 (a binary file, or text in another encoding)",
    "nul_character": "the line holds a NUL byte, or a string holds U+0000",
    "not_an_object": "the JSON document is not an object",
    "missing_field": "a required top-level field is absent or null",
    "invalid_timestamp": "timestamp is neither an ISO-8601 date-time with a time zone nor epoch seconds/milliseconds",
    "timestamp_out_of_range": "timestamp is before 1970 or after 2100",
    "invalid_workload_id": "workload_id does not match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ (no '/', '..', spaces, quotes)",
    "invalid_client_id": "client_id is not 1-128 printable ASCII characters without spaces",
    "invalid_request": "request is not a chat.completions request object or JSON string (or its tools are malformed)",
    "invalid_messages": "request.messages is not a non-empty list of {role, content} messages",
    "invalid_response": "response is not a chat.completion object or JSON string with an assistant message "
                        "that has content or well-formed tool calls",
    "too_large": "the record is over the size limit (curation.max_record_bytes) or nested too deep",
    "changed_during_run": "the record changed or disappeared between curation's scan and its fetch",
}


@dataclass(frozen=True)
class LogRecord:
    source_id: str
    timestamp: datetime
    workload_id: str
    client_id: str
    request: dict[str, Any]
    response: dict[str, Any]
    # Other top-level fields the client logged (e.g. a label to stratify by); kept, and redacted
    # like everything else.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def assistant_message(self) -> dict[str, Any]:
        return self.response["choices"][0]["message"]

    @property
    def kind(self) -> str:
        return workload_kind(self.request)

    def to_dict(self) -> dict[str, Any]:
        """The record in the one stored shape: ISO-8601 UTC timestamp, request/response objects."""
        return {**self.extra, "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
                "workload_id": self.workload_id, "client_id": self.client_id,
                "request": self.request, "response": self.response}


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
    return isinstance(value, str) and WORKLOAD_ID.fullmatch(value) is not None and ".." not in value


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


def _scan(value: Any) -> tuple[int, str | None]:
    """(nesting depth, problem) of a decoded JSON value in one iterative walk; the problem is a
    reason code when a string (or key) holds U+0000 or an unpaired surrogate (not writable as UTF-8)."""
    deepest, problem, stack = 0, None, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return deepest, "nul_character"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    problem = problem or "invalid_json"
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            for key, child in item.items():
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest, problem


def _epoch_seconds(value: Any) -> float | None:
    """Epoch seconds from a number or numeric string in seconds or milliseconds, else None."""
    if isinstance(value, bool):  # True is an int to Python, never a time
        return None
    if isinstance(value, str) and _EPOCH_TEXT.fullmatch(value.strip()):
        value = float(value.strip())
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value / 1000.0 if abs(value) >= EPOCH_MS_THRESHOLD else float(value)


_EPOCH_TEXT = re.compile(r"-?\d{1,19}(?:\.\d{1,9})?")
_MIN_EPOCH, _MAX_EPOCH = MIN_TIMESTAMP.timestamp(), MAX_TIMESTAMP.timestamp()


def parse_timestamp_any(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 string with a zone, or from epoch seconds or
    milliseconds (int, float or a numeric string) within 1970-2100; None otherwise."""
    seconds = _epoch_seconds(value)
    if seconds is not None:
        if not _MIN_EPOCH <= seconds < _MAX_EPOCH:
            return None
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        return None
    try:
        return ts.astimezone(timezone.utc)
    except OverflowError:  # year 1 or 9999 shifted past the calendar's end
        return None


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime in [1970, 2100) from any accepted spelling, else None."""
    ts = parse_timestamp_any(value)
    return ts if ts is not None and MIN_TIMESTAMP <= ts < MAX_TIMESTAMP else None


def check_timestamp(value: Any) -> tuple[datetime | None, tuple[str, str] | None]:
    """(timestamp, None) or (None, (reason, fix))."""
    seconds = _epoch_seconds(value)
    out_of_range = seconds is not None and not _MIN_EPOCH <= seconds < _MAX_EPOCH
    ts = None if out_of_range else parse_timestamp_any(value)
    if ts is not None and not MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
        out_of_range = True
    if out_of_range:
        return None, ("timestamp_out_of_range",
                      f"{value!r} is outside 1970-2100; check the clock and the unit (epoch seconds or "
                      "milliseconds, not micro- or nanoseconds)")
    if ts is None:
        return None, ("invalid_timestamp",
                      "use an ISO-8601 date-time with a time zone (2026-11-24T10:00:00Z) or epoch seconds or "
                      "milliseconds as a number (1764000000, 1764000000000)")
    return ts, None


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


# NaN and Infinity are Python extensions of JSON: PostgreSQL and other readers refuse them. One
# decoder for every call: ``json.loads`` with any keyword builds a new JSONDecoder each time, which
# cost more than decoding a tool call's arguments (profiled in curation's scan, ~20 us a call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(line: str) -> Any:
    return _DECODER.decode(line)


def _decoded(value: Any, name: str, reason: str) -> Any:
    """``request``/``response`` logged as a JSON string (some log shippers stringify nested
    objects) is decoded; anything else is returned as it is and checked by the caller."""
    if not isinstance(value, str):
        return value
    try:
        decoded = _loads(value)
    except (ValueError, RecursionError):
        raise _Invalid(reason, name, f"'{name}' is a string that is not valid JSON; log the object itself") from None
    if not isinstance(decoded, dict):
        raise _Invalid(reason, name, f"'{name}' must be a JSON object (or a string holding one)")
    return decoded


def parse_obj(source_id: str, obj: Any, *, scanned: bool = False) -> LogRecord | Rejection:
    """Validate one decoded record. ``scanned``: the caller has already ruled out NUL, lone
    surrogates and deep nesting (see :func:`decode_line`), so the walk over every string is skipped."""
    if not isinstance(obj, dict):
        return _rejection(source_id, "not_an_object", "", "a log record must be a JSON object")
    depth, problem = (1, None) if scanned else _scan(obj)
    if problem == "nul_character":
        return _rejection(source_id, "nul_character", "", "a string holds U+0000 (NUL); log text without NUL")
    if depth > MAX_DEPTH:
        return _rejection(source_id, "too_large", "", f"the record nests more than {MAX_DEPTH} levels deep; "
                          "log the chat.completions objects as they are")
    if problem == "invalid_json":
        return _rejection(source_id, "invalid_json", "", "a string holds an unpaired UTF-16 surrogate; log valid Unicode")
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            return _rejection(source_id, "missing_field", name, f"'{name}' is required; add it in the logging client")
    timestamp, bad_time = check_timestamp(obj["timestamp"])
    if bad_time is not None:
        return _rejection(source_id, bad_time[0], "timestamp", bad_time[1])
    if not valid_workload_id(obj["workload_id"]):
        return _rejection(source_id, "invalid_workload_id", "workload_id",
                          "use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit "
                          "(no '/', '..', spaces or quotes)")
    if not isinstance(obj["client_id"], str) or not CLIENT_ID.fullmatch(obj["client_id"]):
        return _rejection(source_id, "invalid_client_id", "client_id",
                          "use 1-128 printable ASCII characters without spaces")
    try:
        request = _decoded(obj["request"], "request", "invalid_request")
        response = _decoded(obj["response"], "response", "invalid_response")
        _check_request(request)
        _check_response(response)
        if request is not obj["request"] or response is not obj["response"]:
            # Decoded from strings: the scan above saw only the strings.
            depth, problem = _scan([request, response])
            if problem or depth > MAX_DEPTH:
                raise _Invalid("nul_character" if problem == "nul_character" else
                               "too_large" if depth > MAX_DEPTH else "invalid_json", "",
                               "the request/response string holds NUL, invalid Unicode or nests too deep")
    except _Invalid as exc:
        return _rejection(source_id, exc.reason, exc.field, exc.fix)
    extra = {k: v for k, v in obj.items() if k not in REQUIRED_FIELDS}
    return LogRecord(source_id, timestamp, obj["workload_id"], obj["client_id"], request, response, extra)


def decode_line(source_id: str, line: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The decoded JSON document of one raw line, or a :class:`Rejection` (size, NUL, UTF-8, JSON)."""
    raw = line if isinstance(line, bytes) else None
    size = len(raw) if raw is not None else len(line.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        return _rejection(source_id, "too_large", "",
                          f"{size} bytes is over the {max_bytes}-byte limit; log attachments by reference, "
                          "or raise curation.max_record_bytes")
    if raw is not None:
        if b"\x00" in raw:
            at = raw.index(b"\x00")
            return _rejection(source_id, "nul_character", "", f"byte {at} is NUL; "
                              "the file is binary or corrupt, export the records as UTF-8 JSON lines")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _rejection(source_id, "invalid_utf8", "",
                              f"byte {exc.start} (0x{raw[exc.start]:02x}) is not valid UTF-8; "
                              "export the logs as UTF-8 (nothing was replaced or guessed)")
    elif "\x00" in line:
        return _rejection(source_id, "nul_character", "", "the line holds a NUL character; log UTF-8 JSON text")
    try:
        return _loads(line)
    except (ValueError, RecursionError):
        return _rejection(source_id, "invalid_json", "", "not valid JSON; log exactly one complete JSON object per line")


# In JSON text, NUL and lone surrogates can only come from \\u escapes, and a document cannot nest
# deeper than it has brackets: a line with none of these escapes and few brackets needs no walk.
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _needs_scan(line: bytes | str) -> bool:
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return bool(_RISKY_ESCAPE.search(line)) or line.count("[") + line.count("{") > MAX_DEPTH


def parse_line(source_id: str, line: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LogRecord | Rejection:
    """Validate one raw JSONL line (bytes as read, or text); the size cap is checked before
    anything is parsed."""
    obj = decode_line(source_id, line, max_bytes=max_bytes)
    if isinstance(obj, Rejection):
        return obj
    return parse_obj(source_id, obj, scanned=not _needs_scan(line))


# ---------------------------------------------------------------- JSONL, byte-exact

@dataclass(frozen=True)
class RawLine:
    """One line of a JSONL stream: its 1-based number and its bytes without the line end; ``oversize``
    is set (and ``data`` truncated) when the line was longer than the reader's limit."""

    number: int
    data: bytes
    oversize: int = 0

    @property
    def blank(self) -> bool:
        return not self.oversize and not self.data.strip()


def iter_jsonl_lines(fh: IO[bytes], *, max_bytes: int | None = None, chunk: int = 1 << 20) -> Iterator[RawLine]:
    """Split a binary stream into lines on b"\\n" only.

    U+2028, U+2029, U+0085 and a bare CR are characters inside a record, never line ends (Python's
    ``str.splitlines`` splits on all of them, and on more: never use it for JSONL). A CRLF line end
    loses its CR. A UTF-8 byte-order mark at the start is dropped. A line longer than ``max_bytes``
    is not held in memory: the first ``max_bytes + 1`` bytes are kept and the length is reported
    in ``oversize``.
    """
    number = 0
    limit = None if max_bytes is None else max_bytes + 1
    while True:
        data = fh.readline(limit) if limit is not None else fh.readline()
        if not data:
            return
        number += 1
        size = len(data)
        if limit is not None and size >= limit and not data.endswith(b"\n"):
            # Too long: skip to the end of this line, counting, without keeping it.
            while True:
                rest = fh.readline(chunk)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield RawLine(number, data, oversize=size - (1 if rest.endswith(b"\n") else 0))
            continue
        if data.endswith(b"\n"):
            data = data[:-1]
            if data.endswith(b"\r"):
                data = data[:-1]
        if number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        yield RawLine(number, data)


def split_jsonl(data: bytes | str) -> list[str]:
    """The non-blank lines of a JSONL document held in memory, split on "\\n" only (see
    :func:`iter_jsonl_lines`)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def read_jsonl_text(data: bytes | str) -> list[Any]:
    """Every row of a JSONL document written by this project (trusted: an error raises)."""
    return [json.loads(line) for line in split_jsonl(data)]


def dumps_jsonl(rows: Iterable[Any]) -> str:
    """JSONL text: one compact JSON document per row, non-ASCII kept as UTF-8 except the line
    separators that other tools split on (U+2028, U+2029, U+0085), which are escaped."""
    return "".join(_escape_separators(json.dumps(r, sort_keys=True, ensure_ascii=False)) + "\n" for r in rows)


_SEPARATORS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def _escape_separators(text: str) -> str:
    return text.translate(_SEPARATORS)


MISSING_LABEL = "unlabelled"


def lookup(record: LogRecord, path: str) -> Any:
    """The value at a dotted path of the record (``request.metadata.intent``, ``labels.task``,
    ``client_id``; list items by index), or None."""
    value: Any = record.to_dict()
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def class_label(record: LogRecord, key: str | None = None) -> str:
    """The class used to stratify splits (and the slice evaluation reports by).

    Default: the tool called first for tool calling (``no_call`` when the answer calls none), else
    the kind of answer (``json``/``text``). With ``key`` (``curation.stratify_key``), the value at
    that dotted path of the record, e.g. a label the client logs; a missing value is ``unlabelled``.
    """
    if key:
        value = lookup(record, key)
        if value is None or isinstance(value, (dict, list)):
            return MISSING_LABEL
        text = " ".join(str(value).split())[:64]
        return text or MISSING_LABEL
    kind = record.kind
    if kind == "tool_calling":
        calls = record.assistant_message.get("tool_calls") or []
        return calls[0]["function"]["name"] if calls else "no_call"
    return "json" if kind == "json_extraction" else "text"
