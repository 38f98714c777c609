"""LoRA supervised fine-tuning with peft: the loss is on the completion tokens only."""

from __future__ import annotations

import math
import random
import time
from typing import Any

from flywheel_trainer import device as devices
from flywheel_trainer.spec import LoraSpec
from flywheel_trainer.tiny_lm import pad_batch


def encode_example(tokenizer, prompt: str, completion: str, max_seq_len: int) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) for prompt + " " + completion + eos; the mask is 0 on the prompt.

    The completion follows the prompt's final `<assistant>` cue after one space, exactly as the
    production text reads. When the pair is longer than max_seq_len the *start* of the prompt is
    dropped: its end holds the question and the cue, and the completion is what we learn from (it is
    itself cut to half the window, so some prompt always remains).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(" " + completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    completion_ids = completion_ids[: max_seq_len // 2]
    room = max_seq_len - len(completion_ids)  # >= max_seq_len / 2
    if len(prompt_ids) > room:
        prompt_ids = prompt_ids[-room:]
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


def _batches(examples: list, batch_size: int, pad_id: int, device: str):
    for i in range(0, len(examples), batch_size):
        chunk = examples[i: i + batch_size]
        ids, attention, labels = pad_batch([c[0] for c in chunk], pad_id, [c[1] for c in chunk])
        yield len(chunk), ids.to(device), attention.to(device), labels.to(device)


def mean_loss(model, examples, batch_size: int, pad_id: int, device: str) -> float | None:
    """Mean per-example completion loss, without dropout and without gradients."""
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for n, ids, attention, labels in _batches(examples, batch_size, pad_id, device):
            total += model(input_ids=ids, attention_mask=attention, labels=labels).loss.item() * n
    model.train(was_training)
    return total / len(examples)


def train_lora(model, tokenizer, train_rows: list[dict], val_rows: list[dict], lora: LoraSpec, *,
               max_seq_len: int, seed: int, device: str) -> tuple[Any, dict]:
    """Wrap `model` with a fresh LoRA adapter, train it, return (peft model, metrics)."""
    import torch
    from peft import LoraConfig, get_peft_model

    devices.seed_everything(seed)  # the adapter's initial weights and the dropout masks
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
    train = [encode_example(tokenizer, r["prompt"], r["completion"], max_seq_len) for r in train_rows]
    val = [encode_example(tokenizer, r["prompt"], r["completion"], max_seq_len) for r in val_rows]
    pad_id = tokenizer.pad_token_id
    total_steps = math.ceil(len(train) / lora.batch_size) * lora.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lora.learning_rate,
                                  weight_decay=0.0)
    # Linear decay to zero: few steps (tens to hundreds), so no warm-up; LoRA's B starts at zero anyway.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total_steps))
    print(f"lora: r={lora.adapter_dim} alpha={config.lora_alpha} dropout={lora.dropout} lr={lora.learning_rate} "
          f"epochs={lora.epochs} batch={lora.batch_size} on {device}; {len(train)} train / {len(val)} val "
          f"examples; {trainable:,} trainable parameters", flush=True)
    rng = random.Random(seed)
    started = time.monotonic()
    first_batch_loss = None
    epoch_losses: list[float] = []
    val_loss = None
    for epoch in range(lora.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        total = 0.0
        for n, ids, attention, labels in _batches([train[j] for j in order], lora.batch_size, pad_id, device):
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * n
            if first_batch_loss is None:  # measured before any update: the untuned model's loss
                first_batch_loss = loss.item()
        epoch_losses.append(total / len(train))
        val_loss = mean_loss(model, val, lora.batch_size, pad_id, device)
        print(f"lora epoch {epoch + 1}/{lora.epochs}: train loss {epoch_losses[-1]:.4f}"
              + ("" if val_loss is None else f", val loss {val_loss:.4f}")
              + f" ({time.monotonic() - started:.1f}s)", flush=True)
    model.eval()
    return model, {
        "train_seconds": round(time.monotonic() - started, 3),
        "train_loss_first": first_batch_loss,
        "train_loss_last": epoch_losses[-1],  # mean over the last epoch
        "train_loss_per_epoch": [round(x, 5) for x in epoch_losses],
        "val_loss": val_loss,
        "train_examples": len(train),
        "val_examples": len(val),
        "trainable_params": trainable,
    }
