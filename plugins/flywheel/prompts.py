"""From logged OpenAI-shaped records to the chat items a candidate is prompted and trained with.

A candidate is prompted exactly as production serving would prompt it: the request's messages and
tool JSON schemas, rendered by the candidate tokenizer's own chat template. That rendering needs
the tokenizer, so it happens in the GPU job (flywheel_trainer.chat); this module only turns a
curated record into clean OpenAI-shaped messages (the trainer's ``ChatItem`` rows):

- an **eval item** is the request: ``{"id", "messages", "tools"}``;
- a **training example** is the request plus the production answer as the last message;
- an **in-context example** is the request's turns (no system message: the query brings its own)
  plus the answer, inserted as earlier turns of the query's conversation.

Logged content is kept as logged (no text format of ours, nothing defused here): the trainer
encodes the template's control tokens inside content as plain text, so a user who types one
cannot forge a turn. Malformed parts (a message that is not an object, a tool without a name)
are dropped rather than guessed at.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
_WHITESPACE = re.compile(r"\s+")

Message = dict[str, Any]


def workload_kind(request: dict[str, Any]) -> str:
    """``tool_calling`` (the request offers tools), ``json_extraction`` (asks for JSON) or ``chat``."""
    if request.get("tools"):
        return "tool_calling"
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return "json_extraction"
    return "chat"


def request_tools(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The request's function tools (JSON schemas) as logged; entries without a name are dropped."""
    tools = [t for t in request.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)
             and isinstance(t["function"].get("name"), str) and t["function"]["name"].strip()]
    return tools or None


def tool_names(request: dict[str, Any]) -> list[str]:
    """The names of the tools a request offers, in order."""
    return [t["function"]["name"] for t in request_tools(request) or []]


def _content(content: Any) -> str | None:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return None if content is None else str(content)


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        if not isinstance(args, str):
            args = json.dumps(args if args is not None else {}, ensure_ascii=False, default=str)
        clean = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            clean["id"] = call["id"]
        out.append(clean)
    return out


def clean_message(message: Any) -> Message | None:
    """One OpenAI message with a known role, text content and well-formed tool calls (or None)."""
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    role = "system" if role == "developer" else role if role in ROLES else "user"
    out: Message = {"role": role, "content": _content(message.get("content"))}
    if role == "assistant":
        calls = _tool_calls(message.get("tool_calls"))
        if calls:
            out["tool_calls"] = calls
    elif out["content"] is None:
        out["content"] = ""
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(message.get(key), str):
                out[key] = message[key]
    return out


def chat_messages(request: dict[str, Any]) -> list[Message]:
    messages = request.get("messages")
    return [m for m in map(clean_message, messages if isinstance(messages, list) else []) if m is not None]


def answer_message(response: dict[str, Any]) -> Message:
    """The production answer of a logged response (curation guarantees it is there)."""
    message = clean_message(response["choices"][0]["message"]) or {"role": "assistant", "content": ""}
    message["role"] = "assistant"
    return message


def eval_item(row: dict[str, Any]) -> dict[str, Any]:
    """A curated row as the trainer's eval item: the request, to be answered."""
    item: dict[str, Any] = {"id": str(row["id"]), "messages": chat_messages(row["request"])}
    tools = request_tools(row["request"])
    if tools:
        item["tools"] = tools
    return item


def train_item(row: dict[str, Any]) -> dict[str, Any]:
    """A curated row as a training example: the request with production's answer as the last turn."""
    item = eval_item(row)
    item["messages"] = [*item["messages"], answer_message(row["response"])]
    return item


def icl_example(row: dict[str, Any]) -> list[Message]:
    """A curated row as in-context turns: its conversation without system messages, then the answer."""
    return [*(m for m in chat_messages(row["request"]) if m["role"] != "system"), answer_message(row["response"])]


def similarity_text(request: dict[str, Any]) -> str:
    """What tells records of a workload apart: the user and tool turns (system prompt and tool
    schemas are the same for every record and would crowd the user's words out of MiniLM's window)."""
    parts = [m["content"] or "" for m in chat_messages(request) if m["role"] in ("user", "tool")]
    return _WHITESPACE.sub(" ", " ".join(parts)).strip()


def request_key(request: dict[str, Any]) -> str:
    """Equal for two records that ask the same thing (so an ICL example is never the query itself)."""
    return json.dumps([chat_messages(request), tool_names(request)], sort_keys=True, ensure_ascii=False)


def message_text(message: dict[str, Any]) -> str:
    """One line for people (leaderboard details, review evidence): tool calls as ``name(args)``,
    JSON answers canonical, text with whitespace folded."""
    calls = _tool_calls(message.get("tool_calls"))
    if calls:
        rendered = []
        for call in calls:
            args = call["function"]["arguments"]
            try:
                args = json.dumps(json.loads(args), sort_keys=True, ensure_ascii=False)
            except (ValueError, RecursionError):
                pass
            rendered.append(f"{call['function']['name']}({args})")
        return " ; ".join(rendered)
    content = _content(message.get("content")) or ""
    try:
        parsed = json.loads(content)
        if isinstance(parsed, (dict, list)):
            return json.dumps(parsed, sort_keys=True, ensure_ascii=False)
    except (ValueError, RecursionError):
        pass
    return _WHITESPACE.sub(" ", content).strip()
