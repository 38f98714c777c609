"""A seeded corpus of log records with planted PII and look-alike decoys, for measuring redaction.

Each record is a chat.completions exchange in the blueprint's format with PII planted in several
places — the user's text, tool-call arguments (strings, and numbers as values), a message ``name``,
``request.user``, a tool description, an extra field — in several formats per entity type. The
ground truth is the list of planted (entity, value) pairs. Decoys that must *not* be redacted
(order and invoice numbers, dates, amounts, versions, tracking numbers, UUIDs, Luhn-invalid card
numbers, IBANs with a wrong checksum, impossible SSNs and IPs) are mixed in, so that precision is
measured against realistic temptations. Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from typing import Any

ENTITIES = ("email", "phone", "card", "iban", "ssn", "ip", "url_credentials", "api_key")


@dataclass
class CorpusRecord:
    record: dict[str, Any]
    planted: list[tuple[str, str]] = field(default_factory=list)   # (entity, value as it appears)
    decoys: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- generators per entity

FIRST = ("anna", "li.wei", "omar", "sofia", "john.smith", "maria", "kenji", "fatima", "jörg", "zoë", "renée")
DOMAINS = ("example.com", "mail.example.org", "corp.example.co.uk", "exämple.de", "例子.广告", "example.io")


def email(rng: random.Random) -> str:
    local = rng.choice(FIRST) + rng.choice(["", str(rng.randint(1, 999)), "+shop", "_" + rng.choice(FIRST)])
    if rng.random() < 0.1:
        local = "用户" + str(rng.randint(1, 99))
    value = f"{local}@{rng.choice(DOMAINS)}"
    return value.upper() if rng.random() < 0.05 else value


PHONE_NATIONAL = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "IN", "BR", "AU", "CA")
PHONE_INTERNATIONAL_ONLY = ("JP", "MX", "ZA", "CH", "PL")


def phone(rng: random.Random) -> str:
    import phonenumbers
    from phonenumbers import PhoneNumberFormat as F

    region = rng.choice(PHONE_NATIONAL + PHONE_INTERNATIONAL_ONLY)
    kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    example = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    digits = str(example.national_number)
    for _ in range(50):  # vary the last digits, keep the number valid
        tail = "".join(rng.choice(string.digits) for _ in range(4))
        candidate = phonenumbers.parse(f"+{example.country_code}{digits[:-4]}{tail}", None)
        if phonenumbers.is_valid_number(candidate):
            break
    else:
        candidate = example
    fmt = rng.choice([F.INTERNATIONAL, F.E164] + ([F.NATIONAL] * 2 if region in PHONE_NATIONAL else []))
    return phonenumbers.format_number(candidate, fmt)


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(body)):
        d = int(d)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "amex", "discover"])
    if kind == "amex":
        number = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
        groups = [number[:4], number[4:10], number[10:]]
    else:
        prefix = {"visa": "4", "mc": rng.choice(["51", "52", "53", "54", "55"]), "discover": "6011"}[kind]
        number = _luhn_complete(prefix, 16, rng)
        groups = [number[i:i + 4] for i in range(0, 16, 4)]
    return rng.choice([number, " ".join(groups), "-".join(groups)])


IBAN_FORMATS = {"DE": (8, 10), "GB": (None, None), "FR": None, "NL": None, "ES": None, "IT": None}
IBAN_LENGTHS = {"DE": 22, "GB": 22, "FR": 27, "NL": 18, "ES": 24, "IT": 27}


def _iban_bban(country: str, rng: random.Random) -> str:
    digits = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    upper = lambda n: "".join(rng.choice(string.ascii_uppercase) for _ in range(n))  # noqa: E731
    return {"DE": lambda: digits(18), "GB": lambda: upper(4) + digits(14), "FR": lambda: digits(10) + upper(1) + digits(10) + "00"[:0] + digits(2),
            "NL": lambda: upper(4) + digits(10), "ES": lambda: digits(20), "IT": lambda: upper(1) + digits(10) + digits(12)}[country]()


def _iban_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{98 - number % 97:02d}"


def iban(rng: random.Random, *, valid: bool = True) -> str:
    country = rng.choice(list(IBAN_LENGTHS))
    bban = _iban_bban(country, rng)
    check = _iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 50)) % 97 + 2:02d}"
    value = country + check + bban
    if rng.random() < 0.5:
        value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def ssn(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    sep = rng.choice(["-", "-", " "])
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


def ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return f"2001:db8::{groups[0]}:{groups[1]}"
    return ":".join(groups)


def url_credentials(rng: random.Random) -> tuple[str, str]:
    user = rng.choice(["admin", "svc_app", "deploy", "root"])
    password = "".join(rng.choice(string.ascii_letters + string.digits + "!$%") for _ in range(rng.randint(8, 16)))
    host = rng.choice(["db.internal:5432/app", "redis.example.com:6379", "ftp.example.org/pub"])
    scheme = rng.choice(["postgres", "https", "redis", "ftp", "mongodb"])
    return f"{scheme}://{user}:{password}@{host}", f"{user}:{password}"


def api_key(rng: random.Random) -> tuple[str, str]:
    """(the text that carries it, the secret itself)."""
    alnum = string.ascii_letters + string.digits
    kind = rng.choice(["openai", "github", "aws", "slack", "jwt", "bearer", "assignment"])
    if kind == "openai":
        key = "sk-proj-" + "".join(rng.choice(alnum) for _ in range(40))
        return key, key
    if kind == "github":
        key = "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
        return key, key
    if kind == "aws":
        key = "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        return key, key
    if kind == "slack":
        key = "xoxb-" + "-".join("".join(rng.choice(string.digits) for _ in range(12)) for _ in range(2)) + "-" + \
            "".join(rng.choice(alnum) for _ in range(24))
        return key, key
    if kind == "jwt":
        part = lambda n: "".join(rng.choice(alnum + "-_") for _ in range(n))  # noqa: E731
        key = "eyJ" + part(30) + "." + part(40) + "." + part(43)
        return key, key
    token = "".join(rng.choice(alnum) for _ in range(rng.randint(20, 40)))
    if kind == "bearer":
        return f"Authorization: Bearer {token}", token
    name = rng.choice(["api_key", "API_KEY", "apiKey", "token", "secret", "password"])
    return f"{name}={token}", token


# ---------------------------------------------------------------- decoys

def decoy(rng: random.Random) -> str:
    kind = rng.randrange(14)
    digits = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    if kind == 0:
        return f"A-{rng.randint(100000, 999999)}"
    if kind == 1:
        return f"INV-2026-{rng.randint(10000, 99999)}"
    if kind == 2:
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == 3:
        return f"${rng.randint(1, 9)},{rng.randint(100, 999)}.{rng.randint(10, 99)}"
    if kind == 4:
        return f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
    if kind == 5:
        return "1Z" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    if kind == 6:
        import uuid

        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == 7:  # a 16-digit number that fails the Luhn check
        number = _luhn_complete("4", 16, rng)
        return number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    if kind == 8:
        return iban(rng, valid=False)
    if kind == 9:  # impossible SSNs: area 000, 666 or 9xx, group 00, serial 0000
        return rng.choice([f"000-{digits(2)}-{digits(4)}", f"666-{digits(2)}-{digits(4)}",
                           f"9{digits(2)}-{digits(2)}-{digits(4)}", f"{rng.randint(100, 599)}-00-{digits(4)}"])
    if kind == 10:
        return f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"
    if kind == 11:
        return f"room {rng.randint(100, 999)}, floor {rng.randint(1, 30)}"
    if kind == 12:
        return "".join(rng.choice("0123456789abcdef") for _ in range(40))  # a commit hash
    return f"SKU {digits(5)}-{digits(3)}-{digits(4)}-X"


# ---------------------------------------------------------------- records

TEMPLATES = (
    "Hi, please update my account. {pii} Also order {decoy} is late.",
    "My details: {pii}. The reference on the letter is {decoy}.",
    "{decoy} was charged twice; contact me via {pii} please.",
    "I tried again with {pii} and it still fails (ref {decoy}).",
    "Can you check {decoy}? You can reach me at {pii}, thanks!",
)
LABELS = {"email": "my email", "phone": "my phone number", "card": "my card", "iban": "my IBAN", "ssn": "my SSN",
          "ip": "my IP", "url_credentials": "the connection string", "api_key": "the key"}


def _plant(entity: str, rng: random.Random) -> tuple[str, str]:
    """(text to insert, the value that must disappear)."""
    if entity == "url_credentials":
        return url_credentials(rng)
    if entity == "api_key":
        return api_key(rng)
    value = {"email": email, "phone": phone, "card": card, "iban": iban, "ssn": ssn, "ip": ip}[entity](rng)
    return f"{LABELS[entity]} is {value}", value


def corpus(n: int = 1000, seed: int = 17) -> list[CorpusRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        entity = ENTITIES[i % len(ENTITIES)]
        text, value = _plant(entity, rng)
        dec = decoy(rng)
        item = CorpusRecord(record={}, planted=[(entity, value)], decoys=[dec])
        user = rng.choice(TEMPLATES).format(pii=text, decoy=dec)
        request: dict[str, Any] = {"model": "prod", "messages": [
            {"role": "system", "content": "You are the support assistant of ShopCo."},
            {"role": "user", "content": user}]}
        message: dict[str, Any] = {"role": "assistant", "content": f"Thanks, I noted it for {dec}."}
        where = rng.randrange(6)
        if where == 0:  # a tool call whose arguments repeat or add PII, numbers as values too
            second = ENTITIES[rng.randrange(len(ENTITIES))]
            text2, value2 = _plant(second, rng)
            arguments: dict[str, Any] = {"field": second, "value": value2, "order": dec}
            if second == "url_credentials":
                arguments = {"connection": text2, "order": dec}  # the whole URL; the userinfo must go
            elif second == "api_key":
                arguments = {"api_key": value2, "order": dec}    # a secret under its field's name
            elif second in ("phone", "card") and rng.random() < 0.5:
                digits = "".join(ch for ch in value2 if ch.isdigit())
                arguments["value"] = int(digits)                # a number given as a JSON number
                value2 = digits
            item.planted.append((second, value2))
            request["tools"] = [{"type": "function", "function": {
                "name": "update_contact", "description": "Update the customer's contact details",
                "parameters": {"type": "object", "properties": {"value": {"type": "string"}}}}}]
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{i}", "type": "function",
                "function": {"name": "update_contact", "arguments": json.dumps(arguments)}}]}
        elif where == 1:  # the user's name is their e-mail address
            value2 = email(rng)
            item.planted.append(("email", value2))
            request["messages"][1]["name"] = value2
        elif where == 2:
            value2 = email(rng)
            item.planted.append(("email", value2))
            request["user"] = value2
        elif where == 3:  # a tool description with an escalation contact
            value2 = phone(rng)
            item.planted.append(("phone", value2))
            request["tools"] = [{"type": "function", "function": {
                "name": "escalate", "description": f"Escalate to the on-call desk at {value2}",
                "parameters": {"type": "object", "properties": {}}}}]
        elif where == 4:  # an extra field the client logged
            text2, value2 = _plant("ip", rng)
            item.planted.append(("ip", value2))
            request["metadata"] = {"client_ip": value2, "ticket": dec}
        item.record = {"timestamp": 1795514400 + i, "workload_id": "pii_corpus", "client_id": "bench",
                       "request": request,
                       "response": {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1795514400 + i,
                                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 50, "completion_tokens": 10}}}
        out.append(item)
    return out


# ---------------------------------------------------------------- measuring

def evaluate(items: list[CorpusRecord], redactor=None) -> dict[str, Any]:
    """Recall and precision per entity type, span by span, and the raw values left anywhere.

    Every string the record redaction analyses is seen once (with its spans). A planted value's
    occurrences in those strings are the truth: found when a span of the same type overlaps it.
    A span that overlaps no planted value of its type is a false positive.
    """
    from collections import Counter, defaultdict

    from flywheel.pii import default_redactor, redact_obj

    base = redactor or default_redactor()
    seen: dict[str, list[tuple[int, int, str]]] = {}

    class Recording:
        def find(self, text, context=()):
            spans = base.find(text, context) if context else base.find(text)
            seen[text] = spans
            return spans

        def replace(self, text, spans, placeholder):
            return base.replace(text, spans, placeholder)

    recorder = Recording()
    tp, fn, fp = Counter(), Counter(), Counter()
    leaked = 0
    decoys_redacted = 0
    for item in items:
        seen.clear()
        redacted, _ = redact_obj(item.record, recorder)
        out_text = json.dumps(redacted, ensure_ascii=False)
        truth: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for text in seen:
            for entity, value in item.planted:
                start = text.find(value)
                while start != -1:
                    truth[text].append((start, start + len(value), entity))
                    start = text.find(value, start + 1)
        for text, spans in seen.items():
            for s, e, entity in truth.get(text, []):
                if any(ps < e and s < pe and pe_entity == entity for ps, pe, pe_entity in spans):
                    tp[entity] += 1
                else:
                    fn[entity] += 1
            for ps, pe, p_entity in spans:
                if not any(ps < e and s < pe and entity == p_entity for s, e, entity in truth.get(text, [])):
                    fp[p_entity] += 1
        leaked += sum(value in out_text for _, value in item.planted)
        decoys_redacted += sum(d not in out_text for d in item.decoys)
    table = {}
    for entity in ENTITIES:
        t, n, p = tp[entity], fn[entity], fp[entity]
        table[entity] = {"planted": t + n, "found": t, "missed": n, "false_positives": p,
                         "recall": t / (t + n) if t + n else None, "precision": t / (t + p) if t + p else None}
    return {"entities": table, "raw_values_left": leaked, "decoys_redacted": decoys_redacted,
            "decoys": sum(len(i.decoys) for i in items), "records": len(items)}
