"""Build a tiny Llama student locally: a BPE tokenizer trained with `tokenizers`, a config, and a
short pre-training on a generic corpus. Nothing is downloaded.

It exists because no causal LM small enough to fine-tune on a CPU ships on PyPI; in production the
candidates are real checkpoints and this module is not used.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

from flywheel_trainer import device as devices

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_tokenizer(texts: list[str], vocab_size: int, special_tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits split one by one (as Llama does): identifiers and amounts become copyable token by
    # token instead of rare multi-digit tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=list(special_tokens), padding_side="right",
    )


def build_model(tokenizer, *, hidden: int, layers: int, heads: int, max_seq_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 16 * 16,  # the usual SwiGLU ratio
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def pretrain(
    *, corpus: Path, out: Path, hidden: int = 192, layers: int = 3, heads: int = 4, vocab: int = 2000,
    max_seq_len: int = 512, train_seq_len: int = 160, steps: int = 500, batch_size: int = 32,
    lr: float = 3e-3, seed: int = 0, special_tokens: list[str] | None = None,
) -> dict:
    import torch

    started = time.monotonic()
    devices.seed_everything(seed)
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{corpus} has no texts")
    tokenizer = train_tokenizer(texts, vocab, special_tokens or [])
    model = build_model(tokenizer, hidden=hidden, layers=layers, heads=heads, max_seq_len=max_seq_len)
    device = devices.pick_device()
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretrain: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, {len(texts)} texts, "
          f"{steps} steps on {device}", flush=True)

    encoded = [ids + [tokenizer.eos_token_id] for ids in
               tokenizer(texts, add_special_tokens=False, truncation=True, max_length=train_seq_len - 1)["input_ids"]]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    first = last = None
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        input_ids, attention, labels = pad_batch(batch, tokenizer.pad_token_id, [[1] * len(b) for b in batch])
        loss = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        last = float(loss)
        first = last if first is None else first
        if step % 50 == 0 or step == steps - 1:
            print(f"pretrain step {step + 1}/{steps} loss {last:.3f}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "parameters": n_params,
        "corpus_sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
        "hyperparameters": {"hidden": hidden, "layers": layers, "heads": heads, "vocab": vocab, "steps": steps,
                            "batch_size": batch_size, "lr": lr, "seed": seed, "train_seq_len": train_seq_len},
        "loss_first": first,
        "loss_last": last,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "flywheel_model.json").write_text(json.dumps(meta, indent=2))
    print(f"pretrain: loss {first:.3f} -> {last:.3f} in {meta['seconds']}s, saved to {out}", flush=True)
    return meta


def pad_batch(sequences: list[list[int]], pad_id: int, loss_masks: list[list[int]]):
    """Right-padded input ids, attention mask and labels (-100 where no loss is wanted)."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for i, (seq, mask) in enumerate(zip(sequences, loss_masks)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, : len(seq)] = torch.tensor([t if m else -100 for t, m in zip(seq, mask)])
    return ids, attention, labels
