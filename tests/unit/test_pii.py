"""PII redaction: what must be redacted, what must not (business identifiers), and where."""

import json
from collections import Counter
from datetime import datetime, timezone

import pytest

from flywheel.pii import PatternRedactor, luhn_valid, redact_record, redact_text
from flywheel.records import LogRecord


@pytest.mark.parametrize("text, entity", [
    ("anna.1@example.com", "email"),
    ("J.Doe+shop@mail.corp.example.co.uk", "email"),
    ("+1 415-555-0132", "phone"),
    ("+1 (415) 555-0132", "phone"),
    ("(415) 555 0132", "phone"),
    ("(212) 555-0199", "phone"),
    ("415-555-0132", "phone"),
    ("415.555.0132", "phone"),
    ("415 555 0132", "phone"),
    ("+44 20 7946 0958", "phone"),
    ("+49 30 1234 5678", "phone"),
    ("+33 6 12 34 56 78", "phone"),
    ("+4915112345678", "phone"),
    ("4111 1111 1111 1111", "card"),
    ("5555-5555-5555-4444", "card"),
    ("378282246310005", "card"),
])
def test_pii_is_redacted(text, entity):
    label = {"email": "<EMAIL>", "phone": "<PHONE>", "card": "<CARD>"}[entity]
    redacted, counts = redact_text(f"contact: {text}, thanks")
    assert redacted == f"contact: {label}, thanks"
    assert counts == {entity: 1}


@pytest.mark.parametrize("text", [
    "order A-100234", "orders A-100234 and A-100235", "refund $342.99 on 2026-11-24", "paid 1,234.56 EUR",
    "tracking 1Z999AA10123456784", "invoice INV-2026-12345 of 1200.05 EUR due 2026-12-01",
    "card-like but not Luhn 4111 1111 1111 1112", "dated 24.11.2026 at 10:30", "version 2.13.0",
    "call +1 2 34", "room 101, floor 3", "SKU 12345-678-9012-X", "the year 2026 had 365 days",
    "flight LH1234 at gate 42", "1234567890123",
])
def test_business_identifiers_are_not_pii(text):
    assert redact_text(text) == (text, Counter())


def test_several_entities_and_counts():
    text, counts = redact_text("mail anna.1@example.com or call +1 415-555-0132 / (212) 555-0199 / +44 20 7946 0958;"
                               " card 4111 1111 1111 1111")
    assert text == "mail <EMAIL> or call <PHONE> / <PHONE> / <PHONE>; card <CARD>"
    assert counts == {"email": 1, "phone": 3, "card": 1}


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("4242 4242 4242 4242")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234")


def _record(user_text, answer):
    return LogRecord(
        source_id="f:1", timestamp=datetime(2026, 11, 24, tzinfo=timezone.utc), workload_id="w", client_id="c",
        request={"model": "m", "messages": [{"role": "system", "content": "Route."},
                                            {"role": "user", "content": user_text}]},
        response={"id": "x", "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]},
    )


def test_record_redaction_covers_messages_answer_and_tool_arguments():
    answer = {"role": "assistant", "content": "I'll email bob@example.com", "tool_calls": [{
        "id": "c", "type": "function",
        "function": {"name": "notify", "arguments": json.dumps({"phone": "+1 415-555-0132", "order_id": "A-100234",
                                                                "cc": ["bob@example.com"]})}}]}
    original = _record("I'm bob@example.com, order A-100234", answer)
    snapshot = json.dumps([original.request, original.response])
    redacted, counts = redact_record(original)
    assert redacted.request["messages"][1]["content"] == "I'm <EMAIL>, order A-100234"
    assert redacted.request["messages"][0]["content"] == "Route."
    message = redacted.assistant_message
    assert message["content"] == "I'll email <EMAIL>"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "phone": "<PHONE>", "order_id": "A-100234", "cc": ["<EMAIL>"]}
    assert counts == {"email": 3, "phone": 1}
    assert json.dumps([original.request, original.response]) == snapshot  # the input is untouched


def test_clean_records_are_unchanged():
    answer = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"order_id":"A-1"}'}}]}
    record = _record("where is A-100234?", answer)
    redacted, counts = redact_record(record)
    assert redacted == record and not counts  # arguments stay byte-identical when there is nothing to redact


def test_a_different_redactor_can_be_plugged_in():
    class Shouting:
        def redact_text(self, text):
            return text.upper(), Counter({"shout": 1})

    redacted, counts = redact_record(_record("hello", {"role": "assistant", "content": "hi"}), Shouting())
    assert redacted.request["messages"][1]["content"] == "HELLO" and counts["shout"] == 3
    assert redact_text("x", PatternRedactor()) == ("x", Counter())
