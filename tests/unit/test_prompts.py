import json

from flywheel.prompts import parse_completion, render_completion, render_prompt, workload_kind


def _call(name, args):
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def test_prompt_format():
    request = {"tools": [{"type": "function", "function": {"name": "cancel_order"}},
                         {"type": "function", "function": {"name": "track_shipment"}}],
               "messages": [{"role": "system", "content": "Route."}, {"role": "user", "content": "cancel\nA-1 please"}]}
    assert render_prompt(request) == "<tools> cancel_order track_shipment\n<system> Route.\n<user> cancel A-1 please\n<assistant>"
    assert workload_kind(request) == "tool_calling"
    assert workload_kind({"response_format": {"type": "json_object"}, "messages": []}) == "json_extraction"
    assert workload_kind({"messages": []}) == "chat"


def test_tool_call_round_trip():
    message = _call("request_refund", {"order_id": "A-1", "amount": 12.5})
    text = render_completion(message)
    assert text == 'call request_refund {"amount": 12.5, "order_id": "A-1"}'
    parsed = parse_completion(text)
    assert parsed["tool_calls"][0]["function"]["name"] == "request_refund"
    assert json.loads(parsed["tool_calls"][0]["function"]["arguments"]) == {"order_id": "A-1", "amount": 12.5}


def test_json_and_text_round_trip():
    assert render_completion({"content": '{"b": 1, "a": "x"}'}) == '{"a": "x", "b": 1}'
    assert parse_completion('{"a": "x", "b": 1}')["content"] == '{"a": "x", "b": 1}'
    assert render_completion({"content": "Hello\n there"}) == "Hello there"


def test_garbage_never_raises():
    for text in ("", "call", "call x {broken", "call 123", "\x00\x01", "call a {} ; call b {\"k\": 1} trailing", None):
        message = parse_completion(text)
        assert message["role"] == "assistant"
    two = parse_completion('call a {} ; call b {"k": 1} trailing')
    assert [c["function"]["name"] for c in two["tool_calls"]] == ["a", "b"]
    assert parse_completion("call x {broken")["tool_calls"][0]["function"]["arguments"] == "{broken"
