"""Padding-free packing and the answer-only loss, checked against the model's own loss."""

from __future__ import annotations

import random

import pytest

from flywheel_trainer.packing import collate_packed, collate_padded, first_fit_decreasing, pack_rows


def test_first_fit_decreasing_respects_the_capacity_and_keeps_every_item():
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(200)]
    bins = first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) <= 1.25 * sum(lengths) / 64 + 1  # close to the minimum number of rows
    assert first_fit_decreasing([100, 5], 64) == [[0], [1]]  # too long for a row: a row of its own


def _model(kind: str):
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, kind)(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _examples(n: int, seed: int):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, answer = rng.randint(3, 20), rng.randint(1, 8)
        ids = [rng.randint(3, 96) for _ in range(prompt + answer)]
        out.append((ids, [-100] * prompt + ids[prompt:]))
    return out


@pytest.mark.parametrize("kind", ["LlamaConfig", "Qwen2Config"])
def test_packed_padded_and_one_by_one_losses_agree(kind):
    import torch

    from flywheel_trainer.finetune import answer_loss, packing_supported

    model = _model(kind)
    examples = _examples(6, seed=1)
    with torch.no_grad():
        packed = collate_packed(pack_rows(examples, capacity=40), pad_id=0)
        assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row
        padded = collate_padded(examples, pad_id=0)
        lp = answer_loss(model, {k: v for k, v in packed.items() if k != "labels"}, packed["labels"])
        la = answer_loss(model, {k: v for k, v in padded.items() if k != "labels"}, padded["labels"])
        # The model's own loss, one example at a time, weighted by answer tokens.
        total = n = 0
        for ids, labels in examples:
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            k = sum(1 for x in labels[1:] if x != -100)
            total, n = total + out.loss.item() * k, n + k
    assert lp.item() == pytest.approx(total / n, rel=1e-4)
    assert la.item() == pytest.approx(total / n, rel=1e-4)
    assert packing_supported(model, pad_id=0, device="cpu")


def test_packing_restarts_positions_and_masks_the_seams():
    (a_ids, a_lab), (b_ids, b_lab) = ([1, 2, 3], [-100, 2, 3]), ([4, 5], [4, 5])
    batch = collate_packed([[(a_ids, a_lab), (b_ids, b_lab)]], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5]]  # nothing predicts b's first token from a
    assert "attention_mask" not in batch


def _with_shared_prompt(n: int, seed: int):
    rng = random.Random(seed)
    head = [rng.randint(3, 96) for _ in range(24)]  # the system prompt and tools every example has
    out = []
    for _ in range(n):
        user, answer = rng.randint(2, 9), rng.randint(1, 6)
        ids = head + [rng.randint(3, 96) for _ in range(user + answer)]
        out.append((ids, [-100] * (24 + user) + ids[24 + user:]))
    return out


@pytest.mark.parametrize("kind", ["LlamaConfig", "Qwen2Config"])
@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_shared_prefix_computed_once_gives_the_same_loss_and_gradients(kind, pack, attention):
    import torch

    from flywheel_trainer.finetune import answer_loss, shared_prefix_loss, shared_prefix_supported
    from flywheel_trainer.packing import collate_shared_prefix, shared_prefix_length, worth_sharing

    model = _model(kind)
    model.config._attn_implementation = attention
    examples = _with_shared_prompt(8, seed=4)
    prefix = shared_prefix_length(examples)
    assert prefix == 24 and worth_sharing(examples, prefix)

    def loss_and_grad(fn, batch):
        model.zero_grad()
        loss = fn(model, {k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
        loss.backward()
        return loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    batch = collate_shared_prefix(examples, prefix, pad_id=0, pack=pack)
    if pack:
        assert batch["input_ids"].shape[0] < len(examples)  # several examples' own tokens share a row
    shared, g_shared = loss_and_grad(shared_prefix_loss, batch)
    padded, g_padded = loss_and_grad(answer_loss, collate_padded(examples, pad_id=0))
    assert shared == pytest.approx(padded, rel=1e-5)
    assert torch.allclose(g_shared, g_padded, rtol=1e-4, atol=1e-6)
    assert shared_prefix_supported(model, pad_id=0, device="cpu", pack=pack)


def test_packed_rows_after_a_shared_prefix_mask_each_example_apart():
    from flywheel_trainer.packing import collate_shared_prefix

    prefix = [7, 8, 9]
    a, b, c = ([1, 2, 3, 4], [-100, 2, 3, 4]), ([5, 6], [-100, 6]), ([11], [-100])
    examples = [(prefix + ids, [-100] * 3 + lab) for ids, lab in (a, b, c)]
    batch = collate_shared_prefix(examples, 3, pad_id=0, pack=True)
    assert batch["prefix_ids"].tolist() == [prefix]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 11, 0]]  # rows as long as the longest
    assert batch["position_ids"].tolist() == [[3, 4, 5, 6], [3, 4, 3, 3]]  # each example continues the prefix
    assert batch["labels"].tolist() == [[-100, 2, 3, 4], [-100, 6, -100, -100]]
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 4, 3 + 4)
    row = mask[1, 0].int().tolist()  # keys: the prefix's 3, then the row's 4 tokens
    assert row[0] == [1, 1, 1, 1, 0, 0, 0]  # b's first token: the prefix and itself
    assert row[1] == [1, 1, 1, 1, 1, 0, 0]  # b's second token: the prefix and b so far
    assert row[2] == [1, 1, 1, 0, 0, 1, 0]  # c: the prefix and itself, never b
    assert row[3] == [1, 1, 1, 0, 0, 0, 0]  # the pad: the prefix only (no row is fully masked)


def test_no_shared_prefix_when_examples_differ_early_or_a_label_is_inside_it():
    from flywheel_trainer.packing import shared_prefix_length, worth_sharing

    assert shared_prefix_length([([1, 2, 3], [-100, -100, 3]), ([9, 2, 3], [-100, -100, 3])]) == 0
    # The answer would start inside the common tokens: the prefix stops before its first label.
    assert shared_prefix_length([([1, 2, 3, 4], [-100, 2, 3, 4]), ([1, 2, 3, 5], [-100, -100, 3, 5])]) == 0
    assert not worth_sharing([([1] * 20, [-100] * 20)], 19)  # one example: nothing to share


def test_cpu_share_follows_the_running_jobs(tmp_path):
    import fcntl

    import torch

    from flywheel_trainer.device import CpuShare

    held = []

    def start_job(name):
        fh = open(tmp_path / f"{name}.lock", "w")
        fcntl.flock(fh, fcntl.LOCK_EX)
        held.append(fh)

    before = torch.get_num_threads()
    try:
        share = CpuShare(tmp_path, 4, every_seconds=0)
        start_job("me")
        assert share.adjust() == 4 and torch.get_num_threads() == 4  # alone: every core
        start_job("other")
        (tmp_path / "crashed.lock").write_text("")  # unlocked: not running
        assert share.running() == 2 and share.adjust() == 2 and torch.get_num_threads() == 2
        start_job("third")
        assert share.adjust() == 1  # never below one thread
        for fh in held[1:]:
            fh.close()  # the others ended
        assert share.adjust() == 4
        slow = CpuShare(tmp_path, 4, every_seconds=3600)
        assert slow.adjust() == 4
        start_job("late")
        assert slow.adjust() == 4 and slow.adjust(force=True) == 2  # checked at most every_seconds
    finally:
        for fh in held:
            fh.close()
        torch.set_num_threads(before)


def test_relative_nice_gives_cpu_weight_in_proportion_to_the_work_left():
    from flywheel_trainer.device import MAX_NICE, relative_nice

    assert relative_nice(100, 100) == 0 and relative_nice(150, 100) == 0  # the most work left: nice 0
    assert relative_nice(80, 100) == 1  # 1.25x less weight per nice level
    assert relative_nice(50, 100) == 3  # 1.25 ** 3 = 1.95
    assert relative_nice(1, 100) == MAX_NICE and relative_nice(0, 100) == MAX_NICE  # capped: it still ends
    assert relative_nice(0, 0) == 0


# Renicing is for good (an unprivileged process cannot raise its priority again): in a child process.
_NICE_CHILD = r"""
import fcntl, json, os, sys
from pathlib import Path
from flywheel_trainer.device import CpuShare
d = Path(sys.argv[1])
cpu = [0.0]
share = CpuShare(d, 2, own=d / "me.lock", every_seconds=0, min_cpu_seconds=5, cpu_seconds=lambda: cpu[0])
out = []
def step(done, total=100):
    share.adjust(progress=(done, total))
    work = d / "me.lock.work"
    out.append([os.getpriority(os.PRIO_PROCESS, 0), share.nice,
                json.loads(work.read_text())["remaining_cpu_seconds"] if work.exists() else None])
step(0)                # the first call only notes where the job starts
cpu[0] = 2.0; step(2)  # 2 CPU-seconds measured: too little to estimate
cpu[0] = 50.0; step(50)  # 1 CPU-second a step, 50 steps left: 50 s against the big job's 100 s
(d / "big.lock.work").write_text(json.dumps({"remaining_cpu_seconds": 20}))
cpu[0] = 60.0; step(60)  # now the most work left: nice 0 wanted, but priority is never raised again
print(json.dumps(out))
"""


def test_training_jobs_share_contended_cores_by_the_work_left(tmp_path):
    import fcntl
    import json
    import os
    import subprocess
    import sys

    held = []
    for name in ("me", "big", "eval"):  # three running jobs on two cores
        fh = open(tmp_path / f"{name}.lock", "w")
        fcntl.flock(fh, fcntl.LOCK_EX)
        held.append(fh)
    (tmp_path / "big.lock.work").write_text(json.dumps({"remaining_cpu_seconds": 100}))
    (tmp_path / "eval.lock.work").write_text("not json")  # unreadable: ignored
    try:
        r = subprocess.run([sys.executable, "-c", _NICE_CHILD, str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
        assert r.returncode == 0, r.stderr
        base = os.getpriority(os.PRIO_PROCESS, 0)
        steps = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        for fh in held:
            fh.close()
    assert steps[0] == [base, 0, None] and steps[1] == [base, 0, None]  # no estimate yet, no work published
    assert steps[2] == [base + 3, 3, 50.0]  # half the big job's work left: nice 3, every thread
    assert steps[3] == [base + 3, 3, 40.0]  # kept: never raised again; its estimate still published
