"""Step 2, curate: redact, dedup and split one workload's validated records.

Records arrive already parsed (a ``LogRecord`` or a ``Rejection``, see ``flywheel.records``) and
are consumed as a stream: rejections go to the quarantine, valid records are redacted *before*
anything is kept (so no PII is ever held, hashed or written), then deduplicated exactly. Counts
always add up: ``n_in == n_accepted + n_quarantined + n_duplicates``.

The split is deterministic for a seed and does not depend on the order the records came in:
the eval set is class-balanced (round-robin over classes, so a rare tool is represented), the
validation set is stratified with scikit-learn when every class allows it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flywheel.pii import Redactor, redact_record
from flywheel.prompts import render_completion, render_prompt
from flywheel.records import LogRecord, Rejection, class_label

SPLITS = ("eval", "train", "val")
MIN_EVAL = 2  # an eval set of one item says nothing about a candidate


@dataclass
class CurationResult:
    n_in: int = 0
    n_accepted: int = 0
    n_quarantined: int = 0
    n_duplicates: int = 0
    quarantine: list[Rejection] = field(default_factory=list)
    pii: Counter = field(default_factory=Counter)
    kind: str | None = None
    eval: list[LogRecord] = field(default_factory=list)
    train: list[LogRecord] = field(default_factory=list)
    val: list[LogRecord] = field(default_factory=list)
    usable: bool = False
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    val_stratified: bool = False

    @property
    def n_eval(self) -> int:
        return len(self.eval)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return len(self.val)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {split: len(getattr(self, split)) for split in SPLITS}

    def label_counts(self, split: str) -> Counter:
        return Counter(class_label(r) for r in getattr(self, split))

    @property
    def dataset_hash(self) -> str:
        """Identifies the dataset: which record (id and content) is in which split."""
        h = hashlib.sha256()
        for split in SPLITS:
            for r in getattr(self, split):
                h.update(f"{split}\t{r.source_id}\t{content_key(r)}\n".encode())
        return h.hexdigest()

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per curated record, eval then train then val, each in time order."""
        return [
            {"id": r.source_id, "split": split, "label": class_label(r), "request": r.request, "response": r.response,
             "prompt": render_prompt(r.request), "completion": render_completion(r.assistant_message)}
            for split in SPLITS for r in getattr(self, split)
        ]


def content_key(record: LogRecord) -> str:
    """sha256 of the canonical JSON of (workload_id, request, response): the dedup key."""
    # ensure_ascii keeps the bytes well defined whatever the text holds.
    canonical = json.dumps([record.workload_id, record.request, record.response], sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _natural(source_id: str) -> tuple:
    # "logs.jsonl:9" before "logs.jsonl:10": the first occurrence in a file is the first line.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", source_id))


def arrival_order(record: LogRecord) -> tuple:
    """Time, then position in the source: the order in which "first occurrence" is meant."""
    return record.timestamp, _natural(record.source_id)


def balanced_eval(records: list[LogRecord], size: int, seed: int) -> tuple[list[LogRecord], list[LogRecord]]:
    """(eval, rest): ``size`` records taken round-robin over classes, shuffled within a class by ``seed``.

    Every class keeps at least one record for training (a class of one is never evaluated: it
    could not be both learned and tested).
    """
    rng = random.Random(seed)
    by_class: dict[str, list[LogRecord]] = defaultdict(list)
    for r in sorted(records, key=arrival_order):
        by_class[class_label(r)].append(r)
    pools: dict[str, list[LogRecord]] = {}
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        pools[label] = members[1:]  # members[0] stays for training
    chosen: list[LogRecord] = []
    while len(chosen) < size and any(pools.values()):
        for label in sorted(pools):
            if pools[label] and len(chosen) < size:
                chosen.append(pools[label].pop())
    taken = {id(r) for r in chosen}
    return chosen, [r for r in records if id(r) not in taken]


def split_validation(records: list[LogRecord], ratio: float, seed: int) -> tuple[list[LogRecord], list[LogRecord], bool]:
    """(train, val, stratified): ``val`` is ``round(ratio * n)`` records, stratified by class label
    when every class has two members and both sides can hold one of each."""
    from sklearn.model_selection import train_test_split

    n_val = int(round(len(records) * ratio))
    if n_val == 0:
        return list(records), [], False
    labels = [class_label(r) for r in records]
    counts = Counter(labels)
    stratifiable = min(counts.values()) >= 2 and n_val >= len(counts) and len(records) - n_val >= len(counts)
    train, val = train_test_split(records, test_size=n_val, random_state=seed,
                                  stratify=labels if stratifiable else None)
    return train, val, stratifiable


def _accept(items: Iterable[LogRecord | Rejection], result: CurationResult,
            redactor: Redactor | None) -> list[LogRecord]:
    """Quarantine rejections, redact and dedup the rest; the first occurrence of a duplicate wins."""
    kept: dict[str, LogRecord] = {}
    for item in items:
        result.n_in += 1
        if isinstance(item, Rejection):
            result.n_quarantined += 1
            result.quarantine.append(item)
            continue
        record, found = redact_record(item, redactor)
        result.pii.update(found)
        key = content_key(record)
        first = kept.get(key)
        if first is None:
            kept[key] = record
            continue
        result.n_duplicates += 1
        # Sources need not return records in order: keep the earliest, not the first seen.
        if arrival_order(record) < arrival_order(first):
            kept[key] = record
    return sorted(kept.values(), key=arrival_order)


def _eval_size(n_accepted: int, eval_size: int, min_train: int, result: CurationResult) -> int:
    """How many eval items this many records allow, leaving ``min_train`` for train + val; 0 if unusable."""
    if n_accepted < min_train + MIN_EVAL:
        result.reason = (f"only {n_accepted} usable records; at least {min_train + MIN_EVAL} are needed "
                         f"({min_train} for training, {MIN_EVAL} to evaluate)")
        return 0
    if n_accepted < eval_size + min_train:
        size = n_accepted - min_train
        result.warnings.append(f"eval split shrunk from {eval_size} to {size} to keep {min_train} records for training")
        return size
    return eval_size


def curate(
    records: Iterable[LogRecord | Rejection], *, eval_size: int = 20, val_ratio: float = 0.1, seed: int = 42,
    min_train: int = 10, redactor: Redactor | None = None,
) -> CurationResult:
    """Quarantine, redact, dedup and split one workload's records (see the module docstring)."""
    result = CurationResult()
    accepted = _accept(records, result, redactor)
    result.n_accepted = len(accepted)
    assert result.n_in == result.n_accepted + result.n_quarantined + result.n_duplicates, "curation counts do not add up"
    kinds = Counter(r.kind for r in accepted)
    result.kind = kinds.most_common(1)[0][0] if kinds else None

    size = _eval_size(len(accepted), eval_size, min_train, result)
    if size == 0:
        return result
    evaluation, rest = balanced_eval(accepted, size, seed)
    if len(evaluation) < MIN_EVAL:
        result.reason = "no class has two distinct records, so none can be both trained on and evaluated"
        return result
    if len(evaluation) < size:
        result.warnings.append(f"eval split has {len(evaluation)} items, not {size}: the classes are too small")
    train, val, result.val_stratified = split_validation(rest, val_ratio, seed)
    if val and not result.val_stratified:
        result.warnings.append("validation split is not stratified: too few records per class to stratify")
    # Each split in time order: the dataset (and its hash) depends on the assignment only.
    result.eval, result.train, result.val = (sorted(s, key=arrival_order) for s in (evaluation, train, val))
    result.usable = True
    return result
