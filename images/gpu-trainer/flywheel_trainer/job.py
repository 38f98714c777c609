"""One experiment job: (LoRA fine-tune, then) answer the eval items; write predictions + metrics.

Inputs are chat items (flywheel_trainer.spec.ChatItem), rendered with the candidate tokenizer's own
chat template (flywheel_trainer.chat). Outputs under ``spec.output_uri``:

    predictions.jsonl   one flywheel_trainer.spec.Prediction per eval item, in eval order: the raw
                        output, prompt/completion tokens, latency, ICL examples used; written last,
                        so its presence means the job finished
    metrics.json        timings, losses, tokens/s, peak memory, GPU-seconds, skipped counts, device
    adapter/            the LoRA adapter (peft format; vLLM loads it as is), lora only
    checkpoints/        while a lora job trains: what a restarted job resumes from
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from flywheel_trainer import device as devices
from flywheel_trainer import storage
from flywheel_trainer.spec import ChatItem, JobSpec, Prediction, SpecError


def read_items(uri: str, *, field: str) -> list[ChatItem]:
    items = []
    for n, row in enumerate(storage.read_jsonl(uri, field=field), start=1):
        try:
            items.append(ChatItem.model_validate(row))
        except ValidationError as exc:
            problems = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors(include_url=False))
            raise SpecError(f"spec field '{field}': item {n} of {uri} is not a chat item ({problems}); each line "
                            "must be {\"id\", \"messages\": [...], \"tools\": [...]}") from None
    return items


def _model_max_positions(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("max_position_embeddings")


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:  # common in real checkpoints; pads are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    # The job measures every prompt against max_seq_len itself (and skips what does not fit):
    # silence the tokenizer's own warning about its nominal length.
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def render_prompts(chat, items: list[ChatItem], spec: JobSpec, room: int) -> tuple[list[list[int] | None], list[int],
                                                                                   list[str | None]]:
    """Prompt token ids per eval item (None when it cannot be answered), the ICL examples each
    holds, and why an item is skipped. Nothing is truncated: a prompt cut anywhere loses either the
    tools and instructions or the question."""
    from flywheel_trainer.chat import ChatItemError

    prompts: list[list[int] | None] = []
    shots: list[int] = []
    skipped: list[str | None] = []
    for item in items:
        try:
            if spec.strategy == "icl" and item.examples:
                ids, n = chat.fit_examples(item.messages, item.tools, item.examples,
                                           budget_tokens=spec.icl.budget_tokens, max_examples=spec.icl.max_examples,
                                           room=room)
            else:
                ids, n = chat.prompt(item.messages, item.tools), 0
        except ChatItemError as exc:
            prompts.append(None), shots.append(0), skipped.append(f"template_error: {exc}")
            continue
        if len(ids) > room:
            prompts.append(None), shots.append(0)
            skipped.append(f"longer_than_context: the prompt has {len(ids)} tokens, {room} fit "
                           f"(max_seq_len - generation.max_new_tokens)")
            continue
        prompts.append(ids), shots.append(n), skipped.append(None)
    return prompts, shots, skipped


def run_job(spec: JobSpec) -> dict:
    # Read and check every input before loading a model: a bad file fails in a second, not after training.
    eval_items = read_items(spec.eval_uri, field="eval_uri")
    if not eval_items:
        raise SpecError(f"spec field 'eval_uri': {spec.eval_uri} has no items; give at least one chat item")
    ids = [i.id for i in eval_items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecError(f"spec field 'eval_uri': id {dup!r} appears more than once; ids must be unique")
    train_items: list[ChatItem] = []
    val_items: list[ChatItem] = []
    if spec.strategy == "lora":
        assert spec.train_uri is not None and spec.lora is not None
        train_items = read_items(spec.train_uri, field="train_uri")
        if not train_items:
            raise SpecError(f"spec field 'train_uri': {spec.train_uri} has no examples; lora needs at least one")
        if spec.val_uri:
            val_items = read_items(spec.val_uri, field="val_uri")
    model_dir = storage.model_dir(spec.model_uri, candidate=spec.candidate)
    output = storage.Output(spec.output_uri)
    output.remove("predictions.jsonl")  # a failed re-run must not look finished

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    from flywheel_trainer.chat import ChatFormat

    hf_logging.disable_progress_bar()
    tokenizer = _load_tokenizer(model_dir)
    chat = ChatFormat(tokenizer, candidate=spec.candidate, model_uri=spec.model_uri)

    rt = devices.runtime()
    devices.seed_everything(spec.seed)
    max_new_tokens = spec.generation.max_new_tokens
    max_seq_len = spec.max_seq_len
    positions = _model_max_positions(model_dir)
    if positions and positions < max_seq_len:
        max_seq_len = max(positions, max_new_tokens + 1)
        print(f"max_seq_len {spec.max_seq_len} exceeds the model's {positions} positions; using {max_seq_len}",
              flush=True)
    if spec.ignored_fields:
        print(f"ignoring unknown spec field(s) {spec.ignored_fields}", flush=True)
    print(f"{spec.job_name}: strategy {spec.strategy}, candidate {spec.candidate} ({spec.model_uri}), "
          f"{len(eval_items)} eval items, device {rt.device} ({rt.dtype}), generation with {rt.backend}", flush=True)

    room = max_seq_len - max_new_tokens
    prompts, shots, skipped = render_prompts(chat, eval_items, spec, room)
    skip_counts = Counter(s.split(":", 1)[0] for s in skipped if s)
    if skip_counts:
        print(f"eval items not answered: {dict(skip_counts)} of {len(eval_items)}", flush=True)
    metrics: dict = {
        "job_name": spec.job_name, "candidate": spec.candidate, "strategy": spec.strategy, "backend": rt.backend,
        "device": rt.device, "dtype": rt.dtype, "gpu_count": rt.gpu_count, "train_seconds": 0.0,
        "generate_seconds": 0.0, "train_loss_first": None, "train_loss_last": None, "val_loss": None,
        "train_examples": 0, "trainable_params": 0, "eval_examples": len(eval_items),
        "eval_skipped": dict(skip_counts), "max_seq_len": max_seq_len,
        "icl_examples_mean": round(sum(shots) / len(shots), 3) if shots else 0.0,
    }

    model = None
    adapter_dir = None
    if spec.strategy == "lora" or rt.backend == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=rt.torch_dtype)
        model.to(rt.device).eval()
    if spec.strategy == "lora":
        from flywheel_trainer.finetune import train_lora

        assert spec.lora is not None
        model, train_metrics = train_lora(model, chat, train_items, val_items, spec.lora, output=output,
                                          max_seq_len=max_seq_len, seed=spec.seed, runtime=rt,
                                          checkpoint_steps=spec.checkpoint_steps)
        metrics.update(train_metrics)
        adapter_dir = output.path("adapter")
        model.save_pretrained(adapter_dir)
        output.publish("adapter")
        print(f"adapter saved to {output.uri_of('adapter')}", flush=True)

    todo = [i for i, p in enumerate(prompts) if p is not None]
    started = time.monotonic()
    if not todo:
        generated = []
    elif rt.backend == "vllm":
        import torch

        from flywheel_trainer.generate import generate_vllm, stop_ids

        stops = stop_ids(model, tokenizer) if model is not None else stop_ids(None, tokenizer)
        # vLLM takes most of the GPU memory for its KV cache: hand back what training held first.
        del model
        gc.collect()
        torch.cuda.empty_cache()
        generated = generate_vllm(
            model_dir, adapter_dir, [prompts[i] for i in todo], max_new_tokens=max_new_tokens, max_seq_len=max_seq_len,
            adapter_dim=spec.lora.adapter_dim if spec.lora else None, dtype=rt.dtype, gpu_count=rt.gpu_count,
            seed=spec.seed, stops=stops)
    else:
        from flywheel_trainer.generate import generate_transformers

        generated = generate_transformers(model, tokenizer, [prompts[i] for i in todo], max_new_tokens=max_new_tokens,
                                          device=rt.device, batch_size=spec.generation.batch_size)
    metrics["generate_seconds"] = round(time.monotonic() - started, 3)
    if len(generated) != len(todo):  # a backend bug, never a silently shorter file
        raise RuntimeError(f"{len(generated)} outputs for {len(todo)} eval prompts")
    by_index = dict(zip(todo, generated))
    rows = []
    for i, item in enumerate(eval_items):
        g = by_index.get(i)
        rows.append(Prediction(
            id=item.id, output=g["output"] if g else "", prompt_tokens=len(prompts[i] or []),
            completion_tokens=g["completion_tokens"] if g else 0, latency_s=g["latency_s"] if g else 0.0,
            icl_examples=shots[i], skipped=skipped[i]))
    metrics["prompt_tokens"] = sum(r.prompt_tokens for r in rows)
    metrics["tokens_generated"] = sum(r.completion_tokens for r in rows)
    metrics["gpu_seconds"] = round((metrics["train_seconds"] + metrics["generate_seconds"]) * rt.gpu_count, 3)

    output.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
    # ASCII JSON: U+2028, U+2029 and U+0085 in a generated text are escaped, so no JSONL reader can
    # split a prediction in two.
    output.write_text("predictions.jsonl", "".join(json.dumps(r.model_dump()) + "\n" for r in rows))
    print(f"{len(todo)} of {len(rows)} eval items answered, {metrics['tokens_generated']} tokens generated in "
          f"{metrics['generate_seconds']}s with {rt.backend}; written to {spec.output_uri}", flush=True)
    return metrics
