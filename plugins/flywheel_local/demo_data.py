"""Seeded demo production logs, and the generic corpus the local student is pre-trained on.

The logs look like what an OpenAI-compatible application writes per call — ``{timestamp,
workload_id, client_id, request, response}`` — for four workloads of different kinds, with the
dirt of real logs: exact duplicates (client retries), malformed records of several kinds, PII in
user text. Everything is a pure function of the seed (and ``end``).

Texts are short on purpose: the students are tiny models. Values the answer must contain (order
ids, tracking numbers, amounts, addresses, invoice fields) appear verbatim in the user text, so a
model can learn to copy them.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flywheel.prompts import chat_messages, clean_message, request_tools

PROD_MODEL = "prod-llm-70b"

# ---------------------------------------------------------------- tool_router (tool calling)

ROUTER_SYSTEM = "Route the customer message: call one tool."


def _tool(name: str, description: str, **params: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": v} for k, v in params.items()},
                       "required": list(params)}}}


ROUTER_TOOLS = [
    _tool("get_order_status", "Look up the status of an order", order_id="string"),
    _tool("cancel_order", "Cancel an order that has not shipped", order_id="string"),
    _tool("track_shipment", "Track a parcel by its tracking number", tracking_number="string"),
    _tool("request_refund", "Refund an amount for an order", order_id="string", amount="number"),
    _tool("update_shipping_address", "Change the delivery address of an order", order_id="string", address="string"),
]
ROUTER_ARGUMENTS = {t["function"]["name"]: t["function"]["parameters"]["required"] for t in ROUTER_TOOLS}

ROUTER_REQUESTS: dict[str, list[str]] = {
    "get_order_status": [
        "where is my order {order_id}?", "what's the status of order {order_id}?", "has order {order_id} shipped yet?",
        "I ordered a week ago, order number {order_id}. Any news?", "status of {order_id} please.",
        "can you check on order {order_id} for me?", "is my order {order_id} on its way?",
        "order {order_id} still says processing, what is going on?", "when will order {order_id} be sent out?",
        "I never got a confirmation for {order_id}, is it placed?", "any update on my order {order_id}?",
    ],
    "cancel_order": [
        "please cancel order {order_id}.", "I want to cancel my order {order_id}.",
        "cancel {order_id}, I changed my mind.", "can you stop order {order_id} before it ships?",
        "I ordered by mistake, please cancel {order_id}.", "cancel the order {order_id} right away please.",
        "I found it cheaper elsewhere, so please cancel order {order_id}.", "I no longer need order {order_id}, cancel it.",
        "order {order_id} was placed twice by accident, please cancel it.",
    ],
    "track_shipment": [
        "where is my parcel {tracking_number}?", "track {tracking_number} please.",
        "can you track package {tracking_number} for me?", "my tracking number is {tracking_number}, where is it now?",
        "any update on shipment {tracking_number}?", "the courier gave me {tracking_number}. Where is the box?",
        "the tracking page for {tracking_number} has not moved in days.", "is parcel {tracking_number} out for delivery?",
        "which depot is {tracking_number} at right now?",
    ],
    "request_refund": [
        "I want a refund of {amount} for order {order_id}.", "please refund {amount} on {order_id}, the item was broken.",
        "order {order_id} arrived damaged, I'd like {amount} back.", "refund {amount} for order {order_id} please.",
        "you charged me twice for {order_id}, please refund {amount}.",
        "one item from {order_id} was missing, so I expect {amount} back.",
        "I returned order {order_id} two weeks ago and still wait for my {amount}.",
    ],
    "update_shipping_address": [
        "please ship order {order_id} to {address} instead.", "change the address of {order_id} to {address}.",
        "I moved! New address for order {order_id}: {address}.", "deliver {order_id} to {address} please.",
        "can you send order {order_id} to {address}?", "order {order_id} should go to my office at {address}.",
        "the address on {order_id} is wrong, it must be {address}.",
    ],
}
ROUTER_CONTEXT = {
    "get_order_status": ("It was a birthday present.", "I need it before the weekend.", "The app shows nothing new.",
                         "I paid for express shipping."),
    "cancel_order": ("It has not shipped yet I think.", "I ordered the wrong size.", "My card was charged already."),
    "track_shipment": ("The app says it was delivered but nothing is here.", "I'm home all day today.",
                       "It left the warehouse on Monday."),
    "request_refund": ("The box was crushed and the lamp inside is broken.", "I sent photos to your team already.",
                       "The color was not what the site showed."),
    "update_shipping_address": ("I'm moving this week.", "Nobody is home at the old address.",
                                "I'm staying with my parents for a month."),
}
OPENERS = ("", "", "", "Hi! ", "Hello. ", "Hey there. ", "Good morning. ", "Hi team, quick question. ")
CLOSERS = ("", "", "", " Thanks!", " Thank you so much.", " Cheers.", " Thanks in advance for your help.",
           " Please let me know.")
STREETS = ("12 Rue de Rivoli, Paris", "221B Baker Street, London", "5 Market St, San Francisco", "Kungsgatan 4, Stockholm",
           "Via Roma 10, Milan", "88 King St, Toronto", "Calle Mayor 3, Madrid", "Hauptstrasse 7, Berlin",
           "14 Elm Avenue, Dublin", "301 Pine Road, Seattle", "Damrak 20, Amsterdam", "9 Harbour Lane, Sydney")


def _order_id(rng: random.Random) -> str:
    return f"A-{rng.randint(100000, 999999)}"


def _amount(rng: random.Random) -> int | float:
    """A refund amount whose JSON spelling is what a customer writes: 120 or 342.99, never 342.5."""
    whole = rng.randint(5, 400)
    if rng.random() < 0.4:
        return whole
    return round(whole + rng.choice((0.99, 0.49, 0.95, 0.25, 0.75, 0.45)), 2)


def _amount_text(amount: int | float, rng: random.Random) -> str:
    number = json.dumps(amount)
    return rng.choice((f"${number}", f"${number}", f"{number} USD", f"{number} dollars"))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _customer_message(request: str, contexts: Sequence[str], rng: random.Random) -> str:
    """Greeting, the request, maybe a sentence of context, sign-off: many phrasings from few
    templates. Some customers type in lower case and skip the pleasantries. The request comes
    first: the tiny students learn routing from what the customer asks, not from the chatter."""
    if rng.random() < 0.15:
        return request
    body = _sentence(request)
    if contexts and rng.random() < 0.25:
        body = f"{body} {rng.choice(contexts)}"
    return f"{rng.choice(OPENERS)}{body}{rng.choice(CLOSERS)}"


def _tool_router(rng: random.Random) -> tuple[dict, dict]:
    tool = rng.choice(list(ROUTER_REQUESTS))
    amount = _amount(rng)
    values = {
        "order_id": _order_id(rng),
        "tracking_number": "1Z" + "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(10)),
        "amount": _amount_text(amount, rng),
        "address": rng.choice(STREETS),
    }
    text = _customer_message(rng.choice(ROUTER_REQUESTS[tool]).format(**values), ROUTER_CONTEXT[tool], rng)
    args = {name: amount if name == "amount" else values[name] for name in ROUTER_ARGUMENTS[tool]}
    request = {"model": PROD_MODEL, "messages": [{"role": "system", "content": ROUTER_SYSTEM},
                                                 {"role": "user", "content": text}],
               "tools": ROUTER_TOOLS, "tool_choice": "auto"}
    message = {"role": "assistant", "content": None, "tool_calls": [{
        "id": f"call_{rng.getrandbits(48):012x}", "type": "function",
        "function": {"name": tool, "arguments": json.dumps(args)}}]}
    return request, message


# ---------------------------------------------------------------- support_qa (chat)

SUPPORT_SYSTEM = "You are ShopCo's support assistant. Answer briefly and accurately from the help center."
SUPPORT_KB: list[tuple[list[str], str]] = [
    (["How do I reset my password?", "I forgot my password, what now?", "can't log in, how do I reset my password?",
      "the password reset link does not work, what should I do?"],
     "Go to Settings > Security and choose Reset password; we email you a link that is valid for 24 hours."),
    (["What is your return policy?", "Can I return an item I don't like?", "how many days do I have to return something?",
      "is it possible to send back shoes that don't fit?"],
     "You can return unused items within 30 days of delivery for a full refund; print the label from Orders > Return."),
    (["How long does shipping take?", "When will my order usually arrive?", "what is the shipping time to Europe?",
      "how fast is express delivery?"],
     "Standard shipping takes 3-5 business days, express 1-2 days; international orders take 5-10 days."),
    (["Do you ship internationally?", "Can you deliver to Canada?", "which countries do you ship to?",
      "do I pay customs if I order from abroad?"],
     "Yes, we ship to 40 countries; duties are shown at checkout before you pay."),
    (["How do I change my email address?", "how can I update the email on my account?",
      "I want to use a new email for my account."],
     "Open Settings > Account, edit the email field and confirm the change from the message we send to the new address."),
    (["What payment methods do you accept?", "Can I pay with PayPal?", "do you take Apple Pay?",
      "is it possible to pay by bank transfer?"],
     "We accept Visa, Mastercard, American Express, PayPal and Apple Pay."),
    (["How do I contact a human?", "I want to talk to an agent.", "is there a phone number for support?",
      "can someone from your team call me back?"],
     "Chat with an agent from Help > Contact us between 8am and 8pm CET, or request a call back there."),
    (["Is my warranty still valid?", "how long is the warranty?", "is there a warranty on electronics?",
      "my headphones stopped working after a year, are they covered?"],
     "Electronics have a 2-year warranty from the delivery date; keep your order number to make a claim."),
    (["How do I delete my account?", "please close my account.", "how can I remove all my data from your site?"],
     "Go to Settings > Privacy and choose Delete account; we erase your data within 30 days, as the law requires."),
    (["Do you have gift cards?", "can I buy a gift card for a friend?", "how do gift cards work?",
      "do your gift cards expire?"],
     "Gift cards from 10 to 500 euros are sold on the Gift cards page and never expire."),
    (["Do you offer student discounts?", "is there a discount for students?", "how do I get the student price?"],
     "Students get 10% off after verifying their status once under Settings > Discounts."),
    (["How do I apply a promo code?", "where do I enter my discount code?", "my coupon code is not accepted, why?"],
     "Enter the code in the Promo code box on the checkout page; each code works once and cannot be combined."),
]
SUPPORT_CONTEXT = ("I have been a customer for years.", "I'm on the mobile app.", "I tried the help pages already.",
                   "This is my first order with you.")


def _support_qa(rng: random.Random) -> tuple[dict, dict]:
    questions, answer = rng.choice(SUPPORT_KB)
    text = _customer_message(rng.choice(questions), SUPPORT_CONTEXT, rng)
    request = {"model": PROD_MODEL, "messages": [{"role": "system", "content": SUPPORT_SYSTEM},
                                                 {"role": "user", "content": text}]}
    return request, {"role": "assistant", "content": answer}


# ---------------------------------------------------------------- invoice_extraction (JSON)

EXTRACT_SYSTEM = "Extract vendor, invoice_number, total, currency and due_date (YYYY-MM-DD) as a JSON object."
VENDORS = ("Acme Logistics", "Nordic Paper AB", "Blue Harbor Foods", "Kite Cloud Ltd", "Verde Energy SpA",
           "Polaris Print", "Sunrise Office Supply", "Ironclad Security", "Maple Freight Inc", "Orbit Cleaning Co")
CURRENCIES = (("EUR", "€"), ("USD", "$"), ("GBP", "£"))
INVOICE_TEMPLATES = (
    "Hello, please find attached invoice {number} from {vendor}. Amount due: {symbol}{total} ({currency}), payable by {due}.",
    "Invoice {number} - {vendor}. Total {total} {currency}. Due date {due}. Thank you for your business.",
    "{vendor} billing: your invoice {number} of {symbol}{total} ({currency}) is due on {due}.",
    "Reminder from {vendor}: invoice no. {number}, {total} {currency}, must be paid before {due}.",
    "Dear customer, {vendor} has issued invoice {number}. Please pay {total} {currency} by {due}. Kind regards, Accounts.",
    "Subject: {vendor} invoice {number}. The total of {symbol}{total} {currency} falls due on {due}. Bank details attached.",
    "Hi, forwarding the {vendor} bill for last month: {number}, {currency} {total}, due {due}. Can you book it?",
)


def _invoice_total(rng: random.Random) -> float:
    # Cents never end in 0, so the JSON number is spelled exactly as in the email (1234.05, not 1234.5).
    return round(rng.randint(40, 9000) + rng.choice([c for c in range(1, 100) if c % 10]) / 100, 2)


def _invoice_extraction(rng: random.Random) -> tuple[dict, dict]:
    vendor = rng.choice(VENDORS)
    currency, symbol = rng.choice(CURRENCIES)
    total = _invoice_total(rng)
    due = (datetime(2026, 12, 1) + timedelta(days=rng.randint(0, 60))).strftime("%Y-%m-%d")
    number = f"INV-2026-{rng.randint(10000, 99999)}"
    text = rng.choice(INVOICE_TEMPLATES).format(number=number, vendor=vendor, symbol=symbol, total=json.dumps(total),
                                                currency=currency, due=due)
    request = {"model": PROD_MODEL, "response_format": {"type": "json_object"},
               "messages": [{"role": "system", "content": EXTRACT_SYSTEM}, {"role": "user", "content": text}]}
    answer = {"vendor": vendor, "invoice_number": number, "total": total, "currency": currency, "due_date": due}
    return request, {"role": "assistant", "content": json.dumps(answer)}


# ---------------------------------------------------------------- sql_helper (small)

SQL_QUESTIONS = (
    ("How many orders did each customer place?", "SELECT customer_id, count(*) FROM orders GROUP BY customer_id;"),
    ("Total revenue per month?", "SELECT date_trunc('month', created_at), sum(total) FROM orders GROUP BY 1 ORDER BY 1;"),
    ("Which products were never ordered?",
     "SELECT p.id FROM products p LEFT JOIN order_items i ON i.product_id = p.id WHERE i.id IS NULL;"),
    ("What are the ten most returned products?",
     "SELECT product_id, count(*) FROM returns GROUP BY product_id ORDER BY 2 DESC LIMIT 10;"),
)


def _sql_helper(rng: random.Random) -> tuple[dict, dict]:
    question, answer = rng.choice(SQL_QUESTIONS)
    request = {"model": PROD_MODEL, "messages": [{"role": "user", "content": question}]}
    return request, {"role": "assistant", "content": answer}


# (workload_id, share of traffic, client ids, generator). sql_helper is ~1.5%: fewer than 50
# records even over the 7-day on-demand window, so discovery skips it with the reason.
WORKLOADS: list[tuple[str, float, tuple[str, ...], Callable[[random.Random], tuple[dict, dict]]]] = [
    ("tool_router", 0.37, ("web-checkout", "mobile-ios", "mobile-android"), _tool_router),
    ("support_qa", 0.31, ("support-portal", "mobile-ios", "mobile-android"), _support_qa),
    ("invoice_extraction", 0.305, ("ap-automation", "partner-api"), _invoice_extraction),
    ("sql_helper", 0.015, ("bi-notebook",), _sql_helper),
]

# ---------------------------------------------------------------- the dirt of real logs

PII_SUFFIXES = (
    " You can reach me at {email}.", " My phone is {phone}.", " Contact: {email} / {phone}",
    " (call me on {phone} if needed)", " Please reply to {email}, not my old address.",
)
CARD_SUFFIX = " I paid with card {card}."
FIRST_NAMES = ("anna", "li", "omar", "sofia", "john", "maria", "kenji", "fatima")
PHONES = ("+1 415-555-{n:04d}", "+44 20 7946 {n:04d}", "(212) 555-{n:04d}", "+49 30 1234 {n:04d}", "415.555.{n:04d}")
TEST_CARDS = ("4111 1111 1111 1111", "5555 5555 5555 4444", "4242-4242-4242-4242", "378282246310005")


def _add_pii(request: dict, rng: random.Random) -> None:
    """Customers paste their contact details (and now and then a card number) into the chat."""
    user = next(m for m in request["messages"] if m["role"] == "user")
    if rng.random() < 0.1:
        user["content"] += CARD_SUFFIX.format(card=rng.choice(TEST_CARDS))
        return
    email = f"{rng.choice(FIRST_NAMES)}.{rng.randint(1, 999)}@{rng.choice(['example.com', 'mail.test', 'corp.example'])}"
    phone = rng.choice(PHONES).format(n=rng.randint(0, 9999))
    user["content"] += rng.choice(PII_SUFFIXES).format(email=email, phone=phone)


# What buggy clients and truncated writes produce, and the rejection each must get:
# kind -> (reason, field). Records without a valid workload id or timestamp are caught at ingest
# (nothing can route them); the rest reach a run and are quarantined by curation.
MALFORMED_KINDS: dict[str, tuple[str, str]] = {
    "truncated_json": ("invalid_json", ""),
    "missing_workload_id": ("missing_field", "workload_id"),
    "bad_timestamp": ("invalid_timestamp", "timestamp"),
    "timestamp_out_of_range": ("timestamp_out_of_range", "timestamp"),
    "injection_workload_id": ("invalid_workload_id", "workload_id"),
    "response_without_choices": ("invalid_response", "response.choices"),
    "messages_not_a_list": ("invalid_messages", "request.messages"),
    "bad_tool_arguments": ("invalid_response", "response.choices[0].message.tool_calls[0].function.arguments"),
    "empty_answer": ("invalid_response", "response.choices[0].message.content"),
}
HOSTILE_WORKLOAD_IDS = ("../../etc/passwd", "x'; DROP TABLE runs;--", "tool_router; rm -rf /", "support qa",
                        "tool_router\n")


def malform(record: dict, rng: random.Random, kind: str) -> str:
    """The JSONL line of ``record`` broken in the way ``kind`` names (a key of MALFORMED_KINDS)."""
    r = json.loads(json.dumps(record))
    message = r["response"]["choices"][0]["message"]
    if kind == "truncated_json":
        line = json.dumps(r)
        return line[: rng.randint(20, len(line) - 10)]
    if kind == "missing_workload_id":
        del r["workload_id"]
    elif kind == "bad_timestamp":
        r["timestamp"] = rng.choice(["yesterday", "2026-13-45T99:00:00Z", "2026-11-24 10:00:00", True])
    elif kind == "timestamp_out_of_range":  # a clock bug, or microseconds logged as if milliseconds
        r["timestamp"] = rng.choice([1764000000123456, -86400, "2150-01-01T00:00:00Z", "1969-12-31T23:00:00Z"])
    elif kind == "injection_workload_id":
        r["workload_id"] = rng.choice(HOSTILE_WORKLOAD_IDS)
    elif kind == "response_without_choices":
        r["response"].pop("choices")
    elif kind == "messages_not_a_list":
        r["request"]["messages"] = "where is my order?"
    elif kind == "bad_tool_arguments":
        if not message.get("tool_calls"):
            raise ValueError("bad_tool_arguments needs a record with tool calls")
        message["tool_calls"][0]["function"]["arguments"] = rng.choice(["{order_id: A-1", "A-100234", "[]"])
    elif kind == "empty_answer":  # a streamed answer logged before its first chunk
        message.update(content="", tool_calls=None)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(r)


# Relative traffic per UTC hour: quiet nights, busy office hours.
HOURLY_TRAFFIC = (2, 1, 1, 1, 1, 2, 3, 5, 7, 8, 9, 9, 8, 8, 9, 9, 8, 7, 6, 5, 4, 3, 3, 2)


def _timestamp(rng: random.Random, start: datetime, span_s: float) -> datetime:
    """A time in [start, start + span) with a daily rhythm (rejection sampling on the UTC hour)."""
    peak = max(HOURLY_TRAFFIC)
    while True:
        ts = start + timedelta(seconds=rng.randrange(int(span_s)))
        if rng.random() * peak < HOURLY_TRAFFIC[ts.hour]:
            return ts


def _completion(message: dict, rng: random.Random, created: int) -> dict:
    return {"id": f"chatcmpl-{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}", "object": "chat.completion",
            "created": created, "model": PROD_MODEL,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": rng.randint(40, 400), "completion_tokens": rng.randint(5, 120)}}


def _record(rng: random.Random, start: datetime, span_s: float, pii_rate: float,
            timestamps: str = "iso") -> tuple[datetime, dict]:
    workload_id, _, clients, make = rng.choices(WORKLOADS, [w for _, w, _, _ in WORKLOADS])[0]
    request, message = make(rng)
    if rng.random() < pii_rate:
        _add_pii(request, rng)
    ts = _timestamp(rng, start, span_s)
    # "epoch": integer epoch seconds, as the NVIDIA blueprint writes its Elasticsearch documents.
    stamp = int(ts.timestamp()) if timestamps == "epoch" else ts.isoformat().replace("+00:00", "Z")
    return ts, {"timestamp": stamp, "workload_id": workload_id,
                "client_id": rng.choice(clients), "request": request,
                "response": _completion(message, rng, int(ts.timestamp()))}


def _malformed_lines(originals: list[tuple[datetime, dict]], n_bad: int,
                    rng: random.Random) -> list[tuple[datetime, str]]:
    """``n_bad`` broken copies of random records, cycling through MALFORMED_KINDS."""
    with_calls = [pair for pair in originals if pair[1]["response"]["choices"][0]["message"].get("tool_calls")]
    kinds = list(MALFORMED_KINDS)
    out = []
    for i in range(n_bad):
        kind = kinds[i % len(kinds)]
        pool = with_calls if kind == "bad_tool_arguments" else originals
        if not pool:  # a tiny sample without any tool call
            kind, pool = "truncated_json", originals
        ts, record = rng.choice(pool)
        out.append((ts, malform(record, rng, kind)))
    return out


def generate_logs(*, n_records: int = 2400, days: int = 7, end: datetime | None = None, seed: int = 7,
                  duplicate_rate: float = 0.03, malformed_rate: float = 0.02, pii_rate: float = 0.10,
                  timestamps: str = "iso") -> list[str]:
    """``n_records`` JSONL lines over the ``days`` days before ``end`` (default: today 00:00 UTC),
    sorted by time. Of them, ``duplicate_rate`` are exact copies of another line and
    ``malformed_rate`` are broken, cycling through MALFORMED_KINDS. ``timestamps`` is ``iso``
    (ISO-8601 UTC) or ``epoch`` (integer epoch seconds, the blueprint's format)."""
    if not (0 <= duplicate_rate and 0 <= malformed_rate and duplicate_rate + malformed_rate < 1 and days > 0):
        raise ValueError("need days > 0 and 0 <= duplicate_rate + malformed_rate < 1")
    if timestamps not in ("iso", "epoch"):
        raise ValueError("timestamps is 'iso' or 'epoch'")
    rng = random.Random(seed)
    end = end or datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    span_s = (end - start).total_seconds()
    n_dup, n_bad = int(n_records * duplicate_rate), int(n_records * malformed_rate)
    originals = [_record(rng, start, span_s, pii_rate, timestamps) for _ in range(max(0, n_records - n_dup - n_bad))]
    lines = [(ts, json.dumps(record)) for ts, record in originals]
    if originals:
        # A retrying client logs the same call twice.
        lines += [lines[rng.randrange(len(originals))] for _ in range(n_dup)]
        lines += _malformed_lines(originals, n_bad, rng)
    lines.sort(key=lambda pair: pair[0])  # stable: a duplicate stays next to its original
    return [line for _, line in lines]


def write_jsonl(path: Path, lines: Sequence[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.rename(path)  # a half-written demo file is never imported


# ---------------------------------------------------------------- generic pre-training corpus
#
# The student learns the *format* here (role markers, `call NAME {json}`, one-line JSON) on other
# tools and other schemas, never production's tools, argument names or invoice fields: whatever
# it knows about the production tasks afterwards, the flywheel taught it.

GENERIC_SYSTEMS = ("You are a helpful assistant.", "Answer briefly.", "Use a tool when one fits.",
                   "Reply with a JSON object.", "Be friendly and concise.")
OTHER_TOOLS = {
    "get_weather": (["What's the weather in {city}?", "Will it rain in {city} today?", "weather {city}",
                     "Is it cold in {city} right now?"], {"city": "city"}),
    "play_song": (["Play {song} please", "put on {song}", "I want to hear {song}"], {"title": "song"}),
    "set_alarm": (["Wake me up at {time}", "set an alarm for {time}", "alarm {time} tomorrow"], {"time": "time"}),
    "add_calendar_event": (["Add {event} to my calendar on {date}", "schedule {event} for {date}",
                            "put {event} on {date} in my agenda"], {"title": "event", "date": "date"}),
    "turn_on_lights": (["Turn on the lights in the {room}", "lights on in the {room}", "switch on the {room} lamp"],
                       {"room": "room"}),
    "convert_currency": (["Convert {value} {src} to {dst}", "how much is {value} {src} in {dst}"],
                         {"value": "value", "from": "src", "to": "dst"}),
    "send_message": (["Text {person} that I am late", "send a message to {person}: running late"],
                     {"to": "person", "text": "late"}),
    # Identifiers copied from the text: a general skill, on other tools than production's.
    "check_flight": (["Is flight {flight} on time?", "status of flight {flight}", "my flight is {flight}, any delay?"],
                     {"flight_number": "flight"}),
    "pay_bill": (["Pay bill {bill} from my account", "please settle bill {bill}", "I need to pay {bill}"],
                 {"bill_id": "bill"}),
    "find_booking": (["Find booking {booking} for {person}", "look up reservation {booking}"],
                     {"booking_ref": "booking"}),
}
FILL = {
    "city": ("Oslo", "Lima", "Cairo", "Seoul", "Denver", "Porto", "Nairobi", "Hanoi"),
    "song": ("Blue Moon", "Yellow Submarine", "Clair de Lune", "Hey Jude", "Take Five"),
    "time": ("6:30", "7:00", "5:45", "8:15", "9:00"),
    "event": ("dentist", "team lunch", "yoga class", "board meeting", "call with Sam"),
    "date": ("2026-12-03", "2026-12-10", "2027-01-05", "2026-12-24"),
    "room": ("kitchen", "bedroom", "garage", "living room", "office"),
    "src": ("EUR", "USD", "JPY"), "dst": ("GBP", "CHF", "SEK"),
    "person": ("Alex", "Mum", "Priya", "Tom"), "late": ("I am late",),
}
# Random identifiers, so copying is learnt rather than memorised.
IDENTIFIERS: dict[str, Callable[[random.Random], str]] = {
    "flight": lambda rng: f"{rng.choice(['LH', 'BA', 'AF', 'UA'])}{rng.randint(100, 9999)}",
    "bill": lambda rng: f"B-{rng.randint(100000, 999999)}",
    "booking": lambda rng: "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6)),
    "value": lambda rng: f"{rng.randint(1, 900)}.{rng.choice(['00', '50', '25'])}",
}
SMALL_TALK = [
    ("Hi, how are you?", "I'm doing well, thank you. How can I help you today?"),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Tell me a fun fact.", "Octopuses have three hearts and blue blood."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Can you recommend a book?", "Try 'The Left Hand of Darkness' by Ursula K. Le Guin."),
    ("Why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue."),
    ("What is 12 times 12?", "12 times 12 is 144."),
    ("Thanks for your help!", "You're welcome, have a nice day."),
    ("How do plants make food?", "Plants use photosynthesis to turn light, water and carbon dioxide into sugar."),
    ("How far is the Moon?", "The Moon is about 384,000 kilometres from Earth."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Give me a tip for sleeping better.", "Keep a regular bedtime and avoid screens for an hour before sleep."),
    ("How many continents are there?", "There are seven continents."),
    ("What language is spoken in Brazil?", "Portuguese is the main language of Brazil."),
]
OTHER_JSON = [
    ("Extract the dish, minutes and servings: {dish} takes {minutes} minutes and serves {servings}.",
     lambda v: {"dish": v["dish"], "minutes": int(v["minutes"]), "servings": int(v["servings"])}),
    ("Extract name and city as JSON: {name} lives in {city}.", lambda v: {"name": v["name"], "city": v["city"]}),
    ("Extract the event, city and date: the {event} in {city} is on {date}.",
     lambda v: {"event": v["event"], "city": v["city"], "date": v["date"]}),
    ("Extract product, quantity and color: I need {quantity} {color} {product}.",
     lambda v: {"product": v["product"], "quantity": int(v["quantity"]), "color": v["color"]}),
]
JSON_FILL = {"dish": ("Pasta al pomodoro", "Green curry", "Pancakes"), "minutes": ("15", "30", "45"),
             "servings": ("2", "4", "6"), "name": ("Ada", "Linus", "Grace"), "city": FILL["city"],
             "event": ("book fair", "jazz night", "marathon"), "date": FILL["date"],
             "quantity": ("2", "3", "12"), "color": ("red", "green", "black"), "product": ("mugs", "chairs", "pens")}


def _maybe_system(rng: random.Random, messages: list[dict]) -> list[dict]:
    # Production prompts start with a system line: the <system> marker must be seen in pre-training.
    if rng.random() < 0.4:
        return [{"role": "system", "content": rng.choice(GENERIC_SYSTEMS)}, *messages]
    return messages


def _generic_chat(rng: random.Random) -> tuple[dict, dict]:
    question, answer = rng.choice(SMALL_TALK)
    request = {"messages": _maybe_system(rng, [{"role": "user", "content": question}])}
    return request, {"role": "assistant", "content": answer}


# What the other tools do, in the words a tool schema uses (production's schemas carry descriptions too).
OTHER_TOOL_DESCRIPTIONS = {
    "get_weather": "Get the current weather for a city", "play_song": "Play a song by its title",
    "set_alarm": "Set an alarm for a time of day", "add_calendar_event": "Add an event to the calendar on a date",
    "turn_on_lights": "Switch on the lights in a room", "convert_currency": "Convert money from one currency to another",
    "send_message": "Send a text message to a contact", "check_flight": "Check the status of a flight",
    "pay_bill": "Pay a bill from the default account", "find_booking": "Find a booking by its reference",
}


def _generic_tool_call(rng: random.Random, tool_defs: list[dict]) -> tuple[dict, dict]:
    name = rng.choice(list(OTHER_TOOLS))
    phrasings, arg_slots = OTHER_TOOLS[name]
    values = {slot: IDENTIFIERS[slot](rng) if slot in IDENTIFIERS else rng.choice(FILL[slot])
              for slot in sorted(set(arg_slots.values()) | {"person"})}
    # Four to seven tools, as many as production offers, so the student sees prompts as long as
    # production's (positions it has never attended over, LoRA would have to teach it first).
    tools = rng.sample(tool_defs, k=rng.randint(4, 7))
    if name not in [t["function"]["name"] for t in tools]:
        tools[rng.randrange(len(tools))] = tool_defs[list(OTHER_TOOLS).index(name)]
    messages = [{"role": "user", "content": rng.choice(phrasings).format(**values)}]
    if rng.random() < 0.3:  # a conversation that went on a little before the call
        question, answer = rng.choice(SMALL_TALK)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}, *messages]
    request = {"tools": tools, "messages": _maybe_system(rng, messages)}
    args = {arg: values[slot] for arg, slot in arg_slots.items()}
    return request, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def _generic_json(rng: random.Random) -> tuple[dict, dict]:
    template, build = rng.choice(OTHER_JSON)
    values = {k: rng.choice(v) for k, v in JSON_FILL.items()}
    request = {"response_format": {"type": "json_object"},
               "messages": _maybe_system(rng, [{"role": "user", "content": template.format(**values)}])}
    return request, {"role": "assistant", "content": json.dumps(build(values))}


def generic_corpus(*, n_texts: int = 4000, seed: int = 11) -> list[dict]:
    """Pre-training conversations ``{"messages": [...], "tools": [...]}``: a third each of small talk,
    calls of other tools, and JSON of other schemas. The student's builder renders them through
    its chat template, the way every prompt and training example is rendered."""
    rng = random.Random(seed)
    tool_defs = [_tool(name, OTHER_TOOL_DESCRIPTIONS[name], **{k: "string" for k in spec[1]})
                 for name, spec in OTHER_TOOLS.items()]
    docs = []
    for i in range(n_texts):
        kind = i % 3
        if kind == 0:
            request, message = _generic_chat(rng)
        elif kind == 1:
            request, message = _generic_tool_call(rng, tool_defs)
        else:
            request, message = _generic_json(rng)
        doc: dict = {"messages": [*chat_messages(request), clean_message(message)]}
        tools = request_tools(request)
        if tools:
            doc["tools"] = tools
        docs.append(doc)
    return docs
