"""Benchmark: the flywheel's LoRA trainer against a plain transformers Trainer on the same data.

Both fine-tune the same LoRA adapter (r=32 on every linear projection, batch 16, one epoch) of the
same model on the same training examples: the demo's tool_router training set rendered through
the model's chat template (five tool JSON schemas in the system turn, like production).

- ours (flywheel_trainer.finetune): the prompt prefix the examples share (system prompt + tools) is
  run once per micro-batch, otherwise padding-free packing; the LM head only on answer tokens;
- baseline: transformers Trainer with the model's own loss, every micro-batch padded to its
  longest example, no packing.

Throughput is example tokens (prompt + answer, no padding) per second of training. The runs
alternate (baseline, ours, baseline, ours, ...) in one process and the medians are compared:
these machines are shared and noisy, only the ratio is meant to travel.

    .venv/bin/python bench/bench_trainer.py [--model .flywheel/models/tiny-lm-1.6m] [--examples 256] [--repeats 2]

On a GPU (the trainer image) the same command also reports model-FLOPs utilisation; here there is
none, and the script says so instead of estimating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from _demo import add_model_arg, load_chat, router_records


def demo_train_items(n: int) -> list:
    """The tool_router training split of the demo logs, as the flywheel hands it to the trainer."""
    from flywheel.curation import curate
    from flywheel.prompts import train_item
    from flywheel_trainer.spec import ChatItem

    records = router_records(n_records=2400, days=7)
    rows = [r for r in curate(records, eval_size=20, seed=42).to_rows() if r["split"] == "train"]
    return [ChatItem.model_validate(train_item(r)) for r in rows[:n]]


def _lora_model(model_dir: Path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.1, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def run_baseline(model_dir: Path, examples: list, pad_id: int, out: Path) -> float:
    """A plain transformers Trainer: padding to the longest, the model's own loss; returns seconds."""
    from transformers import Trainer, TrainingArguments

    from flywheel_trainer.packing import collate_padded

    model = _lora_model(model_dir)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=16, num_train_epochs=1,
                             learning_rate=3e-3, report_to="none", disable_tqdm=True, save_strategy="no",
                             logging_strategy="no", remove_unused_columns=False, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": i, "labels": l} for i, l in examples],
                      data_collator=lambda f: collate_padded([(x["input_ids"], x["labels"]) for x in f], pad_id))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def run_ours(model_dir: Path, chat, items: list, out: Path) -> tuple[float, dict]:
    from flywheel_trainer import device as devices
    from flywheel_trainer.finetune import train_lora
    from flywheel_trainer.spec import LoraSpec
    from flywheel_trainer.storage import Output
    from transformers import AutoModelForCausalLM

    import torch

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraSpec(adapter_dim=32, epochs=1, batch_size=16, learning_rate=3e-3)
    _, metrics = train_lora(model, chat, items, [], lora, output=Output(str(out)), max_seq_len=1024, seed=0,
                            runtime=devices.runtime())
    return metrics["train_seconds"], metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    add_model_arg(ap)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/flywheel-bench-trainer"))
    args = ap.parse_args()
    import torch

    from flywheel_trainer.finetune import encode_examples

    rt, tokenizer, chat = load_chat(args.model)
    items = demo_train_items(args.examples)
    examples, skipped = encode_examples(chat, items, 1024)
    tokens = sum(len(ids) for ids, _ in examples)
    print(f"{len(examples)} tool_router training examples ({tokens} tokens, {tokens / len(examples):.0f} per "
          f"example; skipped {dict(skipped)}), model {args.model} on {rt.device}, {torch.get_num_threads()} threads")

    baseline, ours, last = [], [], {}
    for r in range(args.repeats):
        baseline.append(run_baseline(args.model, examples, tokenizer.pad_token_id, args.work / f"base-{r}"))
        seconds, last = run_ours(args.model, chat, items, args.work / f"ours-{r}")
        ours.append(seconds)
        print(f"  repeat {r + 1}: baseline {tokens / baseline[-1]:.0f} tokens/s, ours {tokens / ours[-1]:.0f} "
              f"tokens/s ({last['batches']})", flush=True)
    b, o = statistics.median(baseline), statistics.median(ours)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.python_version()}, torch {torch.__version__}", "device": rt.device,
        "examples": len(examples), "tokens": tokens, "baseline_tokens_per_s": round(tokens / b, 1),
        "ours_tokens_per_s": round(tokens / o, 1), "ratio": round(b / o, 2),
    }
    print(json.dumps(result))
    print(f"ours / plain Trainer (padded, no packing): {b / o:.2f}x tokens per second")
    if rt.device != "cuda":
        print("no GPU here: model-FLOPs utilisation is measured only on a GPU (run this script in the trainer image)")


if __name__ == "__main__":
    main()
