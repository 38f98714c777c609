"""Build a tiny Llama student locally: a BPE tokenizer trained with `tokenizers`, a chat template
of its own, a config, and a short pre-training on a generic corpus. Nothing is downloaded.

It exists because no causal LM small enough to fine-tune on a CPU ships on PyPI; in production the
candidates are real checkpoints and this module is not used. The student's chat template is in the
style of common open models (Hermes / Qwen 2.5: ChatML turns, the tools' JSON schemas in the system
turn, tool calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), and its
pre-training corpus is rendered through that template, so the student and a real model share every
line of code after the tokenizer (flywheel_trainer.chat) and its outputs parse with the ``hermes``
tool-call parser.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

from flywheel_trainer import device as devices
from flywheel_trainer.chat import ChatFormat, serving_messages
from flywheel_trainer.spec import SpecError

PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Each is one token; <|im_end|> ends a turn (the eos), <|endoftext|> pads and separates documents.
CONTROL_TOKENS = [PAD, IM_START, IM_END, "<tools>", "</tools>", "<tool_call>", "</tool_call>"]
TEMPLATE_VERSION = "flywheel-student-chatml-1"  # recorded with the model and every adapter trained on it
CHAT_TEMPLATE = """{#- flywheel-student-chatml-1: ChatML turns, tool schemas in the system turn, Hermes-style tool calls -#}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set ns.system = messages[0].content -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if ns.system or tools -%}
    {{- '<|im_start|>system\n' + ns.system -}}
    {%- if tools -%}
        {{- ('\n' if ns.system else '') + '<tools>' -}}
        {%- for tool in tools -%}
            {{- '\n' + ((tool.function if tool.function is defined else tool) | tojson) -}}
        {%- endfor -%}
        {{- '\n</tools>' -}}
    {%- endif -%}
    {{- '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'assistant' -%}
        {{- '<|im_start|>assistant\n' + (message.content or '') -}}
        {%- for call in message.tool_calls or [] -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {{- '<tool_call>' + ({'name': fn.name, 'arguments': fn.arguments} | tojson) + '</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role in ['user', 'tool', 'system'] -%}
        {{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""


def read_corpus(path: Path) -> list[dict]:
    """Pre-training documents: JSONL of conversations ``{"messages": [...], "tools": [...]}`` (rendered
    through the student's chat template) or plain ``{"text": ...}``."""
    docs = []
    # Split on "\n" only: str.splitlines() also splits inside a record at U+2028, U+0085, a bare CR...
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and (isinstance(row.get("messages"), list) or isinstance(row.get("text"), str))
        except ValueError as exc:
            raise SpecError(f"--corpus {path}: line {n} is not JSON ({exc})") from exc
        if not ok:
            raise SpecError(f"--corpus {path}: line {n}: expected a JSON object with a list 'messages' "
                            "(and optional 'tools') or a string 'text'")
        docs.append(row)
    if not docs:
        raise SpecError(f"--corpus {path} has no documents")
    return docs


def render_document(doc: dict) -> str:
    """A corpus document as text: a conversation through the student's template, or the text itself."""
    if "messages" not in doc:
        return doc["text"]
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[serving_messages(doc["messages"])], tools=doc.get("tools") or None,
                                        chat_template=CHAT_TEMPLATE)
    return rendered[0]


def train_tokenizer(texts: list[str], vocab_size: int, max_seq_len: int, max_token_length: int | None = 24):
    """Byte-level BPE; the control tokens are special tokens, so each is exactly one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits split one by one (as Llama does): order ids and amounts are copied digit by digit
    # instead of becoming rare multi-digit tokens the model never saw.
    # No word-boundary regex: merges may span punctuation and spaces, so the JSON scaffolding of tool
    # schemas and calls (`", "description": "`) costs a few tokens instead of one per symbol;
    # prompts with five tool schemas stay ~30% shorter, and training is that much faster.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
        max_token_length=max_token_length,
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=IM_END, model_max_length=max_seq_len, padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encode_corpus(chat: ChatFormat, docs: list[dict], *, bpe_dropout: float = 0.0) -> list[list[int]]:
    """The corpus as token ids, through the same encoding path as every job (the template's control
    tokens, and only those, are tokens), with BPE-dropout ``bpe_dropout``; the tokenizer is left
    deterministic, as jobs and serving use it."""
    tokenizer = chat.tokenizer
    tokenizer.backend_tokenizer.model.dropout = bpe_dropout or None
    try:
        return [chat.encode(d["messages"], d.get("tools"), add_generation_prompt=False) if "messages" in d
                else tokenizer(d["text"], add_special_tokens=False)["input_ids"] for d in docs]
    finally:
        tokenizer.backend_tokenizer.model.dropout = None


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
        bos_token_id=None,  # ChatML has no begin-of-sequence token
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def pack(documents: list[list[int]], block: int, rng: random.Random, separator: int) -> list[list[int]]:
    """Shuffle, then cut the stream of documents (each followed by ``separator``) into rows of
    ``block`` tokens, as language-model pre-training does: a row attends across documents, so the
    model learns to use the whole window (production prompts with tool schemas are long), not only
    the first hundred positions a single short document would reach."""
    order = list(range(len(documents)))
    rng.shuffle(order)
    stream = [t for i in order for t in (*documents[i], separator)]
    return [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)] or [stream[:block]]


def pretrain(
    *, corpus: Path, out: Path, hidden: int = 192, layers: int = 3, heads: int = 4, vocab: int = 2000,
    max_seq_len: int = 1024, block: int = 512, steps: int = 500, batch_size: int = 2, lr: float = 3e-3,
    seed: int = 0, max_token_length: int | None = 24, bpe_dropout: float = 0.0,
) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    from flywheel_trainer.packing import collate_padded

    started = time.monotonic()
    hf_logging.disable_progress_bar()  # a tqdm bar per save is noise in an Airflow task log
    devices.seed_everything(seed)
    rt = devices.runtime()
    docs = read_corpus(corpus)
    texts = [render_document(d) for d in docs]
    tokenizer = train_tokenizer(texts, vocab, max_seq_len, max_token_length)
    chat = ChatFormat(tokenizer, candidate=out.name, model_uri=str(out))
    # BPE-dropout (Provilkov et al., 2020) while encoding the corpus. The tokenizer is trained on
    # this small templated corpus, so its 2,000 tokens are mostly whole words and phrases of it, and
    # without dropout their pieces never occur in pre-training: every word the corpus lacks (a
    # customer's "cancel", "refund", "parcel") is spelled with pieces whose tied embeddings were
    # only ever pushed down, nearly identical to each other (measured: 69% of the demo router's
    # user-message tokens, mean cosine 0.88 between them against 0.17 for seen tokens). The
    # student then cannot tell two requests apart, and LoRA on its linear layers cannot fix that.
    # Skipping merges at random shows the pieces in context; jobs encode without dropout.
    documents = encode_corpus(chat, docs, bpe_dropout=bpe_dropout)
    model = build_model(tokenizer, hidden=hidden, layers=layers, heads=heads, max_seq_len=max_seq_len)
    model.to(rt.device).train()
    n_params = sum(p.numel() for p in model.parameters())
    block = min(block, max_seq_len)
    n_tokens = sum(len(d) + 1 for d in documents)
    print(f"pretrain: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, {len(docs)} documents "
          f"({n_tokens} tokens, longest {max(map(len, documents))}), {steps} steps x {batch_size} rows of "
          f"{block} tokens on {rt.device}", flush=True)

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
        if len(rows) < batch_size:  # a new pass over the corpus, in a new order
            rows = rows + pack(documents, block, rng, tokenizer.pad_token_id)
            epochs += 1
        batch, rows = rows[:batch_size], rows[batch_size:]
        inputs = collate_padded([(r, r) for r in batch], tokenizer.pad_token_id)
        loss = model(**{k: v.to(rt.device) for k, v in inputs.items()}, use_cache=False).loss
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
        "chat_template": TEMPLATE_VERSION,
        "tool_call_parser": "hermes",
        "corpus": {"path": str(corpus), "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
                   "documents": len(docs), "tokens": n_tokens},
        "hyperparameters": {"hidden": hidden, "layers": layers, "heads": heads, "vocab": vocab,
                            "max_seq_len": max_seq_len, "block": block, "steps": steps, "batch_size": batch_size,
                            "lr": lr, "seed": seed, "bpe_dropout": bpe_dropout},
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
