"""Step 2, curate: validate, dedup, split and redact one workload's records, in bounded memory.

Curation runs in two passes so that a million records never have to be held at once:

1. **scan** (:class:`Scan`): every record the source returns is validated (``flywheel.records``);
   a rejection goes to the quarantine at once, a valid record leaves only a few numbers behind —
   its dedup key (a 64-bit digest of the normalized request), its time, its class label and the
   key to fetch it again. Nothing else of it is kept.
2. **plan** (:func:`plan_splits`): dedup (the newest record of each normalized request wins),
   the ``max_records`` newest survivors are kept (the blueprint's ``limit``), and the split is
   decided on those keys alone: a class-balanced eval set, a validation set stratified by class
   (rare classes merged into ``others``; a logged fallback when even that is impossible).
3. **materialize** (:class:`Materializer`): only the kept records are fetched again, redacted
   (the slow stage runs on what is kept, nothing else) and written as dataset rows, eval first.
   Redaction can make two requests equal (two e-mail addresses become the same placeholder), so
   the no-leakage rule is enforced again on the redacted text: a train/val record whose
   normalized request equals an eval item's (or an earlier kept record's) is dropped as a
   duplicate.

Counts always add up: ``n_in == n_accepted + n_quarantined + n_duplicates`` and, for a usable
dataset, ``n_accepted == n_eval + n_train + n_val + n_over_limit``.

:func:`curate` runs the three steps on records held in memory (tests, small imports); the
Airflow task streams them from the log source (``flywheel.adapters.airflow_tasks``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flywheel.pii import Redactor, redact_record
from flywheel.records import LogRecord, Rejection, class_label

log = logging.getLogger(__name__)

SPLITS = ("eval", "train", "val")
MIN_EVAL = 2  # an eval set of one item says nothing about a candidate
OTHERS = "others"


class SettingsError(ValueError):
    """A curation setting is out of range; the message names the setting and the allowed values."""


@dataclass(frozen=True)
class CurationSettings:
    """How one workload's dataset is cut. Defaults are the blueprint's (eval 20, val 0.1)."""

    eval_size: int = 20
    val_ratio: float = 0.1
    seed: int = 42
    min_train: int = 10
    # The blueprint's data_split_config.limit: the newest this-many unique records are used.
    max_records: int = 10_000
    # Classes with fewer records than this are merged into "others" before the split.
    min_class_size: int = 5
    # Dotted path of the stratification label in the record (None: first tool name / answer kind).
    stratify_key: str | None = None
    # Also count the normalized answer in the dedup key (same question, different answer = 2 records).
    dedup_on_answer: bool = False

    def check(self) -> CurationSettings:
        def bad(name: str, value: Any, allowed: str) -> SettingsError:
            return SettingsError(f"curation setting {name}={value!r} is invalid: {allowed}")

        if not isinstance(self.val_ratio, (int, float)) or not 0 < self.val_ratio <= 0.5:
            raise bad("val_ratio", self.val_ratio, "it must be in (0, 0.5], e.g. 0.1")
        if not isinstance(self.eval_size, int) or self.eval_size < MIN_EVAL:
            raise bad("eval_size", self.eval_size, f"it must be an integer >= {MIN_EVAL} (an eval set of one says nothing)")
        if not isinstance(self.min_train, int) or self.min_train < 1:
            raise bad("min_train", self.min_train, "it must be an integer >= 1")
        if not isinstance(self.max_records, int) or self.max_records < self.eval_size + self.min_train:
            raise bad("max_records", self.max_records,
                      f"it must be at least eval_size + min_train = {self.eval_size + self.min_train}")
        if not isinstance(self.min_class_size, int) or self.min_class_size < 1:
            raise bad("min_class_size", self.min_class_size, "it must be an integer >= 1")
        if self.stratify_key is not None and (not isinstance(self.stratify_key, str) or not self.stratify_key.strip()):
            raise bad("stratify_key", self.stratify_key, "give a dotted path such as request.metadata.intent, or null")
        return self


# ---------------------------------------------------------------- normalized request (dedup key)

def _norm_text(text: str) -> str:
    return " ".join(text.split())


def _norm_value(value: Any) -> Any:
    """Whitespace folded in every string; key order is settled by sort_keys when dumped."""
    if isinstance(value, str):
        return _norm_text(value)
    if isinstance(value, list):
        return [_norm_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm_value(v) for k, v in value.items()}
    return value


def _norm_arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return _norm_value(json.loads(raw))
        except (ValueError, RecursionError):
            return _norm_text(raw)
    return _norm_value(raw)


def _norm_calls(calls: Any) -> list:
    out = []
    for call in calls or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):  # call ids are never part of the key
            out.append([fn.get("name"), _norm_arguments(fn.get("arguments"))])
    return out


def _norm_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return _norm_value(message)
    out: dict[str, Any] = {"role": message.get("role"), "content": _norm_value(message.get("content"))}
    if message.get("name") is not None:
        out["name"] = _norm_value(message["name"])
    if message.get("tool_calls"):
        out["tool_calls"] = _norm_calls(message["tool_calls"])
    return out


_TOOLS_CACHE: dict[str, str] = {}


def _tools_digest(tools: Any) -> str:
    """The normalized tools as canonical JSON, memoised: every record of a workload offers the same
    tools, and normalizing them was half the cost of a dedup key. The cache key is ``repr`` (exact
    for JSON values; a different key order only misses the cache)."""
    if not tools:
        return "[]"
    key = repr(tools)
    digest = _TOOLS_CACHE.get(key)
    if digest is None:
        digest = json.dumps(_norm_value(tools), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if len(_TOOLS_CACHE) > 256:
            _TOOLS_CACHE.clear()
        _TOOLS_CACHE[key] = digest
    return digest


def normalized_request(request: dict[str, Any]) -> dict[str, Any]:
    """What makes two requests the same question: the messages (role, text, name, tool calls by
    name and arguments) and the tools offered; whitespace and key order do not matter, ids,
    timestamps, sampling settings and usage are not part of it."""
    return {"messages": [_norm_message(m) for m in request.get("messages") or []],
            "tools": _norm_value(request.get("tools") or [])}


def normalized_answer(message: dict[str, Any]) -> dict[str, Any]:
    return {"content": _norm_value(message.get("content")), "tool_calls": _norm_calls(message.get("tool_calls"))}


def _digest(obj: Any) -> int:
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def request_key(record: LogRecord, *, with_answer: bool = False) -> int:
    """A 64-bit digest of the normalized request (and answer, when asked): the dedup key.

    The parts are fed to the hash one by one, tagged and separated, so that a plain text message
    (most of them) costs a whitespace fold and no JSON encoding; anything else (content parts, tool
    calls, names) goes in as canonical JSON of its normalized form. Two requests get the same key
    exactly when their normalized forms (:func:`normalized_request`) are equal.
    """
    h = hashlib.blake2b(digest_size=8)
    for message in record.request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if (isinstance(message, dict) and isinstance(content, str) and not message.get("tool_calls")
                and message.get("name") is None and isinstance(message.get("role"), str)):
            h.update(b"\x01" + message["role"].encode() + b"\x00" + _norm_text(content).encode("utf-8", "surrogatepass"))
        else:
            h.update(b"\x02" + json.dumps(_norm_message(message), sort_keys=True, ensure_ascii=False,
                                            separators=(",", ":")).encode("utf-8", "surrogatepass"))
    h.update(b"\x03" + _tools_digest(record.request.get("tools")).encode("utf-8", "surrogatepass"))
    if with_answer:
        h.update(b"\x04" + json.dumps(normalized_answer(record.assistant_message), sort_keys=True,
                                        ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big", signed=True)


def request_hash(record: LogRecord, *, with_answer: bool = False) -> str:
    """The dedup key as 16 hex digits (stored with each log row, counted by discovery)."""
    return f"{request_key(record, with_answer=with_answer) & 0xFFFFFFFFFFFFFFFF:016x}"


def _ref_rank(ref: str) -> int:
    """A tie-breaker that depends on the record's reference only, never on arrival order."""
    return int.from_bytes(hashlib.blake2b(ref.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


# ---------------------------------------------------------------- pass 1: scan

@dataclass(frozen=True)
class Scanned:
    """What the scan keeps of one valid record."""

    fetch_key: Any
    ref: str
    ts: float
    key: int
    label: str
    kind: str


def scan_item(fetch_key: Any, item: LogRecord | Rejection, settings: CurationSettings) -> Scanned | Rejection:
    """The scan of one parsed record (a pure function: it can run in a worker process)."""
    if isinstance(item, Rejection):
        return item
    return Scanned(fetch_key, item.source_id, item.timestamp.timestamp(),
                   request_key(item, with_answer=settings.dedup_on_answer),
                   class_label(item, settings.stratify_key), item.kind)


class Scan:
    """Pass 1's accumulator: a few numbers per valid record (numpy-friendly columns)."""

    def __init__(self, settings: CurationSettings) -> None:
        from array import array

        self.settings = settings
        self.n_in = 0
        self.n_quarantined = 0
        self.reasons: Counter = Counter()
        self.kinds: Counter = Counter()
        self.fetch_keys: list[Any] = []
        self.refs: list[str] = []
        self.ts = array("d")
        self.keys = array("q")
        self.ranks = array("q")
        self.label_codes = array("i")
        self.labels: dict[str, int] = {}

    def add(self, scanned: Scanned | Rejection) -> Rejection | None:
        """Count one scanned record; returns the rejection for the caller to quarantine."""
        self.n_in += 1
        if isinstance(scanned, Rejection):
            self.n_quarantined += 1
            self.reasons[scanned.reason] += 1
            return scanned
        self.fetch_keys.append(scanned.fetch_key)
        self.refs.append(scanned.ref)
        self.ts.append(scanned.ts)
        self.keys.append(scanned.key)
        self.ranks.append(_ref_rank(scanned.ref))
        self.label_codes.append(self.labels.setdefault(scanned.label, len(self.labels)))
        self.kinds[scanned.kind] += 1
        return None

    @property
    def n_valid(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------- pass 2: plan

@dataclass
class Plan:
    """The split decided on keys alone: per split, the chosen records' scan indexes in time order."""

    settings: CurationSettings
    n_in: int
    n_quarantined: int
    n_valid: int
    n_unique: int
    n_over_limit: int = 0
    kind: str | None = None
    usable: bool = False
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    val_stratified: bool = False
    merged_classes: list[str] = field(default_factory=list)
    members: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    labels: dict[int, str] = field(default_factory=dict)  # scan index -> stratification class

    @property
    def n_duplicates(self) -> int:
        return self.n_valid - self.n_unique


def _eval_size(n: int, s: CurationSettings, plan: Plan) -> int:
    """How many eval items ``n`` kept records allow, leaving ``min_train``; 0 if unusable."""
    if n < s.min_train + MIN_EVAL:
        plan.reason = (f"only {n} usable records; at least {s.min_train + MIN_EVAL} are needed "
                       f"({s.min_train} for training, {MIN_EVAL} to evaluate)")
        return 0
    if n < s.eval_size + s.min_train:
        size = n - s.min_train
        plan.warnings.append(f"eval split shrunk from {s.eval_size} to {size} to keep {s.min_train} records for training")
        return size
    return s.eval_size


def _balanced_eval(by_class: dict[str, list[int]], size: int, rng: random.Random) -> list[int]:
    """``size`` indexes taken round-robin over classes (shuffled within a class); every class keeps
    one record for training, so a class of one is never evaluated."""
    pools = {}
    for label in sorted(by_class):
        members = list(by_class[label])
        rng.shuffle(members)
        pools[label] = members[1:]
    chosen: list[int] = []
    while len(chosen) < size and any(pools.values()):
        for label in sorted(pools):
            if pools[label] and len(chosen) < size:
                chosen.append(pools[label].pop())
    return chosen


def _split_validation(rest: list[int], labels: list[str], ratio: float, seed: int) -> tuple[list[int], list[int], bool]:
    from sklearn.model_selection import train_test_split

    n_val = int(round(len(rest) * ratio))
    if n_val == 0:
        return list(rest), [], False
    counts = Counter(labels)
    stratifiable = min(counts.values()) >= 2 and n_val >= len(counts) and len(rest) - n_val >= len(counts)
    train, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=labels if stratifiable else None)
    return list(train), list(val), stratifiable


def plan_splits(scan: Scan) -> Plan:
    """Dedup (newest wins), keep the ``max_records`` newest, merge rare classes, split."""
    import numpy as np

    s = scan.settings
    n = scan.n_valid
    keys = np.frombuffer(scan.keys, dtype=np.int64) if n else np.zeros(0, np.int64)
    ts = np.frombuffer(scan.ts, dtype=np.float64) if n else np.zeros(0)
    ranks = np.frombuffer(scan.ranks, dtype=np.int64) if n else np.zeros(0, np.int64)
    # Sorted by key, then time, then a reference-derived rank: the last of each key is the newest.
    order = np.lexsort((ranks, ts, keys))
    last_of_key = np.ones(n, dtype=bool)
    if n:
        last_of_key[:-1] = keys[order][1:] != keys[order][:-1]
    unique = order[last_of_key]
    plan = Plan(settings=s, n_in=scan.n_in, n_quarantined=scan.n_quarantined, n_valid=n, n_unique=int(unique.size))
    plan.kind = scan.kinds.most_common(1)[0][0] if scan.kinds else None
    # Newest first; keep the limit.
    newest = unique[np.lexsort((-ranks[unique], -ts[unique]))]
    kept = newest[: s.max_records]
    plan.n_over_limit = int(newest.size - kept.size)
    if plan.n_over_limit:
        plan.warnings.append(f"{plan.n_over_limit} older unique records beyond max_records={s.max_records} not used")

    size = _eval_size(int(kept.size), s, plan)
    if size == 0:
        return plan
    code_to_label = {code: label for label, code in scan.labels.items()}
    codes = np.frombuffer(scan.label_codes, dtype=np.int32)
    raw_labels = {int(i): code_to_label[int(codes[i])] for i in kept}
    counts = Counter(raw_labels.values())
    rare = sorted(label for label, c in counts.items() if c < s.min_class_size)
    if rare and len(rare) < len(counts):
        plan.merged_classes = rare
        plan.warnings.append(f"classes with fewer than {s.min_class_size} records merged into '{OTHERS}': {', '.join(rare)}")
    merge = set(plan.merged_classes)
    plan.labels = {i: (OTHERS if label in merge else label) for i, label in raw_labels.items()}

    # Class membership in time order, so the seeded shuffle does not depend on arrival order.
    in_time = sorted(plan.labels, key=lambda i: (ts[i], ranks[i]))
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in in_time:
        by_class[plan.labels[i]].append(i)
    evaluation = _balanced_eval(by_class, size, random.Random(s.seed))
    if len(evaluation) < MIN_EVAL:
        plan.reason = "no class has two distinct records, so none can be both trained on and evaluated"
        return plan
    if len(evaluation) < size:
        plan.warnings.append(f"eval split has {len(evaluation)} items, not {size}: the classes are too small")
    chosen = set(evaluation)
    rest = [i for i in in_time if i not in chosen]
    train, val, plan.val_stratified = _split_validation(rest, [plan.labels[i] for i in rest], s.val_ratio, s.seed)
    if val and not plan.val_stratified:
        plan.warnings.append("validation split is not stratified: too few records per class to stratify "
                             "(fell back to a seeded random split)")
    for name, members in zip(SPLITS, (evaluation, train, val)):
        plan.members[name] = sorted(members, key=lambda i: (ts[i], ranks[i]))
    plan.usable = True
    return plan


# ---------------------------------------------------------------- pass 3: materialize

def dataset_row(record: LogRecord, split: str, label: str) -> dict[str, Any]:
    """One curated dataset row (COORDINATION seam 5): id, split, label, request, response (with
    usage), plus the client and time. Candidates are prompted from the request and trained on the
    response through their own chat template (flywheel.prompts, flywheel_trainer.chat)."""
    return {"id": record.source_id, "split": split, "label": label, "client_id": record.client_id,
            "timestamp": record.timestamp.isoformat().replace("+00:00", "Z"),
            "request": record.request, "response": record.response}


@dataclass
class CurationResult:
    n_in: int = 0
    n_accepted: int = 0
    n_quarantined: int = 0
    n_duplicates: int = 0
    n_over_limit: int = 0
    kind: str | None = None
    usable: bool = False
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    val_stratified: bool = False
    merged_classes: list[str] = field(default_factory=list)
    quarantine: list[Rejection] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    n_split: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    label_counts_by_split: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    dataset_hash: str = hashlib.sha256().hexdigest()
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pass (curate_stream)
    # Only filled by the in-memory `curate` (tests, small imports): the kept, redacted records.
    eval: list[LogRecord] = field(default_factory=list)
    train: list[LogRecord] = field(default_factory=list)
    val: list[LogRecord] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_eval(self) -> int:
        return self.n_split["eval"]

    @property
    def n_train(self) -> int:
        return self.n_split["train"]

    @property
    def n_val(self) -> int:
        return self.n_split["val"]

    @property
    def split_sizes(self) -> dict[str, int]:
        return dict(self.n_split)

    def label_counts(self, split: str) -> Counter:
        return Counter(self.label_counts_by_split[split])

    def to_rows(self) -> list[dict[str, Any]]:
        return list(self.rows)

    def class_table(self):
        """Records per class and split (a pandas DataFrame): the split's bookkeeping, for logs and reports."""
        import pandas as pd

        table = pd.DataFrame({s: pd.Series(self.label_counts_by_split[s], dtype="int64") for s in SPLITS})
        return table.fillna(0).astype("int64").sort_index()

    def check(self) -> None:
        assert self.n_in == self.n_accepted + self.n_quarantined + self.n_duplicates, "curation counts do not add up"
        if self.usable:
            assert self.n_accepted == self.n_eval + self.n_train + self.n_val + self.n_over_limit, \
                "split sizes do not add up"


class Materializer:
    """Pass 3: the kept records, fetched again split by split in time order, are redacted, checked
    for leakage on their redacted text, and turned into rows."""

    def __init__(self, plan: Plan, *, redactor: Redactor | None = None, stratify_key: str | None = None) -> None:
        self.plan = plan
        self.redactor = redactor
        self.result = CurationResult(
            n_in=plan.n_in, n_quarantined=plan.n_quarantined, n_duplicates=plan.n_duplicates,
            n_over_limit=plan.n_over_limit, kind=plan.kind, usable=plan.usable, reason=plan.reason,
            warnings=list(plan.warnings), val_stratified=plan.val_stratified, merged_classes=list(plan.merged_classes))
        self._hash = hashlib.sha256()
        self._eval_keys: set[int] = set()
        self._kept_keys: set[int] = set()
        self._dropped = 0
        self.changed: list[Rejection] = []

    def vanished(self, ref: str) -> None:
        """A kept record that is gone (or no longer valid) when fetched again: quarantined."""
        from flywheel.records import _rejection

        self.changed.append(_rejection(ref, "changed_during_run", "",
                                       "the record changed or was deleted between curation's scan and its fetch "
                                       "(e.g. by raw-log retention); the next run reads the store as it is then"))
        self.result.n_quarantined += 1

    def add(self, split: str, index: int, record: LogRecord, *, redacted: bool = False,
            stored_redacted: bool = False) -> dict[str, Any] | None:
        """The row of one kept record (redacted here unless it was stored redacted), or None when
        its redacted request leaks an eval item's (or repeats a kept one): then it is a duplicate."""
        if not redacted:
            record, found = redact_record(record, self.redactor)
            self.result.pii.update(found)
        elif stored_redacted:
            # Redacted before storage: the audit counts the placeholders the record carries.
            from flywheel.pii import placeholder_counts

            self.result.pii.update(placeholder_counts([record.request, record.response, record.extra]))
        key = request_key(record, with_answer=self.plan.settings.dedup_on_answer)
        leak_key = request_key(record) if self.plan.settings.dedup_on_answer else key
        if key in self._kept_keys or (split != "eval" and leak_key in self._eval_keys):
            self._dropped += 1
            return None
        if split == "eval":
            self._eval_keys.add(leak_key)
        self._kept_keys.add(key)
        label = self.plan.labels[index]
        row = dataset_row(record, split, label)
        self.result.n_split[split] += 1
        self.result.label_counts_by_split[split][label] += 1
        self._hash.update(f"{split}\t{record.source_id}\t{key}\n".encode("utf-8", "surrogatepass"))
        return row

    def finish(self) -> CurationResult:
        r = self.result
        r.n_duplicates += self._dropped
        if self._dropped:
            r.warnings.append(f"{self._dropped} records dropped as duplicates: after redaction their request equals "
                              "an eval item's or another kept record's")
        r.n_accepted = r.n_in - r.n_quarantined - r.n_duplicates
        r.dataset_hash = self._hash.hexdigest()
        if r.usable and r.n_eval < MIN_EVAL:
            r.usable, r.reason = False, "fewer than 2 eval items left after redaction"
        r.check()
        return r


def fetch_order(plan: Plan) -> Iterator[tuple[str, int]]:
    """(split, scan index) of every kept record, eval first, each split in time order."""
    for split in SPLITS:
        for index in plan.members[split]:
            yield split, index


# ---------------------------------------------------------------- streaming from a log source

@dataclass(frozen=True)
class SourceItem:
    """One record as a log source returns it: the key to fetch it again, a reference a person can
    follow, the record (JSON text or bytes, or an already decoded dict), and whether the store
    holds it redacted already."""

    fetch_key: Any
    ref: str
    data: Any
    redacted: bool = False


def parse_item(item: SourceItem, max_bytes: int) -> LogRecord | Rejection:
    from flywheel.records import parse_line, parse_obj

    if isinstance(item.data, (str, bytes)):
        return parse_line(item.ref, item.data, max_bytes=max_bytes)
    return parse_obj(item.ref, item.data)


def scan_batch(items: list[SourceItem], settings: CurationSettings, max_bytes: int) -> list[Scanned | Rejection]:
    """Pass 1 for a batch of records (runs in a worker process when curation uses several)."""
    return [scan_item(item.fetch_key, parse_item(item, max_bytes), settings) for item in items]


def redact_batch(items: list[SourceItem], max_bytes: int,
                 redactor: Redactor | None = None) -> list[tuple[LogRecord | Rejection, Counter]]:
    """Pass 3's slow half for a batch: parse again and redact (unless stored redacted)."""
    out: list[tuple[LogRecord | Rejection, Counter]] = []
    for item in items:
        record = parse_item(item, max_bytes)
        if isinstance(record, Rejection) or item.redacted:
            out.append((record, Counter()))
        else:
            out.append(redact_record(record, redactor))
    return out


class _Runner:
    """Runs a batch function here, or in a pool of worker processes (results in input order)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        self.workers = max(1, workers)
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the caller may be an Airflow task process with threads of its own.
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable, batches: Iterable[list], *args: Any) -> Iterator[list]:
        if self.pool is None:
            for batch in batches:
                yield fn(batch, *args)
            return
        from collections import deque

        pending: deque = deque()
        for batch in batches:
            pending.append(self.pool.submit(fn, batch, *args))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def curate_stream(
    scan: Iterable[SourceItem], fetch: Callable[[list[Any]], Iterable[SourceItem]], settings: CurationSettings, *,
    on_rejection: Callable[[Rejection], None], on_row: Callable[[dict[str, Any]], None],
    max_bytes: int = 65536, workers: int = 1, batch: int = 500, redactor: Redactor | None = None,
) -> CurationResult:
    """Curate one workload straight from a log source in bounded memory (see the module docstring).

    ``scan`` yields every record of the workload's window; ``fetch(keys)`` returns the records of
    those fetch keys again (any order). Rejections and rows are handed to the callbacks as they
    come, rows in dataset order (eval, train, val; each in time order).
    """
    import time

    settings.check()
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    # A custom redactor object lives in this process only.
    runner = _Runner(workers if redactor is None else 1)
    try:
        acc = Scan(settings)
        for scanned in runner.map(scan_batch, _chunks(scan, batch), settings, max_bytes):
            for item in scanned:
                rejection = acc.add(item)
                if rejection is not None:
                    on_rejection(rejection)
        timings["scan_s"] = time.perf_counter() - clock
        plan = plan_splits(acc)
        timings["plan_s"] = time.perf_counter() - clock - timings["scan_s"]
        out = Materializer(plan, redactor=redactor)
        order = list(fetch_order(plan))
        for chunk in _chunks(order, max(batch, 1000)):
            keys = [acc.fetch_keys[index] for _, index in chunk]
            found = {item.fetch_key: item for item in fetch(keys)}
            present = [(split, index, found.get(acc.fetch_keys[index])) for split, index in chunk]
            items = [item for _, _, item in present if item is not None]
            share = max(1, -(-len(items) // runner.workers))
            redacted = [r for part in runner.map(redact_batch, _chunks(items, share), max_bytes, redactor) for r in part]
            results = iter(zip(items, redacted))
            for split, index, item in present:
                if item is None:
                    out.vanished(acc.refs[index])
                    continue
                _, (record, pii) = next(results)
                if isinstance(record, Rejection):
                    out.vanished(record.source_id)
                    continue
                out.result.pii.update(pii)
                row = out.add(split, index, record, redacted=True, stored_redacted=item.redacted)
                if row is not None:
                    on_row(row)
        result = out.finish()
        timings["fetch_redact_write_s"] = time.perf_counter() - clock - timings["scan_s"] - timings["plan_s"]
        result.timings = {k: round(v, 3) for k, v in timings.items()}
        for rejection in out.changed:
            on_rejection(rejection)
        result.reasons = Counter(acc.reasons)
        for rejection in out.changed:
            result.reasons[rejection.reason] += 1
        return result
    finally:
        runner.close()


# ---------------------------------------------------------------- in memory

def curate(
    records: Iterable[LogRecord | Rejection], *, eval_size: int = 20, val_ratio: float = 0.1, seed: int = 42,
    min_train: int = 10, redactor: Redactor | None = None, settings: CurationSettings | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None, **more: Any,
) -> CurationResult:
    """Scan, plan and materialize records held in memory (see the module docstring)."""
    settings = (settings or CurationSettings(eval_size=eval_size, val_ratio=val_ratio, seed=seed,
                                             min_train=min_train, **more)).check()
    scan = Scan(settings)
    kept: list[LogRecord] = []
    quarantine: list[Rejection] = []
    for item in records:
        scanned = scan_item(len(kept), item, settings)
        rejection = scan.add(scanned)
        if rejection is not None:
            quarantine.append(rejection)
        else:
            kept.append(item)  # type: ignore[arg-type]
    plan = plan_splits(scan)
    out = Materializer(plan, redactor=redactor)
    records_by_split: dict[str, list[LogRecord]] = {s: [] for s in SPLITS}
    rows = []
    for split, index in fetch_order(plan):
        record = kept[scan.fetch_keys[index]]
        row = out.add(split, index, record)
        if row is not None:
            rows.append(row)
            records_by_split[split].append(_as_record(row, record))
            if on_row:
                on_row(row)
    result = out.finish()
    result.quarantine = quarantine
    result.reasons = Counter(q.reason for q in quarantine)
    result.rows = rows
    result.eval, result.train, result.val = (records_by_split[s] for s in SPLITS)
    return result


def _as_record(row: dict[str, Any], original: LogRecord) -> LogRecord:
    """The redacted record behind a row."""
    from dataclasses import replace

    return replace(original, request=row["request"], response=row["response"])
