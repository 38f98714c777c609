"""Tool-call parsing per model family, on hand-written outputs in each family's format."""

from __future__ import annotations

import json
import random

import pytest

from flywheel.toolcalls import PARSERS, parse_output


def _calls(message: dict) -> list[tuple[str, dict | str]]:
    out = []
    for call in message.get("tool_calls") or []:
        assert call["type"] == "function" and call["id"].startswith("call_")
        args = call["function"]["arguments"]
        assert isinstance(args, str)  # OpenAI: arguments are a JSON string
        try:
            out.append((call["function"]["name"], json.loads(args)))
        except ValueError:
            out.append((call["function"]["name"], args))
    return out


# ------------------------------------------------------------------ hermes (Qwen 2.5, Hermes, the student)

def test_hermes_one_call():
    m = parse_output('<tool_call>\n{"name": "get_order_status", "arguments": {"order_id": "A-1"}}\n</tool_call>',
                     "hermes")
    assert m["content"] is None and _calls(m) == [("get_order_status", {"order_id": "A-1"})]


def test_hermes_parallel_calls_and_text_around_them():
    text = ('Let me check both.\n<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": "{\\"y\\": [1, 2]}"}</tool_call>')
    m = parse_output(text, "hermes")
    assert m["content"] == "Let me check both."
    assert _calls(m) == [("a", {"x": 1}), ("b", {"y": [1, 2]})]
    assert [c["id"] for c in m["tool_calls"]] == ["call_0", "call_1"]


def test_hermes_truncated_call_at_the_token_limit_and_end_marker():
    m = parse_output('<tool_call>{"name": "cancel_order", "arguments": {"order_id": "A-2"}}<|im_end|>', "hermes")
    assert _calls(m) == [("cancel_order", {"order_id": "A-2"})]


def test_hermes_invalid_arguments_are_kept_as_written():
    m = parse_output('<tool_call>{"name": "refund", "arguments": {"amount": 12,}</tool_call>', "hermes")
    assert _calls(m) == [("refund", '{"amount": 12,}')]


def test_hermes_plain_answer_and_unreadable_block():
    assert parse_output("Our return window is 30 days.", "hermes") == {
        "role": "assistant", "content": "Our return window is 30 days."}
    m = parse_output("<tool_call>not json at all</tool_call>", "hermes")
    assert "tool_calls" not in m and "not json" in m["content"]


# ------------------------------------------------------------------ llama3_json (Llama 3.1 / 3.2 / 3.3)

def test_llama3_json_parameters_key():
    m = parse_output('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "llama3_json")
    assert m["content"] is None and _calls(m) == [("get_weather", {"city": "Oslo"})]


def test_llama3_json_python_tag_and_several_calls():
    text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {"y": 2}}<|eom_id|>'
    assert _calls(parse_output(text, "llama3_json")) == [("a", {"x": 1}), ("b", {"y": 2})]


def test_llama3_json_text_is_content():
    m = parse_output("The capital of Italy is Rome.", "llama3_json")
    assert m == {"role": "assistant", "content": "The capital of Italy is Rome."}
    m = parse_output('{"vendor": "Acme", "total": 12.5}', "llama3_json")  # JSON, but not a call
    assert "tool_calls" not in m and json.loads(m["content"]) == {"vendor": "Acme", "total": 12.5}


# ------------------------------------------------------------------ mistral

def test_mistral_v3_json_array():
    text = '[TOOL_CALLS] [{"name": "track_shipment", "arguments": {"tracking_number": "1Z9"}, "id": "abcdefghi"}]</s>'
    m = parse_output(text, "mistral")
    assert m["content"] is None and _calls(m) == [("track_shipment", {"tracking_number": "1Z9"})]


def test_mistral_v11_name_args_format_with_content_before():
    text = 'Sure.[TOOL_CALLS]cancel_order[ARGS]{"order_id": "A-3"}[TOOL_CALLS]get_order_status{"order_id": "A-4"}'
    m = parse_output(text, "mistral")
    assert m["content"] == "Sure."
    assert _calls(m) == [("cancel_order", {"order_id": "A-3"}), ("get_order_status", {"order_id": "A-4"})]


def test_mistral_without_calls_is_content():
    assert parse_output(" Hello there ", "mistral") == {"role": "assistant", "content": "Hello there"}
    m = parse_output("[TOOL_CALLS] oops", "mistral")
    assert "tool_calls" not in m and m["content"] == "oops"


# ------------------------------------------------------------------ any output, any family: never raises

GARBAGE = ["", None, 42, "<tool_call>", "</tool_call><tool_call>{", "[TOOL_CALLS][TOOL_CALLS]", "{" * 5000,
           '{"name": 3}', '[TOOL_CALLS]{"name": "x", "arguments": [1]}', "<|python_tag|>", "\x00\uffff",
           '<tool_call>{"name": "' + "a" * 10000, "[" * 100000]


@pytest.mark.parametrize("family", [*PARSERS, "unknown-family"])
def test_never_raises_and_always_returns_an_assistant_message(family):
    rng = random.Random(0)
    alphabet = list('{}[]":,; abc<>/_|') + ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", '"name"',
                                           '"arguments"', '"parameters"', "<|python_tag|>"]
    samples = GARBAGE + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(400)]
    for text in samples:
        m = parse_output(text, family)
        assert m["role"] == "assistant"
        assert m["content"] is None or isinstance(m["content"], str)
        for call in m.get("tool_calls", []):
            assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], str)
        json.dumps(m)  # the message is plain JSON


def test_arguments_are_canonical_json():
    a = parse_output('<tool_call>{"name": "f", "arguments": {"b": 1, "a": "é"}}</tool_call>', "hermes")
    assert a["tool_calls"][0]["function"]["arguments"] == '{"a": "é", "b": 1}'
