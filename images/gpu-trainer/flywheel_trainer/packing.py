"""Batches of tokenised examples: a shared prompt prefix computed once, padding-free packing, or
padding to the longest.

Examples of one workload usually start with the same tokens (the system prompt and the tools'
JSON schemas, often most of the prompt): :func:`collate_shared_prefix` keeps that prefix once per
micro-batch, and the trainer runs it once, then every example's own tokens on its KV cache; where
the model takes a 4-D attention mask (sdpa, eager), the examples' own tokens are also packed into
rows instead of padded to the longest. The loss is the same as for the examples one by one (a test
checks it).

Packing puts several examples in one row and restarts ``position_ids`` at each example. With no
attention mask, transformers (5.x, sdpa / eager / flash attention) reads the restarts as sequence
boundaries and builds a block-diagonal causal mask, so an example attends only to itself: the
loss is the same as for the examples one by one (a test checks it), without computing pad
tokens. Rows hold at most ``capacity`` tokens: one flat row per batch would make sdpa/eager
attention quadratic in the whole batch (flash attention's varlen kernel does not care).
"""

from __future__ import annotations

from collections.abc import Sequence

Example = tuple[Sequence[int], Sequence[int]]  # (input ids, labels with -100 where no loss)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of at most ``capacity`` tokens (an item longer than that gets its
    own bin); longest first, each into the first bin with room. Bins keep a deterministic order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def collate_packed(rows: Sequence[Sequence[Example]], pad_id: int):
    """{input_ids, labels, position_ids} tensors for rows of packed examples; no attention mask.

    The first label of every example is -100 (nothing predicts the first token of an example from
    the previous one). Pads at the end of a row form a sequence of their own (positions restart),
    so no real token attends to them; their labels are -100.
    """
    import torch

    width = max(sum(len(ids) for ids, _ in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for ids, lab in row:
            n = len(ids)
            input_ids[r, at:at + n] = torch.as_tensor(list(ids))
            labels[r, at:at + n] = torch.as_tensor(list(lab))
            labels[r, at] = -100
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def collate_padded(examples: Sequence[Example], pad_id: int):
    """{input_ids, attention_mask, labels} right-padded to the longest example."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, :len(ids)] = torch.as_tensor(list(ids))
        attention[i, :len(ids)] = 1
        labels[i, :len(ids)] = torch.as_tensor(list(lab))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pack_rows(examples: Sequence[Example], capacity: int) -> list[list[Example]]:
    return [[examples[i] for i in b] for b in first_fit_decreasing([len(ids) for ids, _ in examples], capacity)]


MIN_SHARED_PREFIX = 16  # tokens; below this, packing is as good


def shared_prefix_length(examples: Sequence[Example]) -> int:
    """Tokens every example starts with and has no loss on (nor on the token after them), so the
    prefix's hidden states are needed only as keys and values."""
    first = examples[0][0]
    n = min(len(ids) for ids, _ in examples) - 1
    for ids, labels in examples:
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        supervised = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        n = min(k, supervised - 1)
    return max(0, n)


def worth_sharing(examples: Sequence[Example], prefix: int) -> bool:
    """A shared prefix pays when it is long and saves a real share of the batch's tokens."""
    total = sum(len(ids) for ids, _ in examples)
    return prefix >= MIN_SHARED_PREFIX and len(examples) > 1 and prefix * (len(examples) - 1) >= 0.2 * total


def collate_shared_prefix(examples: Sequence[Example], prefix: int, pad_id: int, *, pack: bool = False):
    """{prefix_ids [1, P], input_ids [R, S], position_ids [R, S], attention_mask, labels [R, S]}: the
    tokens every example starts with once, then each example's own tokens (after the prefix), at
    positions P, P + 1, ...

    Unpacked, each example is a row of its own, right-padded to the longest (R = examples), and
    ``attention_mask`` is the 2-D [R, P + S] padding mask. Packed, the examples' own tokens are
    packed first-fit into rows as long as the longest of them (no padding between examples, fewer
    rows for the prefix's keys and values to be repeated over), and ``attention_mask`` is a 4-D
    boolean [R, 1, S, P + S] mask: a token attends to the whole prefix and, causally, to its own
    example; pads at the end of a row attend to the prefix only. The first token of every example
    after the prefix has no label (:func:`shared_prefix_length`), so no example's loss reads another's.
    """
    import torch

    own = [(list(ids[prefix:]), list(labels[prefix:])) for ids, labels in examples]
    width = max(len(ids) for ids, _ in own)
    rows = first_fit_decreasing([len(ids) for ids, _ in own], width) if pack else [[k] for k in range(len(own))]
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.full((len(rows), width), prefix, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which example a token is; -1: pad
    for r, row in enumerate(rows):
        at = 0
        for k in row:
            ids, lab = own[k]
            n = len(ids)
            input_ids[r, at:at + n] = torch.as_tensor(ids)
            labels[r, at:at + n] = torch.as_tensor(lab)
            labels[r, at] = -100
            positions[r, at:at + n] = torch.arange(prefix, prefix + n)
            segment[r, at:at + n] = k
            at += n
    if pack:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        own_mask = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0) & causal
        attention = torch.cat([torch.ones(len(rows), width, prefix, dtype=torch.bool), own_mask], dim=2)[:, None]
    else:
        attention = torch.cat([torch.ones(len(rows), prefix, dtype=torch.long), (segment >= 0).long()], dim=1)
    return {"prefix_ids": torch.as_tensor([list(examples[0][0][:prefix])], dtype=torch.long),
            "input_ids": input_ids, "position_ids": positions, "attention_mask": attention, "labels": labels}
