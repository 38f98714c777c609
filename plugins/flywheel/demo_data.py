"""Seeded demo production logs, and the generic corpus the local student is pre-trained on.

The logs look like what an OpenAI-compatible application writes per call — ``{timestamp,
workload_id, client_id, request, response}`` — for four workloads of different kinds, with the
dirt of real logs: exact duplicates, malformed records, PII in user text.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flywheel.prompts import render_completion, render_prompt

PROD_MODEL = "prod-llm-70b"
CLIENTS = ("web-checkout", "mobile-ios", "mobile-android", "support-portal", "partner-api")

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

ROUTER_TEMPLATES: dict[str, list[str]] = {
    "get_order_status": [
        "Hi, where is my order {order_id}?", "what's the status of order {order_id}", "Has order {order_id} shipped yet?",
        "I ordered a week ago, order number {order_id}. Any news?", "status {order_id} please",
        "Can you check on order {order_id} for me?", "Is my order {order_id} on its way?",
    ],
    "cancel_order": [
        "Please cancel order {order_id}.", "I want to cancel my order {order_id}", "cancel {order_id}, I changed my mind",
        "Can you stop order {order_id} before it ships?", "I ordered by mistake, please cancel {order_id}",
        "Cancel the order {order_id} right away please",
    ],
    "track_shipment": [
        "Where is my parcel {tracking_number}?", "track {tracking_number}", "Can you track package {tracking_number} for me",
        "My tracking number is {tracking_number}, where is it now?", "Any update on shipment {tracking_number}?",
        "The courier gave me {tracking_number}. Where is the box?",
    ],
    "request_refund": [
        "I want a refund of {amount} for order {order_id}", "Please refund {amount} on {order_id}, the item was broken",
        "Order {order_id} arrived damaged, I'd like {amount} back", "refund {amount} order {order_id}",
        "You charged me twice for {order_id}, please refund {amount}",
    ],
    "update_shipping_address": [
        "Please ship order {order_id} to {address} instead", "Change the address of {order_id} to {address}",
        "I moved! New address for order {order_id}: {address}", "deliver {order_id} to {address} please",
        "Can you send order {order_id} to {address}?",
    ],
}

STREETS = ("12 Rue de Rivoli, Paris", "221B Baker Street, London", "5 Market St, San Francisco", "Kungsgatan 4, Stockholm",
           "Via Roma 10, Milan", "88 King St, Toronto", "Calle Mayor 3, Madrid", "Hauptstrasse 7, Berlin")


def _tool_router(rng: random.Random) -> tuple[dict, dict]:
    tool = rng.choice(list(ROUTER_TEMPLATES))
    values = {
        "order_id": f"A-{rng.randint(100000, 999999)}",
        "tracking_number": "1Z" + "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(10)),
        "amount": f"{rng.randint(5, 400)}.{rng.choice(['00', '50', '99', '25'])}",
        "address": rng.choice(STREETS),
    }
    text = rng.choice(ROUTER_TEMPLATES[tool]).format(
        **{**values, "amount": f"${values['amount']}" if rng.random() < 0.7 else f"{values['amount']} USD"})
    params = ROUTER_TOOLS[[t["function"]["name"] for t in ROUTER_TOOLS].index(tool)]["function"]["parameters"]
    args = {k: (float(values[k]) if k == "amount" else values[k]) for k in params["required"]}
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
    (["How do I reset my password?", "I forgot my password", "can't log in, how to reset password"],
     "Go to Settings > Security and choose Reset password; we email you a link that is valid for 24 hours."),
    (["What is your return policy?", "Can I return an item?", "how many days do I have to return something"],
     "You can return unused items within 30 days of delivery for a full refund; print the label from Orders > Return."),
    (["How long does shipping take?", "When will my order arrive?", "shipping time to Europe?"],
     "Standard shipping takes 3-5 business days, express 1-2 days; international orders take 5-10 days."),
    (["Do you ship internationally?", "Can you deliver to Canada?", "which countries do you ship to"],
     "Yes, we ship to 40 countries; duties are shown at checkout before you pay."),
    (["How do I change my email address?", "update the email on my account", "I want to use a new email"],
     "Open Settings > Account, edit the email field and confirm the change from the message we send to the new address."),
    (["What payment methods do you accept?", "Can I pay with PayPal?", "do you take Apple Pay"],
     "We accept Visa, Mastercard, American Express, PayPal and Apple Pay."),
    (["How do I contact a human?", "I want to talk to an agent", "is there a phone number for support"],
     "Chat with an agent from Help > Contact us between 8am and 8pm CET, or request a call back there."),
    (["Is my warranty still valid?", "how long is the warranty", "warranty on electronics?"],
     "Electronics have a 2-year warranty from the delivery date; keep your order number to make a claim."),
    (["How do I delete my account?", "close my account please", "remove all my data"],
     "Go to Settings > Privacy and choose Delete account; we erase your data within 30 days, as the law requires."),
    (["Do you have gift cards?", "can I buy a gift card", "how do gift cards work"],
     "Gift cards from 10 to 500 euros are sold on the Gift cards page and never expire."),
]
SUPPORT_OPENERS = ("", "Hi! ", "Hello, ", "Quick question: ", "Hey there. ", "Good morning, ")


def _support_qa(rng: random.Random) -> tuple[dict, dict]:
    questions, answer = rng.choice(SUPPORT_KB)
    text = rng.choice(SUPPORT_OPENERS) + rng.choice(questions)
    request = {"model": PROD_MODEL, "messages": [{"role": "system", "content": SUPPORT_SYSTEM},
                                                 {"role": "user", "content": text}]}
    return request, {"role": "assistant", "content": answer}


# ---------------------------------------------------------------- invoice_extraction (JSON)

EXTRACT_SYSTEM = "Extract vendor, invoice_number, total, currency and due_date (YYYY-MM-DD) as a JSON object."
VENDORS = ("Acme Logistics", "Nordic Paper AB", "Blue Harbor Foods", "Kite Cloud Ltd", "Verde Energy SpA",
           "Polaris Print", "Sunrise Office Supply", "Ironclad Security")
CURRENCIES = (("EUR", "€"), ("USD", "$"), ("GBP", "£"))
INVOICE_TEMPLATES = (
    "Hello, please find attached invoice {number} from {vendor}. Amount due: {symbol}{total} ({currency}), payable by {due}.",
    "Invoice {number} - {vendor}. Total {total} {currency}. Due date {due}. Thank you for your business.",
    "{vendor} billing: your invoice {number} of {symbol}{total} is due on {due}.",
    "Reminder from {vendor}: invoice no. {number}, {total} {currency}, must be paid before {due}.",
)


def _invoice_extraction(rng: random.Random) -> tuple[dict, dict]:
    vendor = rng.choice(VENDORS)
    currency, symbol = rng.choice(CURRENCIES)
    total = f"{rng.randint(40, 9000)}.{rng.randint(0, 99):02d}"
    due = (datetime(2026, 12, 1) + timedelta(days=rng.randint(0, 60))).strftime("%Y-%m-%d")
    number = f"INV-2026-{rng.randint(10000, 99999)}"
    text = rng.choice(INVOICE_TEMPLATES).format(number=number, vendor=vendor, symbol=symbol, total=total,
                                                currency=currency, due=due)
    request = {"model": PROD_MODEL, "response_format": {"type": "json_object"},
               "messages": [{"role": "system", "content": EXTRACT_SYSTEM}, {"role": "user", "content": text}]}
    answer = {"vendor": vendor, "invoice_number": number, "total": float(total), "currency": currency, "due_date": due}
    return request, {"role": "assistant", "content": json.dumps(answer)}


# ---------------------------------------------------------------- sql_helper (small)

SQL_QUESTIONS = (
    ("How many orders did each customer place?", "SELECT customer_id, count(*) FROM orders GROUP BY customer_id;"),
    ("Total revenue per month?", "SELECT date_trunc('month', created_at), sum(total) FROM orders GROUP BY 1 ORDER BY 1;"),
    ("Which products were never ordered?",
     "SELECT p.id FROM products p LEFT JOIN order_items i ON i.product_id = p.id WHERE i.id IS NULL;"),
)


def _sql_helper(rng: random.Random) -> tuple[dict, dict]:
    question, answer = rng.choice(SQL_QUESTIONS)
    request = {"model": PROD_MODEL, "messages": [{"role": "user", "content": question}]}
    return request, {"role": "assistant", "content": answer}


WORKLOADS: list[tuple[str, float, Callable[[random.Random], tuple[dict, dict]]]] = [
    ("tool_router", 0.37, _tool_router),
    ("support_qa", 0.31, _support_qa),
    ("invoice_extraction", 0.305, _invoice_extraction),
    ("sql_helper", 0.015, _sql_helper),
]

PII_SUFFIXES = (
    " You can reach me at {email}.", " My phone is {phone}.", " Contact: {email} / {phone}",
    " (call me on {phone} if needed)",
)
FIRST = ("anna", "li", "omar", "sofia", "john", "maria", "kenji", "fatima")
PHONES = ("+1 415-555-{n:04d}", "+44 20 7946 {n:04d}", "(212) 555-{n:04d}", "+49 30 1234 {n:04d}")


def _add_pii(request: dict, rng: random.Random) -> None:
    user = next(m for m in request["messages"] if m["role"] == "user")
    email = f"{rng.choice(FIRST)}.{rng.randint(1, 999)}@{rng.choice(['example.com', 'mail.test', 'corp.example'])}"
    phone = rng.choice(PHONES).format(n=rng.randint(0, 9999))
    user["content"] += rng.choice(PII_SUFFIXES).format(email=email, phone=phone)


def _completion(message: dict, rng: random.Random, created: int) -> dict:
    return {"id": f"chatcmpl-{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}", "object": "chat.completion",
            "created": created, "model": PROD_MODEL,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": rng.randint(40, 400), "completion_tokens": rng.randint(5, 120)}}


# Malformed records: what buggy clients and truncated writes produce. The first group cannot be
# routed to a workload (caught at ingest), the second is caught per workload by curation.
def _malformed(record: dict, rng: random.Random, kind: str) -> str:
    r = json.loads(json.dumps(record))
    if kind == "truncated_json":
        line = json.dumps(r)
        return line[: rng.randint(20, len(line) - 10)]
    if kind == "missing_workload_id":
        del r["workload_id"]
    elif kind == "bad_timestamp":
        r["timestamp"] = rng.choice(["yesterday", "2026-13-45T99:00:00Z", 1732500000])
    elif kind == "injection_workload_id":
        r["workload_id"] = rng.choice(["../../etc/passwd", "x'; DROP TABLE runs;--", "tool_router; rm -rf /"])
    elif kind == "response_without_choices":
        r["response"].pop("choices")
    elif kind == "messages_not_a_list":
        r["request"]["messages"] = "where is my order?"
    elif kind == "bad_tool_arguments":
        msg = r["response"]["choices"][0]["message"]
        if msg.get("tool_calls"):
            msg["tool_calls"][0]["function"]["arguments"] = "{order_id: A-1"
        else:
            msg["content"] = ""
    return json.dumps(r)


MALFORMED_KINDS = ("truncated_json", "missing_workload_id", "bad_timestamp", "injection_workload_id",
                   "response_without_choices", "messages_not_a_list", "bad_tool_arguments")


def generate_logs(*, n_records: int = 2400, days: int = 7, end: datetime | None = None, seed: int = 7,
                  duplicate_rate: float = 0.03, malformed_rate: float = 0.02, pii_rate: float = 0.10) -> list[str]:
    """``n_records`` JSONL lines over ``days`` days ending at ``end``, sorted by time."""
    rng = random.Random(seed)
    end = end or datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    span = (end - start).total_seconds()
    weights = [w for _, w, _ in WORKLOADS]
    n_dup = int(n_records * duplicate_rate)
    n_bad = int(n_records * malformed_rate)
    records: list[tuple[datetime, str]] = []
    for _ in range(n_records - n_dup - n_bad):
        workload_id, _, make = rng.choices(WORKLOADS, weights)[0]
        request, message = make(rng)
        if rng.random() < pii_rate:
            _add_pii(request, rng)
        ts = start + timedelta(seconds=rng.uniform(0, span - 1))
        record = {"timestamp": ts.isoformat().replace("+00:00", "Z"), "workload_id": workload_id,
                  "client_id": rng.choice(CLIENTS), "request": request,
                  "response": _completion(message, rng, int(ts.timestamp()))}
        records.append((ts, json.dumps(record)))
    originals = list(records)
    for i in range(n_dup):  # a retrying client logs the same call twice
        records.append(originals[rng.randrange(len(originals))])
    for i in range(n_bad):
        ts, line = originals[rng.randrange(len(originals))]
        records.append((ts, _malformed(json.loads(line), rng, MALFORMED_KINDS[i % len(MALFORMED_KINDS)])))
    records.sort(key=lambda pair: pair[0])
    return [line for _, line in records]


def write_jsonl(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# ---------------------------------------------------------------- generic pre-training corpus

OTHER_TOOLS = {
    "get_weather": (["What's the weather in {city}?", "Will it rain in {city} today?", "weather {city}",
                     "Is it cold in {city} right now?"], {"city": "city"}),
    "play_song": (["Play {song} please", "put on {song}", "I want to hear {song}"], {"title": "song"}),
    "set_alarm": (["Wake me up at {time}", "set an alarm for {time}", "alarm {time} tomorrow"], {"time": "time"}),
    "add_calendar_event": (["Add {event} to my calendar on {date}", "schedule {event} for {date}",
                            "put {event} on {date} in my agenda"], {"title": "event", "date": "date"}),
    "turn_on_lights": (["Turn on the lights in the {room}", "lights on in the {room}", "switch on the {room} lamp"],
                       {"room": "room"}),
    "convert_currency": (["Convert {amount} {src} to {dst}", "how much is {amount} {src} in {dst}"],
                         {"amount": "amount", "from": "src", "to": "dst"}),
    "send_message": (["Text {person} that I am late", "send a message to {person}: running late"],
                     {"to": "person", "text": "late"}),
    # Identifiers copied from the text: a general skill, on other tools than production's.
    "check_flight": (["Is flight {flight} on time?", "status of flight {flight}", "my flight is {flight}, any delay?"],
                     {"flight_number": "flight"}),
    "pay_invoice": (["Pay bill {bill} from my account", "please settle bill {bill}", "I need to pay {bill}"],
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
    "amount": ("20", "150", "99.5", "1200"),
    "src": ("EUR", "USD", "JPY"), "dst": ("GBP", "CHF", "SEK"),
    "person": ("Alex", "Mum", "Priya", "Tom"), "late": ("I am late",),
}
# Random identifiers, so copying is learnt rather than memorised.
IDENTIFIERS = {
    "flight": lambda rng: f"{rng.choice(['LH', 'BA', 'AF', 'UA'])}{rng.randint(100, 9999)}",
    "bill": lambda rng: f"B-{rng.randint(100000, 999999)}",
    "booking": lambda rng: "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6)),
    "amount": lambda rng: f"{rng.randint(1, 900)}.{rng.choice(['00', '50', '25'])}",
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
]
OTHER_JSON = [
    ("Extract the dish, minutes and servings: {dish} takes {minutes} minutes and serves {servings}.",
     lambda v: {"dish": v["dish"], "minutes": int(v["minutes"]), "servings": int(v["servings"])}),
    ("Extract name and city as JSON: {name} lives in {city}.", lambda v: {"name": v["name"], "city": v["city"]}),
]
JSON_FILL = {"dish": ("Pasta al pomodoro", "Green curry", "Pancakes"), "minutes": ("15", "30", "45"),
             "servings": ("2", "4", "6"), "name": ("Ada", "Linus", "Grace"), "city": FILL["city"]}


def generic_corpus(*, n_texts: int = 4000, seed: int = 11) -> list[str]:
    """Pre-training texts in the prompt format: small talk, other tools, other JSON schemas."""
    rng = random.Random(seed)
    tool_defs = [_tool(name, name.replace("_", " "), **{k: "string" for k in spec[1]})
                 for name, spec in OTHER_TOOLS.items()]
    texts = []
    for i in range(n_texts):
        kind = i % 3
        if kind == 0:
            question, answer = rng.choice(SMALL_TALK)
            request = {"messages": [{"role": "user", "content": question}]}
            message: dict[str, Any] = {"role": "assistant", "content": answer}
        elif kind == 1:
            name = rng.choice(list(OTHER_TOOLS))
            phrasings, arg_slots = OTHER_TOOLS[name]
            values = {slot: IDENTIFIERS[slot](rng) if slot in IDENTIFIERS else rng.choice(FILL[slot])
                      for slot in set(arg_slots.values()) | {"person"}}
            tools = rng.sample(tool_defs, k=min(len(tool_defs), rng.randint(3, 5)))
            if name not in [t["function"]["name"] for t in tools]:
                tools[0] = tool_defs[list(OTHER_TOOLS).index(name)]
            request = {"tools": tools, "messages": [{"role": "user", "content": rng.choice(phrasings).format(**values)}]}
            args = {arg: values[slot] for arg, slot in arg_slots.items()}
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}
        else:
            template, build = rng.choice(OTHER_JSON)
            values = {k: rng.choice(v) for k, v in JSON_FILL.items()}
            request = {"response_format": {"type": "json_object"},
                       "messages": [{"role": "user", "content": template.format(**values)}]}
            message = {"role": "assistant", "content": json.dumps(build(values))}
        texts.append(render_prompt(request) + " " + render_completion(message))
    return texts
