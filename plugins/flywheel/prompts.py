"""The one text format between OpenAI-shaped records and a small causal LM.

A prompt is one line per part, ending with the cue ``<assistant>``; the completion follows after a
single space:

    <tools> get_order_status cancel_order
    <system> Route the customer message: call one tool.
    <user> where is my order A-100234?
    <assistant> call get_order_status {"order_id": "A-100234"}

Tool calls render as ``call NAME {JSON args, keys sorted}`` joined by `` ; ``, JSON answers as
one-line JSON with sorted keys, everything else as the text with newlines folded.

The role markers are special tokens of the student's tokenizer, so a marker inside logged text
(a user typing ``<assistant>``) would forge a turn: text is rendered with the markers defused
(``<user>`` -> ``(user)``). A rendered completion therefore never contains a marker, which lets
``parse_completion`` cut a model's output where it starts writing the next turn. It turns any
model output, garbage included, back into an assistant message and never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROLE_MARKERS = ("<system>", "<tools>", "<user>", "<assistant>")
CALL_SEPARATOR = " ; "

_WHITESPACE = re.compile(r"\s+")
_MARKER = re.compile("|".join(re.escape(m) for m in ROLE_MARKERS))
_CALL_HEAD = re.compile(r"call\s+([A-Za-z_][A-Za-z0-9_.-]*)\s*")
_NEXT_CALL = re.compile(r"\s*;\s*(?=call\s)")


def _defuse(match: re.Match) -> str:
    return "(" + match.group(0)[1:-1] + ")"


def _text(content: Any) -> str:
    """One line of safe text from message content (a string, a list of parts, or None)."""
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    folded = _WHITESPACE.sub(" ", str(content or "")).strip()
    return _MARKER.sub(_defuse, folded)


def workload_kind(request: dict[str, Any]) -> str:
    """``tool_calling`` (the request offers tools), ``json_extraction`` (asks for JSON) or ``chat``."""
    if request.get("tools"):
        return "tool_calling"
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return "json_extraction"
    return "chat"


def tool_names(request: dict[str, Any]) -> list[str]:
    """The names of the tools a request offers, in order; malformed entries are skipped."""
    names = []
    for tool in request.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(_text(fn["name"]))
    return names


def _render_call(call: Any) -> str:
    fn = call.get("function") if isinstance(call, dict) else None
    fn = fn if isinstance(fn, dict) else {}
    raw = fn.get("arguments")
    if isinstance(raw, str) and raw.strip():
        try:
            body = json.dumps(json.loads(raw), sort_keys=True, ensure_ascii=False)
        except (ValueError, RecursionError):
            body = raw  # invalid JSON is shown as logged: the model should not learn a repaired version
    else:
        body = json.dumps(raw or {}, sort_keys=True, ensure_ascii=False, default=str)
    return _text(f"call {fn.get('name', '')} {body}")


def render_completion(message: dict[str, Any]) -> str:
    """What the model should produce for a production assistant message."""
    calls = message.get("tool_calls") or []
    if calls:
        return CALL_SEPARATOR.join(_render_call(c) for c in calls)
    content = message.get("content")
    if isinstance(content, str):
        try:
            # One canonical spelling per answer, so the model never has to learn key order or spacing.
            parsed = json.loads(content)
            if isinstance(parsed, (dict, list)):
                return _text(json.dumps(parsed, sort_keys=True, ensure_ascii=False))
        except (ValueError, RecursionError):
            pass
    return _text(content)


def _render_message(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    if role == "assistant":
        return f"<assistant> {render_completion(message)}"
    if role == "tool":
        return f"<user> [tool result] {_text(message.get('content'))}"
    if role in ("system", "developer"):
        return f"<system> {_text(message.get('content'))}"
    return f"<user> {_text(message.get('content'))}"


def render_prompt(request: dict[str, Any]) -> str:
    """The request as prompt lines: tool names, the conversation, and the final ``<assistant>`` cue."""
    lines = []
    names = tool_names(request)
    if names:
        lines.append("<tools> " + " ".join(names))
    messages = request.get("messages")
    for message in messages if isinstance(messages, list) else []:
        line = _render_message(message)
        if line is not None:
            lines.append(line)
    lines.append("<assistant>")
    return "\n".join(lines)


def _parse_calls(text: str) -> list[dict[str, Any]]:
    """``call NAME {args} ; call NAME {args} ...`` from the start of ``text``; stops at the first
    thing that is not a call. The JSON is read with the decoder, so a `` ; `` inside an argument
    value does not split a call, and anything the model wrote after the object is ignored."""
    decoder = json.JSONDecoder()
    calls: list[dict[str, Any]] = []
    pos = 0
    while True:
        head = _CALL_HEAD.match(text, pos)
        if head is None:
            return calls
        pos = head.end()
        try:
            args, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            args, end = None, pos
        if isinstance(args, dict):
            arguments = json.dumps(args, sort_keys=True, ensure_ascii=False)
        else:
            # Not a JSON object: keep what the model wrote up to the next call, as OpenAI does with
            # invalid arguments; the scorer counts them as malformed instead of guessing.
            nxt = _NEXT_CALL.search(text, pos)
            end = nxt.start() if nxt else len(text)
            arguments = text[pos:end].strip() or "{}"
        calls.append({"id": f"call_{len(calls)}", "type": "function",
                      "function": {"name": head.group(1), "arguments": arguments}})
        sep = _NEXT_CALL.match(text, end)
        if sep is None:
            return calls
        pos = sep.end()


def parse_completion(text: Any) -> dict[str, Any]:
    """An assistant message from raw model output; never raises.

    Output from a role marker on is the model writing the next turn, and is dropped.
    """
    text = text if isinstance(text, str) else ""
    marker = _MARKER.search(text)
    if marker:
        text = text[: marker.start()]
    text = text.strip()
    if text.startswith("call"):
        calls = _parse_calls(text)
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}
    return {"role": "assistant", "content": text}
