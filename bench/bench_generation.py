"""Benchmark: batched generation against one `generate` call per request, on the same prompts.

The prompts are the demo's tool_router requests rendered through the model's chat template (what
an eval job generates for); both sides decode greedily with the same model and max_new_tokens.
The runs alternate in one process and the medians are compared: these machines are shared and
noisy, only the ratio is meant to travel. Generated tokens per second are counted up to each
answer's end-of-turn token.

    .venv/bin/python bench/bench_generation.py [--model .flywheel/models/tiny-lm-1.6m] [--prompts 32] [--batch-size 16]

On a GPU (the trainer image) vLLM's offline engine is the batched side; here there is none, and
the script says so instead of estimating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

from _demo import add_model_arg, load_chat, router_records


def demo_requests(n: int) -> list:
    from flywheel.prompts import eval_item
    from flywheel_trainer.spec import ChatItem

    records = router_records(n_records=600, days=2)
    return [ChatItem.model_validate(eval_item({"id": r.source_id, "request": r.request})) for r in records[:n]]


def main() -> None:
    ap = argparse.ArgumentParser()
    add_model_arg(ap)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from flywheel_trainer.generate import generate_one_by_one, generate_transformers

    rt, tokenizer, chat = load_chat(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=rt.torch_dtype).to(rt.device).eval()
    prompts = [chat.prompt(item.messages, item.tools) for item in demo_requests(args.prompts)]
    print(f"{len(prompts)} tool_router prompts ({sum(map(len, prompts)) / len(prompts):.0f} tokens each), "
          f"model {args.model} on {rt.device}, {torch.get_num_threads()} threads")
    generate_transformers(model, tokenizer, prompts[:2], max_new_tokens=4, device=rt.device)  # warm-up

    single, batched = [], []
    for r in range(args.repeats):
        started = time.perf_counter()
        one = generate_one_by_one(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, device=rt.device)
        single.append((time.perf_counter() - started, sum(g["completion_tokens"] for g in one)))
        started = time.perf_counter()
        many = generate_transformers(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, device=rt.device,
                                     batch_size=args.batch_size)
        batched.append((time.perf_counter() - started, sum(g["completion_tokens"] for g in many)))
        same = sum(a["output"] == b["output"] for a, b in zip(one, many))
        print(f"  repeat {r + 1}: one by one {single[-1][1] / single[-1][0]:.0f} tokens/s, batched "
              f"{batched[-1][1] / batched[-1][0]:.0f} tokens/s; {same}/{len(prompts)} identical answers", flush=True)
    s = statistics.median(t / n for n, t in ((n, t) for t, n in single))
    b = statistics.median(t / n for n, t in ((n, t) for t, n in batched))
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
              "device": rt.device, "prompts": len(prompts), "batch_size": args.batch_size,
              "one_by_one_tokens_per_s": round(1 / s, 1), "batched_tokens_per_s": round(1 / b, 1),
              "ratio": round(s / b, 2)}
    print(json.dumps(result))
    print(f"batched (batch {args.batch_size}) / one request at a time: {s / b:.2f}x generated tokens per second")
    if rt.device != "cuda":
        print("no GPU here: the vLLM side (goal >= 10x) is measured only on a GPU, in the trainer image")


if __name__ == "__main__":
    main()
