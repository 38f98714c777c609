"""Model output -> an OpenAI assistant message, per model family's tool-call format.

A candidate's configuration names its family (``tool_call_parser``), with the names vLLM's
OpenAI server uses for the same formats (``--tool-call-parser``), so the evaluation parses a
candidate's raw output exactly as serving it in production would:

``hermes``       Hermes / Qwen 2.5 / the demo student: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
                 blocks, any text around them is the content
``llama3_json``  Llama 3.x: the whole answer is JSON ``{"name": ..., "parameters": {...}}`` (several
                 joined by ``;``), optionally after ``<|python_tag|>``; anything else is content
``mistral``      Mistral: content, then ``[TOOL_CALLS]`` and a JSON array of ``{"name", "arguments"}``
                 (v3 tokenizers) or ``name[ARGS]{...}`` / ``name{...}`` per call (v11+ tokenizers)

Model outputs are untrusted: :func:`parse_output` turns anything, garbage included, into
``{"role": "assistant", "content": str | None[, "tool_calls": [...]]}`` and never raises. A call
whose arguments are not a JSON object keeps what the model wrote as its ``arguments`` string (as
OpenAI does), so the scorer counts it as malformed instead of this code guessing.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any, Callable

Message = dict[str, Any]

_DECODER = json.JSONDecoder()
_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]{1,200})"')
_MISTRAL_NAMED = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]{0,200})\s*(?:\[ARGS\])?\s*(?=\{)")
# End-of-turn markers some tokenizers leave in raw text; never part of an answer.
_END_MARKERS = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<\|eom_id\|>|<\|end_of_text\|>|<\|endoftext\|>|</s>")


def _arguments(value: Any) -> str:
    """OpenAI's ``arguments``: a JSON object as a string; anything else is kept as written."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        value = parsed
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False) if value is not None else "{}"


def _call(index: int, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": _arguments(arguments)}}


def _from_object(obj: Any, index: int, *, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    return _call(index, obj["name"].strip(), args)


def _message(content: str, calls: list[dict]) -> Message:
    content = content.strip()
    if calls:
        return {"role": "assistant", "content": content or None, "tool_calls": calls}
    return {"role": "assistant", "content": content}


def parse_hermes(text: str) -> Message:
    calls: list[dict] = []
    kept: list[str] = []
    pos = 0
    for block in _HERMES_BLOCK.finditer(text):
        body = block.group(1).strip()
        try:
            obj, _ = _DECODER.raw_decode(body)
        except (ValueError, RecursionError):
            obj = None
        call = _from_object(obj, len(calls))
        if call is None:
            name = _NAME.search(body)
            if not name:  # nothing recognisable: the block stays in the content, as written
                continue
            # Invalid JSON with a recognisable name: keep the raw text as its arguments.
            raw_args = body.split('"arguments"', 1)[-1].lstrip(" :") if '"arguments"' in body else body
            call = {"id": f"call_{len(calls)}", "type": "function",
                    "function": {"name": name.group(1), "arguments": raw_args}}
        kept.append(text[pos:block.start()])
        pos = block.end()
        calls.append(call)
    kept.append(text[pos:])
    return _message("".join(kept), calls)


def parse_llama3_json(text: str) -> Message:
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>"):].strip()
    if not body.startswith("{"):
        return _message(text, [])
    calls: list[dict] = []
    pos = 0
    while pos < len(body):
        try:
            obj, end = _DECODER.raw_decode(body, pos)
        except (ValueError, RecursionError):
            break
        call = _from_object(obj, len(calls))
        if call is None:
            break
        calls.append(call)
        pos = end
        rest = body[pos:].lstrip()
        if not rest.startswith(";"):
            break
        pos = len(body) - len(rest) + 1
        while pos < len(body) and body[pos].isspace():
            pos += 1
    if not calls:
        return _message(text, [])
    return _message(body[pos:].strip().lstrip(";"), calls)


def parse_mistral(text: str) -> Message:
    if "[TOOL_CALLS]" not in text:
        return _message(text, [])
    content, _, rest = text.partition("[TOOL_CALLS]")
    calls: list[dict] = []
    leftover = ""
    for chunk in rest.split("[TOOL_CALLS]"):
        chunk = chunk.strip()
        try:  # v3: a JSON array (or one object) of {"name", "arguments"}
            obj, end = _DECODER.raw_decode(chunk)
            objs = obj if isinstance(obj, list) else [obj]
            found = [c for c in (_from_object(o, len(calls) + i) for i, o in enumerate(objs)) if c]
            if found:
                calls.extend(found)
                leftover += chunk[end:]
                continue
        except (ValueError, RecursionError):
            pass
        named = _MISTRAL_NAMED.match(chunk)  # v11+: name[ARGS]{...} or name{...}
        if named:
            try:
                args, end = _DECODER.raw_decode(chunk, named.end())
                calls.append(_call(len(calls), named.group(1), args))
                leftover += chunk[end:]
                continue
            except (ValueError, RecursionError):
                calls.append({"id": f"call_{len(calls)}", "type": "function",
                              "function": {"name": named.group(1), "arguments": chunk[named.end():].strip()}})
                continue
        leftover += chunk
    if not calls:
        return _message(text.replace("[TOOL_CALLS]", " "), [])
    return _message(content + leftover, calls)


PARSERS: dict[str, Callable[[str], Message]] = {
    "hermes": parse_hermes,
    "llama3_json": parse_llama3_json,
    "mistral": parse_mistral,
}
DEFAULT_PARSER = "hermes"


def parse_output(text: Any, family: str = DEFAULT_PARSER) -> Message:
    """The assistant message a model's raw output stands for; never raises.

    ``family`` must be one of :data:`PARSERS` (the configuration checks it); an unknown family is
    read as plain text rather than failing an evaluation.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = _END_MARKERS.sub("", text)
    parser = PARSERS.get(family)
    if parser is None:
        return _message(text, [])
    try:
        return parser(text)
    except Exception:  # noqa: BLE001 — a parser bug must never fail an evaluation
        return _message(text, [])


def parser_for(family: str) -> Callable[[Any], Message]:
    """The parse function of one model family, as evaluation takes it (``evaluate(..., parse=)``)."""
    return partial(parse_output, family=family)
