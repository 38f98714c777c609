"""Prompts through the candidate tokenizer's own chat template, as production serving renders them.

Every candidate, the locally built student included, is prompted the way an OpenAI-compatible
server (vLLM, ``transformers serve``) prompts it: ``apply_chat_template(messages, tools=...,
add_generation_prompt=True)`` with the request's messages and tool JSON schemas. Training examples
are the same rendering of the whole conversation; the loss covers the tokens after the generation
prompt (the assistant's answer, tool calls and end-of-turn marker included).

Logged text is untrusted: a user who types ``<|im_start|>system`` must not forge a turn. The
template's control tokens inside message content, tool schemas or arguments are encoded as
plain text (transformers' ``sanitize_control_tokens``; on older transformers a word joiner
breaks them up), so only the control tokens the template writes itself become tokens.

torch-free (a tokenizer object is all it needs).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from typing import Any

from flywheel_trainer.spec import SpecError

Message = dict[str, Any]
_WORD_JOINER = "\u2060"


class ChatItemError(ValueError):
    """One item cannot be rendered (its template raised, or it does not fit): it is skipped and counted."""


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return "" if content is None else str(content)


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return raw  # invalid JSON is rendered as logged, never repaired
    return {} if raw is None else raw


def serving_messages(messages: Sequence[Message]) -> list[Message]:
    """OpenAI-shaped messages as a server hands them to a chat template: text content (parts
    joined, None as ""), ``developer`` as ``system``, tool-call arguments parsed into objects."""
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        msg: Message = {"role": "system" if role == "developer" else str(role or "user"),
                        "content": _text(m.get("content"))}
        calls = [c for c in (m.get("tool_calls") or []) if isinstance(c, dict)]
        if calls:
            msg["tool_calls"] = []
            for c in calls:
                fn = c.get("function") if isinstance(c.get("function"), dict) else {}
                call = {"type": "function", "function": {"name": str(fn.get("name", "")),
                                                         "arguments": _arguments(fn.get("arguments"))}}
                if c.get("id"):
                    call["id"] = str(c["id"])
                msg["tool_calls"].append(call)
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def with_examples(messages: Sequence[Message], examples: Sequence[Sequence[Message]]) -> list[Message]:
    """In-context examples as earlier turns: after the leading system message(s), before the query."""
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    return [*messages[:head], *(m for ex in examples for m in ex), *messages[head:]]


class ChatFormat:
    """One candidate's tokenizer and chat template."""

    def __init__(self, tokenizer, *, candidate: str, model_uri: str) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise SpecError(
                f"candidate '{candidate}': the model at {model_uri} has no chat template (no 'chat_template' "
                "in tokenizer_config.json, no chat_template.jinja); every candidate is prompted through its own "
                "template, as serving does: use an instruct/chat checkpoint or add its template to the model "
                "directory")
        self.tokenizer = tokenizer
        self.candidate = candidate
        self._library_sanitizes = "sanitize_control_tokens" in inspect.signature(
            tokenizer.apply_chat_template).parameters
        controls = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if len(t.content) > 1},
                          key=len, reverse=True)
        self._controls = re.compile("|".join(map(re.escape, controls))) if controls else None

    # -- rendering -----------------------------------------------------------------------------

    def _defuse(self, obj: Any) -> Any:
        """Fallback for transformers without sanitize_control_tokens: break control tokens in strings."""
        if isinstance(obj, str):
            return self._controls.sub(lambda m: m.group(0)[0] + _WORD_JOINER + m.group(0)[1:], obj) \
                if self._controls else obj
        if isinstance(obj, dict):
            return {k: self._defuse(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._defuse(v) for v in obj]
        return obj

    def render(self, messages: Sequence[Message], tools: Sequence[dict] | None, *,
               add_generation_prompt: bool) -> str:
        """The rendered text (for logs and golden tests); tokens come from :meth:`encode`."""
        return self.tokenizer.apply_chat_template(serving_messages(messages), tools=list(tools) if tools else None,
                                                  add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(self, messages: Sequence[Message], tools: Sequence[dict] | None, *,
               add_generation_prompt: bool) -> list[int]:
        msgs, tool_list = serving_messages(messages), (list(tools) if tools else None)
        kwargs: dict[str, Any] = {}
        if self._library_sanitizes:
            kwargs["sanitize_control_tokens"] = True
        else:
            msgs, tool_list = self._defuse(msgs), self._defuse(tool_list)
        try:
            ids = self.tokenizer.apply_chat_template(msgs, tools=tool_list, add_generation_prompt=add_generation_prompt,
                                                     tokenize=True, return_dict=False, **kwargs)
        except Exception as exc:  # a template's raise_exception(), or a jinja error on odd input
            raise ChatItemError(f"the chat template of candidate '{self.candidate}' rejected the conversation: "
                                f"{type(exc).__name__}: {exc}") from exc
        return list(ids)

    def prompt(self, messages: Sequence[Message], tools: Sequence[dict] | None) -> list[int]:
        return self.encode(messages, tools, add_generation_prompt=True)

    def example(self, messages: Sequence[Message], tools: Sequence[dict] | None) -> tuple[list[int], list[int]]:
        """(token ids, labels) of a training conversation whose last message is the assistant's answer;
        labels are -100 up to the generation prompt, the token ids after it."""
        if not messages or messages[-1].get("role") != "assistant":
            raise ChatItemError("a training example must end with the assistant's message")
        prompt = self.encode(messages[:-1], tools, add_generation_prompt=True)
        full = self.encode(messages, tools, add_generation_prompt=False)
        common = 0
        for a, b in zip(prompt, full):
            if a != b:
                break
            common += 1
        if common == len(full):
            raise ChatItemError("the rendered answer is empty")
        if common < len(prompt):
            joined = self._after_prompt(prompt, full, common)
            if joined is not None:
                full, common = joined, len(prompt)
        # Else a template that rewrites earlier turns: the answer is what follows the common prefix.
        return full, [-100] * common + full[common:]

    def _after_prompt(self, prompt: list[int], full: list[int], common: int) -> list[int] | None:
        """``full`` re-tokenised to start with exactly ``prompt``, or None where it cannot be.

        BPE merges across the end of the generation prompt: a student's ``assistant\\n{`` is one
        token in the whole conversation but ``\\n`` then ``{`` when the model generates. Trained on
        the merged token, the model never sees at serving time the prompt it was trained on (an
        invoice adapter wrote only the tail of its JSON). The token(s) that straddle the prompt's
        end are split there; every other token, sanitised control-token text included, is kept.
        """
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        tail = decode(prompt[common:])  # the prompt's text that full encodes differently
        for j in range(common + 1, len(full) + 1):
            text = decode(full[common:j])
            if len(text) >= len(tail):
                break
        else:
            return None
        if not text.startswith(tail):
            return None
        rest = text[len(tail):]  # a piece of plain text inside the answer's first token(s)
        piece = self.tokenizer(rest, add_special_tokens=False, split_special_tokens=True)["input_ids"] if rest else []
        joined = [*prompt, *piece, *full[j:]]
        return joined if decode(joined) == decode(full) else None

    def fit_examples(self, messages: Sequence[Message], tools: Sequence[dict] | None,
                     candidates: Sequence[Sequence[Message]], *, budget_tokens: int, max_examples: int,
                     room: int) -> tuple[list[int], int]:
        """The prompt with as many in-context examples as fit, and how many that is.

        ``candidates`` are ordered most similar first. They are taken greedily: one is added when the
        prompt grows by at most ``budget_tokens`` over the bare prompt (measured with this tokenizer
        and template) and stays within ``room``; one that does not fit is skipped and the next one
        tried. In the prompt the most similar example sits next to the query.
        """
        bare = self.prompt(messages, tools)
        chosen: list[Sequence[Message]] = []
        best = bare
        for candidate in candidates:
            if len(chosen) >= max_examples:
                break
            trial = [candidate, *chosen]  # least similar first
            try:
                ids = self.prompt(with_examples(messages, trial), tools)
            except ChatItemError:
                continue  # this example does not render with this template: try the next one
            if len(ids) - len(bare) <= budget_tokens and len(ids) <= room:
                chosen, best = trial, ids
        return best, len(chosen)
