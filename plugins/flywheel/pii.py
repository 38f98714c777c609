"""PII redaction with Microsoft Presidio, before anything is stored or written.

Detection is Presidio's recognizers (its own for cards, IBANs and SSNs; regex recognizers with
validators for the rest), no model and nothing to download (see :class:`PresidioRedactor` for
why they are not driven through spaCy); the replacement is Presidio's ``AnonymizerEngine``.
Entities, and the placeholder each becomes:

=================  ===============  ==================================================================
entity             placeholder      how it is found
=================  ===============  ==================================================================
email              ``<EMAIL_n>``    bounded regex, internationalised local parts and domains
phone              ``<PHONE_n>``    ``phonenumbers`` (Presidio's PhoneRecognizer): +CC international
                                    and the national formats of ``PHONE_REGIONS``
card               ``<CARD_n>``     13-19 digits with the Luhn checksum
iban               ``<IBAN_n>``     Presidio's IbanRecognizer (country format + mod-97 checksum)
ssn                ``<SSN_n>``      Presidio's UsSsnRecognizer (invalid area/group/serial excluded)
ip                 ``<IP_n>``       Presidio's IpRecognizer (IPv4 and IPv6)
url_credentials    ``<SECRET_n>``   the ``user:password`` part of ``scheme://user:password@host``
api_key            ``<SECRET_n>``   well-known token shapes (sk-…, ghp_…, AKIA…, xox?-…, JWTs,
                                    ``Bearer …``) and ``api_key=…``/``token: …`` assignments
=================  ===============  ==================================================================

``n`` numbers the distinct values of a type *within one record*: the same address is the same
placeholder everywhere in that record (the model still sees that the user repeated it), and
nothing links two records. Every string anywhere in the record is redacted — all messages and
their ``name``, every choice, tool-call arguments (numbers given as values too: a phone number
logged as ``4155550132``), ``request.user``, tool descriptions, any extra field — and object keys
as well. Counts per entity type are returned for the dataset's audit; values never are.

An NER model (e.g. spaCy's ``en_core_web_lg``, when installed) adds names and places: set
``FLYWHEEL_PII_SPACY_MODEL`` to its name or path.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any, Protocol

from flywheel.records import LogRecord

# Presidio entity name -> our entity type (audit counts) and placeholder stem.
ENTITIES: dict[str, tuple[str, str]] = {
    "EMAIL_ADDRESS": ("email", "EMAIL"),
    "PHONE_NUMBER": ("phone", "PHONE"),
    "CREDIT_CARD": ("card", "CARD"),
    "IBAN_CODE": ("iban", "IBAN"),
    "US_SSN": ("ssn", "SSN"),
    "IP_ADDRESS": ("ip", "IP"),
    "URL_CREDENTIALS": ("url_credentials", "SECRET"),
    "API_KEY": ("api_key", "SECRET"),
    # Only found with an NER model (FLYWHEEL_PII_SPACY_MODEL).
    "PERSON": ("person", "PERSON"),
    "LOCATION": ("location", "LOCATION"),
}
ENTITY_TYPES = tuple(dict.fromkeys(e for e, _ in ENTITIES.values()))
# National phone formats are read as numbers of these regions (international +CC ones always).
# A recognizer runs on a string only when its gate matches: most strings fail every gate at once.
GATES = {
    "FlywheelCardRecognizer": r"\d(?:[ -]?\d){12}",
    "FlywheelSsnRecognizer": r"\d(?:[ .-]?\d){8}",
    # Country code, check digits and at least 11 more characters: what an IBAN needs at the least
    # (Presidio's IBAN pattern is slow, and "1ZAB12…" tracking numbers would pass a looser gate).
    "IbanRecognizer": r"[A-Z]{2}\d{2}(?: ?[A-Za-z0-9]){11}",
    "FlywheelEmailRecognizer": r"@",
    "FlywheelPhoneRecognizer": r"\d(?:\D{0,3}\d){6}",
    "FlywheelIpRecognizer": r"\d\.\d|:[0-9A-Fa-f]*:",
    "UrlCredentialsRecognizer": r"://",
}
# Literal gates, tested with str.find on the lower-cased text (a regex alternation of 14 words
# scans 64 KB in ~40 ms; fourteen finds take well under a millisecond).
LITERAL_GATES = {
    "ApiKeyRecognizer": ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat", "akia", "asia", "xox",
                         "aiza", "eyj", "bearer", "key", "secret", "token", "passw"),
}
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "IN", "BR", "AU", "CA")
# A string value under a key named like a secret is a secret, whatever it looks like.
_SECRET_KEY = re.compile(r"(?i)(?:^|[_-])(?:api[_-]?key|apikey|secret|token|password|passwd|pwd|credentials?|"
                         r"private[_-]?key|access[_-]?key|auth)(?:$|[_-])|^(?:access|secret|auth)key$")
_SECRET_VALUE = re.compile(r"\S{8,4096}")
# Presidio's default context_similarity_factor: what a context word adds to a finding's score.
CONTEXT_BOOST = 0.35
_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|CARD|IBAN|SSN|IP|SECRET|PERSON|LOCATION)_\d+>")
# A cheap pre-filter: a string without two digits, an '@', "://" or a key-like word cannot hold
# any pattern entity, so most short strings (roles, ids, names) skip the analyzer entirely.
_MAYBE = re.compile(r"\d\D*\d|@|://")


class Redactor(Protocol):
    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, entity type) spans of PII in ``text``, non-overlapping, in order."""
        ...


# ---------------------------------------------------------------- presidio set-up

def _offline_tldextract() -> None:
    """Presidio validates e-mail/URL domains with tldextract, which downloads the public suffix
    list on first use; point it at the snapshot bundled with the package instead."""
    import tldextract
    import tldextract.tldextract as module

    module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def _import_presidio() -> None:
    """Import Presidio without torch and transformers.

    presidio-analyzer imports ``transformers`` (and with it torch: ~10 s and ~300 MB per process)
    for its optional transformers NER engine whenever they are installed, as they are on the
    Airflow side of this project. The pattern recognizers need neither, and the domain package must
    not load them, so they are hidden from this one import (unless something loaded them already).
    """
    import sys

    if "presidio_analyzer" in sys.modules:
        return
    hidden = [name for name in ("torch", "transformers") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import presidio_analyzer  # noqa: F401
        import presidio_anonymizer  # noqa: F401
    finally:
        for name in hidden:
            sys.modules.pop(name, None)


def _regex_recognizer_class():
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class RegexRecognizer(EntityRecognizer):
        """A Presidio recognizer over stdlib regexes (linear, compiled once) whose span may be a
        group of the match, with an optional validator (True: certain, False: not this entity).

        Presidio's PatternRecognizer uses the whole match and the ``regex`` module; variable-length
        look-behinds and its large IPv6 pattern made them the slowest stage on long texts."""

        def __init__(self, entity: str, name: str, patterns: list[tuple],
                     validate: Callable[[str], bool | None] | None = None, context: list[str] | None = None,
                     flags: int = 0, edge: str | None = None, edge_after: str | None = None,
                     reject_after: str | None = None) -> None:
            self.entity = entity
            # (regex, score, group[, needles]): a pattern with needles runs only when one of them
            # occurs in the lower-cased text.
            self.patterns = [(re.compile(p[0], flags), p[1], p[2], p[3] if len(p) > 3 else ()) for p in patterns]
            self.validate = validate
            # Characters that may not touch the finding on either side. Checked here rather than by
            # look-arounds, so that each pattern starts with a character class the regex engine
            # can scan for quickly.
            self.edge = re.compile(edge) if edge else None
            self.edge_after = re.compile(edge_after) if edge_after else self.edge
            # A finding is dropped when the text before it ends with this pattern (e.g. the start of
            # an IBAN before what looks like a phone number: the IBAN's own digit groups).
            self.reject_after = re.compile(reject_after) if reject_after else None
            super().__init__(supported_entities=[entity], name=name, context=context)

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            results = []
            lowered = None
            for rx, score, group, needles in self.patterns:
                if needles:
                    lowered = lowered if lowered is not None else text.lower()
                    if not any(n in lowered for n in needles):
                        continue
                for match in rx.finditer(text):
                    start, end = match.span(group)
                    if self.edge is not None and ((start > 0 and self.edge.match(text, start - 1))
                                                  or (end < len(text) and self.edge_after.match(text, end))):
                        continue
                    if self.reject_after is not None and self.reject_after.search(text, max(0, start - 64), start):
                        continue
                    verdict = self.validate(text[start:end]) if self.validate else None
                    if verdict is False:
                        continue
                    results.append(RecognizerResult(
                        self.entity, start, end, 1.0 if verdict else score,
                        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                              RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
            return results

    return RegexRecognizer


def _valid_phone(regions: tuple[str, ...]) -> Callable[[str], bool]:
    import phonenumbers

    ssn_shape = re.compile(r"\d{3}([ -])\d{2}\1\d{4}")

    def valid(text: str) -> bool:
        digits = sum(ch.isdigit() for ch in text)
        if not 7 <= digits <= 15 or ssn_shape.fullmatch(text):  # 123-45-6789 is an SSN's shape, never a phone's
            return False
        if not text.startswith("+") and text.isdigit() and digits >= 11:
            # E.164 digits without the '+' (a number logged as a JSON number): the country code leads.
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse("+" + text, None)):
                    return True
            except phonenumbers.NumberParseException:
                pass
        for region in ((None,) if text.startswith("+") else regions):
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(text, region)):
                    return True
            except phonenumbers.NumberParseException:
                continue
        return False

    return valid


def luhn_valid(number: str) -> bool:
    """The payment-card checksum over the digits of ``number`` (13-19 of them)."""
    digits = [int(d) for d in number if d.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _valid_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ssn_recognizer():
    """Presidio's UsSsnRecognizer, also refusing numbers the SSA never issues: area 9xx (ITINs and
    unassigned), group 00, serial 0000 (Presidio refuses 000 and 666 areas and known samples)."""
    from presidio_analyzer.predefined_recognizers import UsSsnRecognizer

    class SsnRecognizer(UsSsnRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            digits = "".join(ch for ch in pattern_text if ch.isdigit())
            if len(digits) == 9 and (digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000"):
                return True
            return super().invalidate_result(pattern_text)

    return SsnRecognizer(name="FlywheelSsnRecognizer")


def _email_recognizer_class():
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    local = re.compile(r"[\w.%+-]{1,64}$")
    domain = re.compile(r"(?:[\w-]{1,63}\.){1,8}[^\W\d_]{2,63}(?![\w-])")
    before = re.compile(r"[\w.%+-]")

    class EmailRecognizer(EntityRecognizer):
        """E-mail addresses, internationalised local parts and domains (``\\w`` is Unicode).

        Found from each '@' outwards, so the cost is linear in the text: a pattern that starts at
        every letter (``[\\w.+-]+@``) rescans a long run of letters from each position."""

        def __init__(self) -> None:
            super().__init__(supported_entities=["EMAIL_ADDRESS"], name="FlywheelEmailRecognizer",
                             context=["email", "mail", "e-mail", "contact"])

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            results, at = [], text.find("@")
            while at != -1:
                m_local = local.search(text, max(0, at - 64), at)
                m_domain = domain.match(text, at + 1)
                if m_local and m_domain:
                    start = m_local.start()
                    if not (start > 0 and before.match(text, start - 1)):
                        results.append(RecognizerResult("EMAIL_ADDRESS", start, m_domain.end(), 0.9,
                                                        recognition_metadata={
                                                            RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
                at = text.find("@", at + 1)
            return results

    return EmailRecognizer


def _custom_recognizers(phone_regions: tuple[str, ...]):
    RegexRecognizer = _regex_recognizer_class()
    return [
        _email_recognizer_class()(),
        # Cards: 13-19 digits, single spaces or dashes between, Luhn-checked (Presidio's own
        # CreditCardRecognizer does the same with the slower `regex` module: 75 ms on 64 KB of digits).
        RegexRecognizer("CREDIT_CARD", "FlywheelCardRecognizer", [(r"\d(?:[ -]?\d){12,18}", 0.3, 0)],
                        validate=luhn_valid, edge=r"[\w+-]",
                        context=["card", "credit", "visa", "mastercard", "amex", "paid", "payment"]),
        # Phone numbers: candidate shapes by a linear regex, each confirmed by libphonenumber
        # (+CC numbers against their country, national ones against PHONE_REGIONS). Presidio's
        # PhoneRecognizer runs libphonenumber's matcher once per region over the whole text: seconds
        # on a digit-heavy 10 KB text.
        RegexRecognizer("PHONE_NUMBER", "FlywheelPhoneRecognizer", [
            (r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}"
             r"|\(\d{2,5}\)[ .-]?\d{2,5}(?:[ .-]?\d{2,5}){0,3}"
             r"|0\d{1,4}(?:[ /.-]?\d{2,8}){1,4}"
             r"|[1-9]\d{2}([ .-])\d{3}\1\d{4}"
             r"|[1-9]\d{1,4}(?: \d{2,5}){2,4}", 0.4, 0),  # national groups (ES 810 12 56 99); spaces only, not dates
            (r"[1-9]\d{9,14}", 0.3, 0),
        ], validate=_valid_phone(phone_regions), edge=r"[\w+-]",
            reject_after=r"\b[A-Z]{2}\d{2}(?: [A-Z0-9]{4})+ $",
            context=["phone", "call", "tel", "mobile", "cell", "whatsapp", "fax", "number"]),
        RegexRecognizer("IP_ADDRESS", "FlywheelIpRecognizer", [
            (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", 0.6, 0),
            (r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:(?:[0-9A-Fa-f]{0,4}:){0,5}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?",
             0.6, 0),
        ], validate=_valid_ip, edge=r"[\w.:]", edge_after=r"[\w:]|\.\d",  # a sentence may end after an IP
            context=["ip", "address", "host", "server"]),
        RegexRecognizer("URL_CREDENTIALS", "UrlCredentialsRecognizer", [
            # Scored above an e-mail: in https://user:pass@host the "pass@host" part is not an address.
            (r"://([^\s/@:]{1,256}:[^\s/@]{1,256})@", 1.0, 1)]),
        RegexRecognizer("API_KEY", "ApiKeyRecognizer", [
            # Each starts with its literal (the regex engine scans for it); the look-behind after
            # it checks that no letter or digit comes before.
            (r"sk-(?<![\w-]sk-)(?:proj-|live-|test-)?[A-Za-z0-9_-]{16,200}", 0.9, 0, ("sk-",)),
            (r"(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,255}", 0.9, 0,
             ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
            (r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])", 0.9, 0, ("akia", "asia")),
            (r"xox[abposr]-[A-Za-z0-9-]{10,200}", 0.9, 0, ("xox",)),
            (r"AIza[0-9A-Za-z_-]{35}(?![\w-])", 0.9, 0, ("aiza",)),
            (r"eyJ[A-Za-z0-9_-]{8,2000}\.[A-Za-z0-9_-]{8,2000}\.[A-Za-z0-9_-]{8,2000}", 0.9, 0, ("eyj",)),
            (r"[Bb]earer ([A-Za-z0-9._~+/=-]{16,2000})", 0.8, 1, ("bearer",)),
            (r"(?i)(?:api[_-]?key|secret|token|password|passwd)[\"']?[ \t]{0,3}[:=][ \t]{0,3}[\"']?([A-Za-z0-9._~+/-]{8,256})",
             0.8, 1, ("key", "secret", "token", "passw")),
        ]),
    ]


class PresidioRedactor:
    """Presidio recognizers + Presidio's anonymizer for the replacement.

    By default the recognizers of a Presidio ``RecognizerRegistry`` run directly on each string,
    each behind a cheap gate (a card needs 13 digits in a row, a secret one of its prefixes...), and
    context words lift weak findings as Presidio's context enhancer would (+0.35 when one of the
    recognizer's words is in the 60 characters before the finding or in the field's name). Going
    through ``AnalyzerEngine`` would tokenize every string with spaCy first: measured here, that is
    ~3 ms per 1 KB string, three quarters of the time, for nothing a pattern needs, and a 64 KB
    record would take 200 ms instead of < 50 ms.

    With an NER model (``spacy_model`` or ``FLYWHEEL_PII_SPACY_MODEL``: an installed spaCy model's
    name or path, e.g. ``en_core_web_lg``) the ``AnalyzerEngine`` runs with that pipeline and
    names and places are found too, at NER speed.

    Thread-safe to share; build it once per process (:func:`default_redactor`).
    """

    def __init__(self, *, spacy_model: str | None = None, phone_regions: tuple[str, ...] = PHONE_REGIONS,
                 score_threshold: float = 0.4) -> None:
        _import_presidio()
        from presidio_analyzer import RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import IbanRecognizer
        from presidio_anonymizer import AnonymizerEngine

        _offline_tldextract()
        self.registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in (IbanRecognizer(), _ssn_recognizer(),
                           *_custom_recognizers(phone_regions)):
            self.registry.add_recognizer(recognizer)
        self.gates = {name: re.compile(gate) for name, gate in GATES.items()}
        self.score_threshold = score_threshold
        self.anonymizer = AnonymizerEngine()
        model = spacy_model or os.environ.get("FLYWHEEL_PII_SPACY_MODEL")
        self.ner = bool(model)
        self.entities = [e for e in ENTITIES if self.ner or e not in ("PERSON", "LOCATION")]
        self.analyzer = None
        if model:
            from presidio_analyzer import AnalyzerEngine
            from presidio_analyzer.nlp_engine import NlpEngineProvider
            from presidio_analyzer.predefined_recognizers import SpacyRecognizer

            nlp_engine = NlpEngineProvider(nlp_configuration={
                "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}],
            }).create_engine()
            self.registry.add_recognizer(SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]))
            self.analyzer = AnalyzerEngine(registry=self.registry, nlp_engine=nlp_engine, supported_languages=["en"])
        self.recognizers = self.registry.get_recognizers(language="en", entities=self.entities)

    def find(self, text: str, context: tuple[str, ...] = ()) -> list[tuple[int, int, str]]:
        if not text:
            return []
        if self.analyzer is not None:
            results = self.analyzer.analyze(text=text, language="en", entities=self.entities,
                                            score_threshold=self.score_threshold, context=list(context) or None)
            return _resolve_overlaps(results)
        lowered = text.lower()
        if not _MAYBE.search(text) and not any(w in lowered for w in LITERAL_GATES["ApiKeyRecognizer"]):
            return []
        out = []
        field_name = " ".join(context).lower()
        for recognizer in self.recognizers:
            gate = self.gates.get(recognizer.name)
            if gate is not None and not gate.search(text):
                continue
            words = LITERAL_GATES.get(recognizer.name)
            if words and not any(w in lowered for w in words):
                continue
            for r in recognizer.analyze(text, self.entities, None) or []:
                words = recognizer.context or []
                if r.score < self.score_threshold and words and r.score + CONTEXT_BOOST >= self.score_threshold - 1e-9:
                    window = lowered[max(0, r.start - 60):r.start]
                    if any(w in window or w in field_name for w in words):
                        r.score = min(1.0, r.score + CONTEXT_BOOST)
                if r.score >= self.score_threshold - 1e-9:
                    out.append(r)
        return _resolve_overlaps(out)

    def replace(self, text: str, spans: list[tuple[int, int, str]], placeholder: Callable[[str, str], str]) -> str:
        """``text`` with each span replaced by ``placeholder(entity, value)``, by Presidio's anonymizer."""
        from presidio_analyzer import RecognizerResult
        from presidio_anonymizer.entities import OperatorConfig

        presidio_name = {e: name for name, (e, _) in ENTITIES.items()}
        results = [RecognizerResult(presidio_name[entity], start, end, 1.0) for start, end, entity in spans]
        operators = {presidio_name[entity]: OperatorConfig("custom", {"lambda": (lambda value, e=entity: placeholder(e, value))})
                     for _, _, entity in spans}
        # No merging of neighbours: two addresses separated by a space are two placeholders.
        return self.anonymizer.anonymize(text=text, analyzer_results=results, operators=operators,
                                         merge_entities_with_spaces=False).text


# Equal score and length: the more specific entity wins (a 15-digit Luhn-valid number is a card,
# even if it also parses as a phone number of some country).
_PRIORITY = {"CREDIT_CARD": 0, "IBAN_CODE": 1, "US_SSN": 2, "API_KEY": 3, "URL_CREDENTIALS": 3, "EMAIL_ADDRESS": 4,
             "IP_ADDRESS": 5, "PHONE_NUMBER": 6}


def _resolve_overlaps(results: list) -> list[tuple[int, int, str]]:
    """Non-overlapping spans: the higher score wins, then the longer span (O(n log n))."""
    import bisect

    starts: list[int] = []
    ends: list[int] = []
    spans: list[tuple[int, int, str]] = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), _PRIORITY.get(r.entity_type, 9), r.start)):
        if r.entity_type not in ENTITIES or r.end <= r.start:
            continue
        i = bisect.bisect_right(starts, r.start)
        if (i > 0 and ends[i - 1] > r.start) or (i < len(starts) and starts[i] < r.end):
            continue
        starts.insert(i, r.start)
        ends.insert(i, r.end)
        spans.append((r.start, r.end, ENTITIES[r.entity_type][0]))
    return sorted(spans)


_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def default_redactor() -> PresidioRedactor:
    with _LOCK:
        return PresidioRedactor()


# ---------------------------------------------------------------- record-level redaction

# Fields of the chat.completions schema whose values the API itself generates (ids, enums, the
# model's name): no user ever types into them, and analysing a unique id per record was a third of
# the redaction time. They are skipped only while they look generated (a short token without
# spaces or '@'); anything else in them is redacted like every other string.
GENERATED_FIELDS = frozenset({"id", "object", "model", "system_fingerprint", "finish_reason", "role", "type",
                              "tool_call_id", "service_tier"})
_GENERATED = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _generated(value: Any) -> bool:
    return isinstance(value, str) and _GENERATED.fullmatch(value) is not None and "@" not in value


_CLEAN_SCHEMAS: set[str] = set()


class _RecordContext:
    """Placeholders of one record: the same value of a type gets the same number."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.counts: Counter = Counter()
        self.numbers: dict[tuple[str, str], str] = {}
        self.next: Counter = Counter()

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self.numbers:
            stem = next(stem for e, stem in ENTITIES.values() if e == entity)
            self.next[stem] += 1
            self.numbers[key] = f"<{stem}_{self.next[stem]}>"
        return self.numbers[key]

    def text(self, text: str, context: str | None = None) -> str:
        spans = _cached_find(self.redactor, text, context)
        if not spans:
            return text
        for start, end, entity in spans:  # numbered in reading order
            self.counts[entity] += 1
            self.placeholder(entity, text[start:end])
        replace_spans = getattr(self.redactor, "replace", None)
        if replace_spans is not None:
            return replace_spans(text, spans, self.placeholder)
        out, pos = [], 0
        for start, end, entity in spans:
            out.append(text[pos:start])
            out.append(self.placeholder(entity, text[start:end]))
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def value(self, value: Any, *, in_arguments: bool = False, context: str | None = None) -> Any:
        """Every string in a JSON value (keys too; a value is analysed with its key as context,
        so ``{"ssn": "536228726"}`` is recognised); in tool arguments, long integers as well."""
        if isinstance(value, str):
            if context and _SECRET_KEY.search(context) and _SECRET_VALUE.fullmatch(value) and not has_placeholder(value):
                # {"api_key": "…"}, {"password": "…"}: the field's name says what the value is.
                self.counts["api_key"] += 1
                return self.placeholder("api_key", value)
            return self.text(value, context)
        if isinstance(value, list):
            return [self.value(v, in_arguments=in_arguments, context=context) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.value(v, in_arguments=in_arguments, context=k) for k, v in value.items()}
        if in_arguments and isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1_000_000:
            # A phone or card number given as a JSON number: redacted as its digits.
            digits = str(value)
            redacted = self.text(digits, context)
            return value if redacted == digits else redacted
        return value

    def arguments(self, raw: Any) -> Any:
        if not isinstance(raw, str):
            return self.value(raw, in_arguments=True)
        try:
            args = json.loads(raw)
        except (ValueError, RecursionError):
            return self.text(raw)
        redacted = self.value(args, in_arguments=True)
        # Re-serialized only when something changed: clean arguments stay byte-identical.
        return raw if redacted == args else json.dumps(redacted, ensure_ascii=False)

    def message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return self.value(message)
        out = {}
        for key, item in message.items():
            if key in GENERATED_FIELDS and _generated(item):
                out[key] = item
            elif key == "tool_calls" and isinstance(item, list):
                out[key] = [self.call(c) for c in item]
            elif key == "function_call" and isinstance(item, dict):  # the legacy single call
                out[key] = self.function(item)
            else:
                out[self.text(key)] = self.value(item)
        return out

    def function(self, fn: dict[str, Any]) -> dict[str, Any]:
        return {self.text(k): (self.arguments(v) if k == "arguments" else self.value(v)) for k, v in fn.items()}

    def call(self, call: Any) -> Any:
        if not isinstance(call, dict):
            return self.value(call)
        return {k: (self.function(v) if k == "function" and isinstance(v, dict)
                    else v if k in GENERATED_FIELDS and _generated(v) else self.value(v))
                for k, v in call.items()}

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        return {k: ([self.message(m) for m in v] if k == "messages" and isinstance(v, list)
                    else v if k in GENERATED_FIELDS and _generated(v)
                    else self.schema(v) if k in ("tools", "response_format") else self.value(v))
                for k, v in request.items()}

    def schema(self, value: Any) -> Any:
        """Tool definitions and response formats repeat in every record of a workload: one that was
        found clean once is passed through (a copy is redacted as usual otherwise)."""
        key = repr(value)
        if key in _CLEAN_SCHEMAS:
            return value
        before = sum(self.counts.values())
        out = self.value(value)
        if sum(self.counts.values()) == before:
            if len(_CLEAN_SCHEMAS) > 1024:
                _CLEAN_SCHEMAS.clear()
            _CLEAN_SCHEMAS.add(key)
        return out

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, item in response.items():
            if key == "choices" and isinstance(item, list):
                out[key] = [{k: (self.message(v) if k == "message"
                                 else v if k in GENERATED_FIELDS and _generated(v) else self.value(v))
                             for k, v in c.items()}
                            if isinstance(c, dict) else self.value(c) for c in item]
            elif key in GENERATED_FIELDS and _generated(item):
                out[key] = item
            else:
                out[key] = self.value(item)
        return out


# Identical strings recur in every record (system prompts, tool schemas): analyse each once.
_FIND_CACHE: dict[tuple[int, str, str | None], list[tuple[int, int, str]]] = {}
_FIND_CACHE_MAX = 50_000
_CACHEABLE = 4096


def _find(redactor: Redactor, text: str, context: str | None) -> list[tuple[int, int, str]]:
    if context:
        try:
            return redactor.find(text, (context,))  # type: ignore[call-arg]
        except TypeError:  # a redactor without context support
            pass
    return redactor.find(text)


def _cached_find(redactor: Redactor, text: str, context: str | None = None) -> list[tuple[int, int, str]]:
    if len(text) > _CACHEABLE:
        return _find(redactor, text, context)
    key = (id(redactor), text, context)
    spans = _FIND_CACHE.get(key)
    if spans is None:
        spans = _find(redactor, text, context)
        if len(_FIND_CACHE) >= _FIND_CACHE_MAX:
            _FIND_CACHE.clear()
        _FIND_CACHE[key] = spans
    return spans


def redact_text(text: str, redactor: Redactor | None = None) -> tuple[str, Counter]:
    """``text`` with its PII replaced by typed placeholders, and the counts per entity type."""
    ctx = _RecordContext(redactor or default_redactor())
    return ctx.text(text), ctx.counts


def redact_obj(obj: dict[str, Any], redactor: Redactor | None = None) -> tuple[dict[str, Any], Counter]:
    """A record in its dict form (``request``/``response`` and any other field), every string
    redacted; the input is not modified. Placeholders are numbered across the whole record."""
    ctx = _RecordContext(redactor or default_redactor())
    out = {}
    for key, value in obj.items():
        if key == "request" and isinstance(value, dict):
            out[key] = ctx.request(value)
        elif key == "response" and isinstance(value, dict):
            out[key] = ctx.response(value)
        elif key in ("timestamp", "workload_id", "client_id"):
            out[key] = value  # validated identifiers, never free text
        else:
            out[key] = ctx.value(value)
    return out, ctx.counts


def redact_record(record: LogRecord, redactor: Redactor | None = None) -> tuple[LogRecord, Counter]:
    """A copy of ``record`` with every string of its request, response and extra fields redacted."""
    ctx = _RecordContext(redactor or default_redactor())
    request = ctx.request(record.request)
    response = ctx.response(record.response)
    extra = {k: ctx.value(v) for k, v in record.extra.items()}
    return replace(record, request=request, response=response, extra=extra), ctx.counts


def has_placeholder(text: str) -> bool:
    return bool(_PLACEHOLDER.search(text))


_STEM_ENTITY = {"EMAIL": "email", "PHONE": "phone", "CARD": "card", "IBAN": "iban", "SSN": "ssn", "IP": "ip",
                "SECRET": "secret", "PERSON": "person", "LOCATION": "location"}
_PLACEHOLDER_STEM = re.compile(r"<(EMAIL|PHONE|CARD|IBAN|SSN|IP|SECRET|PERSON|LOCATION)_\d+>")


def placeholder_counts(obj: Any) -> Counter:
    """What a record redacted before storage holds, by type: its placeholders, each distinct one
    once (the dataset audit of records that arrive redacted; ``secret`` covers API keys and URL
    credentials, which share the ``<SECRET_n>`` placeholder)."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return Counter(_STEM_ENTITY[stem] for stem, _ in {(m.group(1), m.group(0)) for m in _PLACEHOLDER_STEM.finditer(text)})
