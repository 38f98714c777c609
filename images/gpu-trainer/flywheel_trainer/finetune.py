"""LoRA supervised fine-tuning with peft: loss on the completion tokens only."""

from __future__ import annotations

import math
import random
import time
from typing import Any

from flywheel_trainer import device as devices
from flywheel_trainer.spec import LoraSpec
from flywheel_trainer.tiny_lm import pad_batch


def encode_examples(tokenizer, rows: list[dict[str, str]], max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(token ids, loss mask) per example: prompt + " " + completion + eos, masked on the prompt.

    A sequence longer than max_seq_len keeps the end of the prompt (the cue and the question), never
    cuts the completion.
    """
    out = []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(" " + row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        completion = completion[: max_seq_len // 2]
        prompt = prompt[-(max_seq_len - len(completion)):]
        out.append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    return out


def _mean_loss(model, examples, batch_size: int, pad_id: int, device: str) -> float | None:
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i: i + batch_size]
            ids, att, labels = pad_batch([c[0] for c in chunk], pad_id, [c[1] for c in chunk])
            loss = model(input_ids=ids.to(device), attention_mask=att.to(device), labels=labels.to(device)).loss
            total += float(loss) * len(chunk)
            count += len(chunk)
    model.train()
    return total / count


def train_lora(model, tokenizer, train_rows, val_rows, lora: LoraSpec, *, max_seq_len: int, seed: int, device: str) -> tuple[Any, dict]:
    import torch
    from peft import LoraConfig, get_peft_model

    devices.seed_everything(seed)
    config = LoraConfig(
        r=lora.adapter_dim,
        lora_alpha=lora.adapter_alpha or 2 * lora.adapter_dim,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train = encode_examples(tokenizer, train_rows, max_seq_len)
    val = encode_examples(tokenizer, val_rows, max_seq_len)
    steps_per_epoch = math.ceil(len(train) / lora.batch_size)
    total_steps = steps_per_epoch * lora.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lora.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, total_steps)))
    print(f"lora: r={lora.adapter_dim} dropout={lora.dropout} lr={lora.learning_rate} epochs={lora.epochs} "
          f"batch={lora.batch_size}; {len(train)} train / {len(val)} val examples; {trainable:,} trainable params",
          flush=True)
    rng = random.Random(seed)
    started = time.monotonic()
    first = last = None
    for epoch in range(lora.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        epoch_loss = 0.0
        for i in range(0, len(order), lora.batch_size):
            chunk = [train[j] for j in order[i: i + lora.batch_size]]
            ids, att, labels = pad_batch([c[0] for c in chunk], tokenizer.pad_token_id, [c[1] for c in chunk])
            loss = model(input_ids=ids.to(device), attention_mask=att.to(device), labels=labels.to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            last = float(loss)
            first = last if first is None else first
            epoch_loss += last * len(chunk)
        val_loss = _mean_loss(model, val, lora.batch_size, tokenizer.pad_token_id, device)
        print(f"lora epoch {epoch + 1}/{lora.epochs}: train loss {epoch_loss / max(1, len(train)):.3f}"
              f"{'' if val_loss is None else f', val loss {val_loss:.3f}'}", flush=True)
    metrics = {
        "train_seconds": round(time.monotonic() - started, 3),
        "train_loss_first": first,
        "train_loss_last": last,
        "val_loss": _mean_loss(model, val, lora.batch_size, tokenizer.pad_token_id, device),
        "train_examples": len(train),
        "trainable_params": trainable,
    }
    model.eval()
    return model, metrics
