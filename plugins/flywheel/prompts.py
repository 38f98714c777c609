"""The one text format between OpenAI-shaped records and a small causal LM.

A prompt is one line per part, ending with the cue ``<assistant>``; the completion follows after a
single space:

    <tools> get_order_status cancel_order
    <user> where is my order A-100234?
    <assistant> call get_order_status {"order_id": "A-100234"}

Tool calls render as ``call NAME {compact JSON, keys sorted}`` joined by `` ; ``, JSON answers
as compact JSON, everything else as the text with newlines folded. ``parse_completion`` turns
any model output — garbage included — back into an assistant message, and never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROLE_MARKERS = ("<system>", "<tools>", "<user>", "<assistant>")
CALL_SEPARATOR = " ; "
_WS = re.compile(r"\s+")
_CALL = re.compile(r"^call\s+([A-Za-z_][A-Za-z0-9_.-]*)\s*(.*)$", re.S)


def _fold(text: Any) -> str:
    return _WS.sub(" ", str(text or "")).strip()


def workload_kind(request: dict[str, Any]) -> str:
    """tool_calling (the request offers tools), json_extraction (asks for JSON) or chat."""
    if request.get("tools"):
        return "tool_calling"
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return "json_extraction"
    return "chat"


def tool_names(request: dict[str, Any]) -> list[str]:
    names = []
    for tool in request.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
    return names


def _render_call(call: dict[str, Any]) -> str:
    fn = call.get("function") or {}
    raw = fn.get("arguments")
    try:
        args = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except ValueError:
        args = raw
    body = json.dumps(args, sort_keys=True, ensure_ascii=False) if isinstance(args, dict) else _fold(args)
    return f"call {fn.get('name', '')} {body}"


def render_completion(message: dict[str, Any]) -> str:
    """What the model should produce for a production assistant message."""
    calls = message.get("tool_calls") or []
    if calls:
        return CALL_SEPARATOR.join(_render_call(c) for c in calls)
    content = message.get("content") or ""
    try:
        parsed = json.loads(content)
    except (ValueError, TypeError):
        return _fold(content)
    if isinstance(parsed, (dict, list)):
        return json.dumps(parsed, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    return _fold(content)


def render_prompt(request: dict[str, Any]) -> str:
    lines = []
    names = tool_names(request)
    if names:
        lines.append("<tools> " + " ".join(names))
    for msg in request.get("messages") or []:
        role = msg.get("role")
        if role == "assistant":
            text = render_completion(msg)
            lines.append(f"<assistant> {text}")
        elif role == "tool":
            lines.append(f"<user> [tool result] {_fold(msg.get('content'))}")
        elif role in ("system", "developer"):
            lines.append(f"<system> {_fold(msg.get('content'))}")
        else:
            lines.append(f"<user> {_fold(_content_text(msg.get('content')))}")
    lines.append("<assistant>")
    return "\n".join(lines)


def _content_text(content: Any) -> str:
    """OpenAI content may be a list of parts; keep the text parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _parse_call(text: str, index: int) -> dict[str, Any] | None:
    m = _CALL.match(text.strip())
    if not m:
        return None
    name, rest = m.group(1), m.group(2).strip()
    arguments = "{}"
    if rest:
        try:
            # raw_decode: accept the first JSON object even if the model kept talking after it.
            obj, _ = json.JSONDecoder().raw_decode(rest)
            if isinstance(obj, dict):
                arguments = json.dumps(obj, sort_keys=True, ensure_ascii=False)
            else:
                arguments = rest
        except ValueError:
            arguments = rest  # malformed arguments are kept as they are, for the scorer to judge
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


def parse_completion(text: str) -> dict[str, Any]:
    """An assistant message from raw model output; never raises."""
    text = (text or "").strip()
    if text.startswith("call "):
        calls = [c for i, part in enumerate(text.split(CALL_SEPARATOR)) if (c := _parse_call(part, i))]
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}
    return {"role": "assistant", "content": text}
