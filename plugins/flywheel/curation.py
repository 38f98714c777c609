"""Step 2, curate: redact, validate, dedup and split one workload's records.

Counts always add up: ``n_in == n_accepted + n_quarantined + n_duplicates``. The eval split is
class-balanced (round-robin over classes, so a rare tool is represented), the validation split is
stratified with scikit-learn, and everything is deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flywheel.pii import redact_record
from flywheel.prompts import render_completion, render_prompt
from flywheel.records import LogRecord, Rejection, class_label


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
    def dataset_hash(self) -> str:
        h = hashlib.sha256()
        for split in ("eval", "train", "val"):
            for r in getattr(self, split):
                h.update(f"{split}:{r.source_id}:{_content_key(r)}\n".encode())
        return h.hexdigest()

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per curated record, in a stable order: what experiments and evaluation read."""
        rows = []
        for split in ("eval", "train", "val"):
            for r in getattr(self, split):
                rows.append({
                    "id": r.source_id, "split": split, "label": class_label(r),
                    "request": r.request, "response": r.response,
                    "prompt": render_prompt(r.request), "completion": render_completion(r.assistant_message),
                })
        return rows


def _content_key(r: LogRecord) -> str:
    canonical = json.dumps([r.workload_id, r.request, r.response], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def balanced_eval(records: list[LogRecord], size: int, seed: int) -> tuple[list[LogRecord], list[LogRecord]]:
    """Take ``size`` records round-robin over classes (shuffled within each class by ``seed``).

    A class with a single record stays in training: it cannot be both learned and tested.
    """
    rng = random.Random(seed)
    by_class: dict[str, list[LogRecord]] = defaultdict(list)
    for r in records:
        by_class[class_label(r)].append(r)
    pools = {}
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda r: r.source_id)
        rng.shuffle(members)
        pools[label] = members[: len(members) - 1]  # always leave one for training
    chosen: list[LogRecord] = []
    while len(chosen) < size and any(pools.values()):
        for label in sorted(pools):
            if pools[label] and len(chosen) < size:
                chosen.append(pools[label].pop(0))
    taken = {id(r) for r in chosen}
    return chosen, [r for r in records if id(r) not in taken]


def split_validation(records: list[LogRecord], ratio: float, seed: int) -> tuple[list[LogRecord], list[LogRecord], bool]:
    """(train, val, stratified): val is ``ratio`` of the records, stratified when every class can be."""
    from sklearn.model_selection import train_test_split

    n_val = int(round(len(records) * ratio))
    if n_val == 0 or len(records) - n_val < 1:
        return list(records), [], False
    labels = [class_label(r) for r in records]
    counts = Counter(labels)
    stratify = labels if min(counts.values()) >= 2 and n_val >= len(counts) else None
    train, val = train_test_split(records, test_size=n_val, random_state=seed, stratify=stratify)
    return train, val, stratify is not None


def curate(
    records: Iterable[LogRecord | Rejection], *, eval_size: int = 20, val_ratio: float = 0.1, seed: int = 42,
    min_train: int = 10,
) -> CurationResult:
    result = CurationResult()
    seen: dict[str, LogRecord] = {}
    kinds: Counter = Counter()
    for item in records:
        result.n_in += 1
        if isinstance(item, Rejection):
            result.n_quarantined += 1
            result.quarantine.append(item)
            continue
        redacted, counts = redact_record(item)
        result.pii.update(counts)
        key = _content_key(redacted)
        first = seen.get(key)
        if first is None:
            seen[key] = redacted
        else:
            result.n_duplicates += 1
            # Keep the earliest occurrence, whatever order the source returned them in.
            if (redacted.timestamp, redacted.source_id) < (first.timestamp, first.source_id):
                seen[key] = redacted
        kinds[redacted.kind] += 1
    accepted = sorted(seen.values(), key=lambda r: (r.timestamp, r.source_id))
    result.n_accepted = len(accepted)
    assert result.n_in == result.n_accepted + result.n_quarantined + result.n_duplicates
    result.kind = kinds.most_common(1)[0][0] if kinds else None

    if len(accepted) < min_train + 2:
        result.reason = f"only {len(accepted)} usable records; at least {min_train + 2} are needed"
        return result
    size = eval_size
    if len(accepted) < eval_size + min_train:
        size = len(accepted) - min_train
        result.warnings.append(f"eval split shrunk from {eval_size} to {size} to keep {min_train} for training")
    result.eval, rest = balanced_eval(accepted, size, seed)
    result.train, result.val, result.val_stratified = split_validation(rest, val_ratio, seed)
    result.usable = True
    return result
