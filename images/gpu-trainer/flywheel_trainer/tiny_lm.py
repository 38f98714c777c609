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
from flywheel_trainer.spec import SpecError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def read_corpus(path: Path) -> list[str]:
    texts = []
    # Split on "\n" only: str.splitlines() also splits inside a record at U+2028, U+0085, a bare CR...
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"--corpus {path}: line {n}: expected a JSON object with a string 'text' ({exc})") from exc
        if isinstance(text, str) and text.strip():
            texts.append(text)
    if not texts:
        raise SpecError(f"--corpus {path} has no texts")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, special_tokens: list[str], max_seq_len: int,
                    max_token_length: int | None = None):
    """Byte-level BPE; the role markers are special tokens, so each is exactly one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits split one by one (as Llama does): order ids and amounts are copied digit by digit
    # instead of becoming rare multi-digit tokens the model never saw.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
        max_token_length=max_token_length,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=list(special_tokens), model_max_length=max_seq_len, padding_side="right",
    )


def build_model(tokenizer, *, hidden: int, layers: int, heads: int, max_seq_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise SpecError(f"--hidden {hidden} must be a multiple of --heads {heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3 + 15) // 16 * 16,  # the usual SwiGLU ratio (~2.7x)
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=True,  # at this size the embedding matrix is a third of the model
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def pack(documents: list[list[int]], block: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then fill rows of at most `block` tokens with whole documents.

    Packing keeps padding (wasted CPU) low; every row still starts at a document start, so the model
    sees texts at position 0, where our prompts are at fine-tuning time.
    """
    order = list(range(len(documents)))
    rng.shuffle(order)
    rows: list[list[int]] = []
    row: list[int] = []
    for i in order:
        doc = documents[i][:block]
        if len(row) + len(doc) > block:
            rows.append(row)
            row = []
        row = row + doc
    if row:
        rows.append(row)
    return rows


def pretrain(
    *, corpus: Path, out: Path, hidden: int = 192, layers: int = 3, heads: int = 4, vocab: int = 2000,
    max_seq_len: int = 512, block: int = 128, steps: int = 500, batch_size: int = 4, lr: float = 3e-3,
    seed: int = 0, special_tokens: list[str] | None = None, max_token_length: int | None = None,
) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    started = time.monotonic()
    hf_logging.disable_progress_bar()  # a tqdm bar per save is noise in an Airflow task log
    devices.seed_everything(seed)
    rt = devices.runtime()
    texts = read_corpus(corpus)
    tokenizer = train_tokenizer(texts, vocab, list(special_tokens or []), max_seq_len, max_token_length)
    model = build_model(tokenizer, hidden=hidden, layers=layers, heads=heads, max_seq_len=max_seq_len)
    model.to(rt.device).train()
    n_params = sum(p.numel() for p in model.parameters())
    documents = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    block = min(block, max_seq_len)
    n_tokens = sum(min(len(d), block) for d in documents)
    print(f"pretrain: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, {len(texts)} texts "
          f"({n_tokens} tokens), {steps} steps x {batch_size} rows of {block} tokens on {rt.device}", flush=True)

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    # Linear warm-up, then cosine decay to zero at the last step.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rows: list[list[int]] = []
    losses: list[float] = []
    epochs = 0
    for step in range(steps):
        if len(rows) < batch_size:  # a new pass over the corpus, packed in a new order
            rows = rows + pack(documents, block, rng)
            epochs += 1
        batch, rows = rows[:batch_size], rows[batch_size:]
        input_ids, attention, labels = pad_batch(batch, tokenizer.pad_token_id, [[1] * len(b) for b in batch])
        loss = model(input_ids=input_ids.to(rt.device), attention_mask=attention.to(rt.device),
                     labels=labels.to(rt.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"pretrain step {step + 1}/{steps} loss {losses[-1]:.3f} (pass {epochs})", flush=True)

    # The last step's loss is one small batch; the mean of the last tenth is a steadier number.
    tail = losses[-max(1, steps // 10):]
    meta = {
        "architecture": "LlamaForCausalLM",
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "corpus": {"path": str(corpus), "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
                   "texts": len(texts), "tokens": n_tokens},
        "hyperparameters": {"hidden": hidden, "layers": layers, "heads": heads, "vocab": vocab,
                            "max_seq_len": max_seq_len, "block": block, "steps": steps, "batch_size": batch_size,
                            "lr": lr, "seed": seed, "special_tokens": list(special_tokens or [])},
        "corpus_passes": epochs,
        "loss_first": losses[0],
        "loss_last": sum(tail) / len(tail),
        "device": rt.device,
        "seconds": round(time.monotonic() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "flywheel_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"pretrain: loss {meta['loss_first']:.3f} -> {meta['loss_last']:.3f} in {meta['seconds']}s, "
          f"saved to {out}", flush=True)
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
