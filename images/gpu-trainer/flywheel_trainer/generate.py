"""Greedy generation for already rendered prompts (token ids): vLLM on a GPU, transformers elsewhere.

Both backends return, in prompt order, per prompt: the raw generated text up to the first stop
token (control tokens kept, so each family's tool-call parser sees what the model wrote), the
number of tokens generated (the stop token included) and the latency in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TypedDict

# The ranks vLLM accepts for max_lora_rank; the adapter's rank is rounded up to one of them.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class Generated(TypedDict):
    output: str
    completion_tokens: int
    latency_s: float


def stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: real checkpoints often list several in generation_config."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def decode(tokenizer, tokens: list[int], stops: list[int]) -> tuple[str, int]:
    """(text before the first stop token, tokens generated including that stop)."""
    end = next((k for k, t in enumerate(tokens) if t in stops), None)
    kept = tokens if end is None else tokens[:end]
    pad = tokenizer.pad_token_id
    text = tokenizer.decode([t for t in kept if t != pad], skip_special_tokens=False)
    return text.strip(), len(tokens) if end is None else end + 1


def generate_transformers(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, device: str,
                          batch_size: int = 16) -> list[Generated]:
    """Greedy, batched with left padding (every row's new tokens start at the same column); prompts
    of similar length share a batch. An item's latency is the wall time of its batch."""
    import torch

    from flywheel_trainer.device import cpu_share

    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generated | None] = [None] * len(prompts)
    share = cpu_share() if device == "cpu" else None
    for start in range(0, len(order), batch_size):
        if share is not None:
            share.adjust()
        rows = order[start: start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for j, i in enumerate(rows):
            input_ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
            attention[j, width - len(prompts[i]):] = 1
        began = time.monotonic()
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=stops, pad_token_id=pad_id,
            )
        latency = round(time.monotonic() - began, 4)
        for j, i in enumerate(rows):
            text, n = decode(tokenizer, out[j, width:].tolist(), stops)
            results[i] = {"output": text, "completion_tokens": n, "latency_s": latency}
    return [r for r in results if r is not None]


def generate_one_by_one(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int,
                        device: str) -> list[Generated]:
    """One ``generate`` call per prompt: the baseline of bench/generation."""
    return [r for p in prompts
            for r in generate_transformers(model, tokenizer, [p], max_new_tokens=max_new_tokens, device=device,
                                           batch_size=1)]


def vllm_lora_rank(adapter_dim: int) -> int:
    return next((r for r in VLLM_LORA_RANKS if r >= adapter_dim), adapter_dim)


def generate_vllm(model_dir: Path, adapter_dir: Path | None, prompts: list[list[int]], *, max_new_tokens: int,
                  max_seq_len: int, adapter_dim: int | None, dtype: str, gpu_count: int, seed: int,
                  stops: list[int]) -> list[Generated]:
    """vLLM's offline engine, every prompt in one batched call (continuous batching inside), the
    LoRA adapter applied per request (not merged: the base weights stay shared)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=str(model_dir), dtype=dtype, seed=seed, max_model_len=max_seq_len,
        tensor_parallel_size=max(1, gpu_count),
        enable_lora=adapter_dir is not None,
        **({"max_lora_rank": vllm_lora_rank(adapter_dim or 8), "max_loras": 1} if adapter_dir else {}),
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=False,
                            stop_token_ids=stops)
    lora = LoRARequest("candidate", 1, str(adapter_dir)) if adapter_dir else None
    began = time.monotonic()
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params,
                           lora_request=[lora] * len(prompts) if lora else None)
    wall = round(time.monotonic() - began, 4)
    out: list[Generated] = []
    for r in results:
        metrics = getattr(r, "metrics", None)
        arrival, finished = getattr(metrics, "arrival_time", None), getattr(metrics, "finished_time", None)
        latency = round(finished - arrival, 4) if arrival and finished and finished >= arrival else wall
        completion = r.outputs[0]
        out.append({"output": completion.text.strip(), "completion_tokens": len(completion.token_ids),
                    "latency_s": latency})
    return out
