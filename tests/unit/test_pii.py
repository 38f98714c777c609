"""PII redaction with Presidio: what must be redacted, what must not (business identifiers),
where in a record, typed placeholders consistent within a record, and the long-text bound."""

import json
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from flywheel.pii import ENTITY_TYPES, luhn_valid, redact_obj, redact_record, redact_text
from flywheel.records import LogRecord

STEM = {"email": "EMAIL", "phone": "PHONE", "card": "CARD", "iban": "IBAN", "ssn": "SSN", "ip": "IP",
        "url_credentials": "SECRET", "api_key": "SECRET"}


@pytest.mark.parametrize("text, entity", [
    ("anna.1@example.com", "email"),
    ("J.Doe+shop@mail.corp.example.co.uk", "email"),
    ("josé.müller@exämple.de", "email"),          # internationalised local part and domain
    ("用户@例子.广告", "email"),
    ("+1 415-555-0132", "phone"),
    ("+1 (415) 555-0132", "phone"),
    ("(415) 555 0132", "phone"),
    ("(212) 555-0199", "phone"),
    ("415-555-0132", "phone"),
    ("415.555.0132", "phone"),
    ("415 555 0132", "phone"),
    ("+44 20 7946 0958", "phone"),
    ("020 7946 0958", "phone"),                   # national UK
    ("+49 30 1234 5678", "phone"),
    ("030 12345678", "phone"),                    # national DE
    ("+33 6 12 34 56 78", "phone"),
    ("06 12 34 56 78", "phone"),                  # national FR
    ("+4915112345678", "phone"),
    ("4111 1111 1111 1111", "card"),
    ("5555-5555-5555-4444", "card"),
    ("378282246310005", "card"),
    ("DE89 3704 0044 0532 0130 00", "iban"),
    ("GB82WEST12345698765432", "iban"),
    ("536-22-8726", "ssn"),
    ("192.168.10.20", "ip"),
    ("2001:db8::ff00:42:8329", "ip"),
    ("sk-proj-a1B2c3D4e5F6g7H8i9J0k1L2m3N4", "api_key"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_key"),
    ("AKIAIOSFODNN7EXAMPLE", "api_key"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "api_key"),
])
def test_pii_is_redacted(text, entity):
    redacted, counts = redact_text(f"contact: {text}, thanks")
    assert redacted == f"contact: <{STEM[entity]}_1>, thanks"
    assert counts == {entity: 1}


def test_secrets_in_urls_and_assignments_keep_their_context():
    text, counts = redact_text("db at postgres://admin:hunter2@db.internal:5432/app, api_key=Zx9fK2mQ81aa, "
                               "Authorization: Bearer abcdefghijklmnopqrstuvwx")
    assert text == ("db at postgres://<SECRET_1>@db.internal:5432/app, api_key=<SECRET_2>, "
                    "Authorization: Bearer <SECRET_3>")
    assert counts == {"url_credentials": 1, "api_key": 2}


@pytest.mark.parametrize("text", [
    "order A-100234", "orders A-100234 and A-100235", "refund $342.99 on 2026-11-24", "paid 1,234.56 EUR",
    "tracking 1Z999AA10123456784", "invoice INV-2026-12345 of 1200.05 EUR due 2026-12-01",
    "card-like but not Luhn 4111 1111 1111 1112", "dated 24.11.2026 at 10:30", "version 2.13.0",
    "call +1 2 34", "room 101, floor 3", "SKU 12345-678-9012-X", "the year 2026 had 365 days",
    "flight LH1234 at gate 42", "1234567890123", "the monkey ate a token gesture", "task-abcdefghijklmnopqrstu",
    "https://example.com/a/b?c=1", "ratio 3:4:5", "user@localhost",
])
def test_business_identifiers_are_not_pii(text):
    assert redact_text(text) == (text, Counter())


def test_placeholders_are_typed_and_consistent_within_a_record():
    text, counts = redact_text("mail anna@example.com, or anna@example.com again, or bob@example.com; "
                               "call +1 415-555-0132")
    assert text == "mail <EMAIL_1>, or <EMAIL_1> again, or <EMAIL_2>; call <PHONE_1>"
    assert counts == {"email": 3, "phone": 1}


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("4242 4242 4242 4242")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234")


def _record(user_text, answer, **request):
    return LogRecord(
        source_id="f:1", timestamp=datetime(2026, 11, 24, tzinfo=timezone.utc), workload_id="w", client_id="c",
        request={"model": "m", "messages": [{"role": "system", "content": "Route."},
                                            {"role": "user", "content": user_text}], **request},
        response={"id": "x", "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]},
    )


def test_every_string_of_the_record_is_redacted():
    answer = {"role": "assistant", "content": "I'll email bob@example.com", "tool_calls": [{
        "id": "c", "type": "function",
        "function": {"name": "notify", "arguments": json.dumps({
            "phone": "+1 415-555-0132", "order_id": "A-100234", "cc": ["bob@example.com"],
            "callback": 4155550199, "ssn": "536228726", "amount": 42})}}]}
    tools = [{"type": "function", "function": {"name": "notify", "description": "Escalations go to ops@example.com",
                                               "parameters": {"type": "object"}}}]
    original = _record("I'm bob@example.com, order A-100234", answer, tools=tools, user="carol@example.org")
    original.request["messages"].append({"role": "user", "name": "dave@example.net", "content": [
        {"type": "text", "text": "my card 4111 1111 1111 1111"}]})
    original.response["choices"].append({"index": 1, "message": {"role": "assistant", "content": "call 415-555-0132"}})
    snapshot = json.dumps([original.request, original.response])
    redacted, counts = redact_record(original)
    req, resp = redacted.request, redacted.response
    assert req["messages"][1]["content"] == "I'm <EMAIL_1>, order A-100234"
    assert req["messages"][0]["content"] == "Route."
    assert req["messages"][2]["name"] == "<EMAIL_2>"
    assert req["messages"][2]["content"][0]["text"] == "my card <CARD_1>"
    # Numbered in the order the record is read: messages, then tools, then user.
    assert req["tools"][0]["function"]["description"] == "Escalations go to <EMAIL_3>"
    assert req["user"] == "<EMAIL_4>"
    message = redacted.assistant_message
    assert message["content"] == "I'll email <EMAIL_1>"  # the same address, the same placeholder
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "phone": "<PHONE_1>", "order_id": "A-100234", "cc": ["<EMAIL_1>"], "callback": "<PHONE_2>",
        "ssn": "<SSN_1>", "amount": 42}
    assert resp["choices"][1]["message"]["content"] == "call <PHONE_3>"
    assert counts == {"email": 6, "phone": 3, "card": 1, "ssn": 1}
    assert json.dumps([original.request, original.response]) == snapshot  # the input is untouched
    text = json.dumps([req, resp])
    for raw in ("bob@", "carol@", "dave@", "ops@", "4111", "555-0132", "4155550199", "536228726"):
        assert raw not in text


def test_placeholders_do_not_link_two_records():
    a, _ = redact_obj({"request": {"messages": [{"role": "user", "content": "x@example.com"}]}})
    b, _ = redact_obj({"request": {"messages": [{"role": "user", "content": "y@example.com z@example.com"}]}})
    assert a["request"]["messages"][0]["content"] == "<EMAIL_1>"
    assert b["request"]["messages"][0]["content"] == "<EMAIL_1> <EMAIL_2>"


def test_clean_records_are_unchanged():
    answer = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"order_id":"A-1"}'}}]}
    record = _record("where is A-100234?", answer)
    redacted, counts = redact_record(record)
    assert redacted == record and not counts  # arguments stay byte-identical when there is nothing to redact


def test_a_different_redactor_can_be_plugged_in():
    class Digits:
        def find(self, text):
            return [(i, i + 1, "ssn") for i, ch in enumerate(text) if ch.isdigit()]

    redacted, counts = redact_record(_record("room 7", {"role": "assistant", "content": "ok 7"}), Digits())
    assert redacted.request["messages"][1]["content"] == "room <SSN_1>"
    assert redacted.assistant_message["content"] == "ok <SSN_1>" and counts["ssn"] == 2


def test_audit_counts_name_entity_types_only():
    _, counts = redact_text("anna@example.com 4111 1111 1111 1111")
    assert set(counts) <= set(ENTITY_TYPES) and all(isinstance(n, int) for n in counts.values())


def _long_text(n_bytes: int) -> str:
    words = "the parcel arrived late and the box was damaged please advise about my refund".split()
    parts, i = [], 0
    while sum(len(p) + 1 for p in parts) < n_bytes:
        parts.append(" ".join(words[(i + k) % len(words)] for k in range(40)))
        if i % 3 == 0:
            parts.append(f"mail user{i}@example.com or call +1 415-555-{1000 + i:04d}, order A-{100000 + i}")
        i += 1
    return " ".join(parts)[:n_bytes]


@pytest.mark.parametrize("text", [
    "a" * 65536,                                   # the old e-mail regex backtracked on this
    "x." * 32768,
    "1234 " * 13107,                               # digit-heavy: cards, phones, SSNs candidates everywhere
    _long_text(65536),
])
def test_a_64_kb_text_redacts_fast(text):
    redact_text(text[:100])  # the redactor is built once per process, outside the timing
    best = min(_timed(lambda: redact_text(text)) for _ in range(3))
    # The goal is < 50 ms (bench/curation measures it); on a shared 2-core CI box allow headroom.
    assert best < 0.25, f"{best * 1000:.0f} ms"


def _timed(fn) -> float:
    from flywheel import pii

    pii._FIND_CACHE.clear()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_recall_targets_on_the_seeded_pii_corpus():
    """The issue's targets on a held-out seed of the corpus (docs/pii.md has the full table)."""
    from flywheel_local.pii_corpus import corpus, evaluate

    result = evaluate(corpus(400, seed=4242))
    table = result["entities"]
    for entity in ("email", "card", "iban", "ssn", "ip"):
        assert table[entity]["recall"] >= 0.98, (entity, table[entity])
    assert table["phone"]["recall"] >= 0.95, table["phone"]
    assert all(t["precision"] is None or t["precision"] >= 0.9 for t in table.values()), table
    assert result["decoys_redacted"] <= 0.01 * result["decoys"]


def test_secret_named_fields_are_secrets_whatever_they_look_like():
    redacted, counts = redact_obj({"request": {"metadata": {"api_key": "RKA9rR7ocyZl4Ai5ud6Q", "password": "hunter2hunter2",
                                                            "max_tokens": 12, "key": "order_status", "token": "abc"}}})
    meta = redacted["request"]["metadata"]
    assert meta == {"api_key": "<SECRET_1>", "password": "<SECRET_2>", "max_tokens": 12, "key": "order_status",
                    "token": "abc"}  # under 8 characters: not a credential
    assert counts == {"api_key": 2}
