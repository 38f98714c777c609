"""Generation on the eval prompts: vLLM on a GPU when it is installed, transformers otherwise."""

from __future__ import annotations

from pathlib import Path


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def generate_transformers(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_seq_len: int,
                          device: str, batch_size: int = 16) -> tuple[list[str], int]:
    """Greedy, batched with left padding; returns the decoded new tokens and how many there were."""
    import torch

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    generated = 0
    room = max_seq_len - max_new_tokens
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-room:] for p in chunk]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for j, x in enumerate(ids):
            input_ids[j, width - len(x):] = torch.tensor(x)
            attention[j, width - len(x):] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, width:]:
            tokens = row.tolist()
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            tokens = [t for t in tokens if t != tokenizer.pad_token_id]
            generated += len(tokens)
            outputs.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return outputs, generated


def generate_vllm(model_path: Path, adapter_dir: Path | None, prompts: list[str], *, max_new_tokens: int,
                  max_seq_len: int, adapter_dim: int | None) -> tuple[list[str], int]:
    """vLLM with the LoRA adapter applied per request (no merge, so the base weights are shared)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=str(model_path), enable_lora=adapter_dir is not None, max_model_len=max_seq_len,
              max_lora_rank=max(adapter_dim or 16, 16), dtype="bfloat16")
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    lora = LoRARequest("candidate", 1, str(adapter_dir)) if adapter_dir else None
    results = llm.generate(prompts, params, lora_request=lora)
    texts = [r.outputs[0].text.strip() for r in results]
    return texts, sum(len(r.outputs[0].token_ids) for r in results)
