"""Greedy generation on the eval prompts: vLLM on a GPU, transformers elsewhere.

Both backends return, in prompt order, the decoded new text (stripped) and the number of tokens
generated (the closing eos included). Both keep the *end* of a prompt that does not fit in
max_seq_len - max_new_tokens tokens: it holds the question and the final `<assistant>` cue.
"""

from __future__ import annotations

from pathlib import Path

# The ranks vLLM accepts for max_lora_rank; the adapter's rank is rounded up to one of them.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def prompt_ids(tokenizer, prompts: list[str], room: int) -> list[list[int]]:
    # An empty prompt still gets an answer (one prediction per eval item): it starts from bos.
    start = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return [tokenizer(p, add_special_tokens=False)["input_ids"][-room:] or start for p in prompts]


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a generation: real checkpoints often list several in generation_config."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def generate_transformers(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_seq_len: int,
                          device: str, batch_size: int = 16) -> tuple[list[str], int]:
    """Greedy, batched with left padding (so every row's new tokens start at the same column)."""
    import torch

    stops = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    encoded = prompt_ids(tokenizer, prompts, max_seq_len - max_new_tokens)
    # Similar lengths in one batch waste less compute on padding; outputs go back to prompt order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    generated = 0
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for j, i in enumerate(rows):
            input_ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention[j, width - len(encoded[i]):] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=stops, pad_token_id=pad_id,
            )
        for j, i in enumerate(rows):
            tokens = out[j, width:].tolist()
            end = next((k for k, t in enumerate(tokens) if t in stops), None)
            generated += len(tokens) if end is None else end + 1
            outputs[i] = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()
    return outputs, generated


def vllm_lora_rank(adapter_dim: int) -> int:
    return next((r for r in VLLM_LORA_RANKS if r >= adapter_dim), adapter_dim)


def generate_vllm(model_path: Path, adapter_dir: Path | None, prompts: list[str], *, max_new_tokens: int,
                  max_seq_len: int, adapter_dim: int | None, dtype: str, gpu_count: int,
                  seed: int) -> tuple[list[str], int]:
    """vLLM with the LoRA adapter applied per request (not merged: the base weights stay shared)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=str(model_path), dtype=dtype, seed=seed, max_model_len=max_seq_len,
        tensor_parallel_size=max(1, gpu_count),
        enable_lora=adapter_dir is not None,
        **({"max_lora_rank": vllm_lora_rank(adapter_dim or 8), "max_loras": 1} if adapter_dir else {}),
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
    encoded = prompt_ids(llm.get_tokenizer(), prompts, max_seq_len - max_new_tokens)
    lora = LoRARequest("candidate", 1, str(adapter_dir)) if adapter_dir else None
    results = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, lora_request=lora)
    return ([r.outputs[0].text.strip() for r in results],
            sum(len(r.outputs[0].token_ids) for r in results))
