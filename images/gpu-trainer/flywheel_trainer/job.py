"""One experiment job: (LoRA fine-tune, then) generate on the eval prompts, write predictions + metrics.

Outputs in spec.output_dir:
    predictions.jsonl   {"id", "output"} per eval item, in eval order; written last (by rename), so
                        its presence means the job finished
    metrics.json        timings, losses, sizes, backend and device
    adapter/            the LoRA adapter (peft format; vLLM loads it as is), lora only
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

from flywheel_trainer import device as devices
from flywheel_trainer.spec import JobSpec, SpecError, read_jsonl


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _model_max_positions(model_path: Path) -> int | None:
    config = json.loads((model_path / "config.json").read_text())
    return config.get("max_position_embeddings")


def run_job(spec: JobSpec) -> dict:
    # Read and check every input before loading a model: a bad file fails in a second, not after training.
    eval_rows = read_jsonl(spec.eval_file, ("id", "prompt"), field="eval_file")
    if not eval_rows:
        raise SpecError(f"spec field 'eval_file': {spec.eval_file} has no items; give at least one {{id, prompt}}")
    ids = [r["id"] for r in eval_rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecError(f"spec field 'eval_file': id {dup!r} appears more than once; ids must be unique")
    train_rows: list[dict] = []
    val_rows: list[dict] = []
    if spec.strategy == "lora":
        assert spec.train_file is not None and spec.lora is not None
        train_rows = read_jsonl(spec.train_file, ("prompt", "completion"), field="train_file")
        if not train_rows:
            raise SpecError(f"spec field 'train_file': {spec.train_file} has no examples; lora needs at least one")
        if spec.val_file:
            val_rows = read_jsonl(spec.val_file, ("prompt", "completion"), field="val_file")

    rt = devices.runtime()
    devices.seed_everything(spec.seed)
    max_seq_len = spec.max_seq_len
    positions = _model_max_positions(spec.model_path)
    if positions and positions < max_seq_len:
        max_seq_len = max(positions, spec.max_new_tokens + 1)
        print(f"max_seq_len {spec.max_seq_len} exceeds the model's {positions} positions; using {max_seq_len}",
              flush=True)
    if spec.ignored_fields:
        print(f"ignoring unknown spec field(s) {list(spec.ignored_fields)}", flush=True)
    print(f"{spec.job_name}: strategy {spec.strategy}, model {spec.model_path}, {len(eval_rows)} eval prompts, "
          f"device {rt.device} ({rt.dtype}), generation with {rt.backend}", flush=True)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    (spec.output_dir / "predictions.jsonl").unlink(missing_ok=True)  # a failed re-run must not look finished
    metrics: dict = {
        "job_name": spec.job_name, "strategy": spec.strategy, "backend": rt.backend, "device": rt.device,
        "dtype": rt.dtype, "gpu_count": rt.gpu_count, "train_seconds": 0.0, "generate_seconds": 0.0,
        "train_loss_first": None, "train_loss_last": None, "val_loss": None, "train_examples": 0,
        "eval_examples": len(eval_rows), "tokens_generated": 0, "trainable_params": 0, "max_seq_len": max_seq_len,
    }

    model = tokenizer = None
    adapter_dir = None
    if spec.strategy == "lora" or rt.backend == "transformers":
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(spec.model_path, local_files_only=True)
        if tokenizer.pad_token_id is None:  # common in real checkpoints; pads are masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(spec.model_path, local_files_only=True, dtype=rt.torch_dtype)
        model.to(rt.device).eval()
    if spec.strategy == "lora":
        from flywheel_trainer.finetune import train_lora

        assert spec.lora is not None
        model, train_metrics = train_lora(model, tokenizer, train_rows, val_rows, spec.lora,
                                          max_seq_len=max_seq_len, seed=spec.seed, device=rt.device)
        metrics.update(train_metrics)
        adapter_dir = spec.output_dir / "adapter"
        model.save_pretrained(adapter_dir)
        print(f"adapter saved to {adapter_dir}", flush=True)

    prompts = [r["prompt"] for r in eval_rows]
    started = time.monotonic()
    if rt.backend == "vllm":
        import torch

        # vLLM takes most of the GPU memory for its KV cache: hand back what training held first.
        del model
        gc.collect()
        torch.cuda.empty_cache()
        from flywheel_trainer.generate import generate_vllm

        outputs, n_tokens = generate_vllm(
            spec.model_path, adapter_dir, prompts, max_new_tokens=spec.max_new_tokens, max_seq_len=max_seq_len,
            adapter_dim=spec.lora.adapter_dim if spec.lora else None, dtype=rt.dtype, gpu_count=rt.gpu_count,
            seed=spec.seed)
    else:
        from flywheel_trainer.generate import generate_transformers

        outputs, n_tokens = generate_transformers(model, tokenizer, prompts, max_new_tokens=spec.max_new_tokens,
                                                  max_seq_len=max_seq_len, device=rt.device)
    metrics["generate_seconds"] = round(time.monotonic() - started, 3)
    metrics["tokens_generated"] = n_tokens
    if len(outputs) != len(eval_rows):  # a backend bug, never a silently shorter file
        raise RuntimeError(f"{len(outputs)} outputs for {len(eval_rows)} eval prompts")

    _write_atomic(spec.output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    # ASCII JSON: U+2028, U+2029 and U+0085 in a generated text are escaped, so no JSONL reader can
    # split a prediction in two.
    _write_atomic(spec.output_dir / "predictions.jsonl",
                  "".join(json.dumps({"id": r["id"], "output": o}) + "\n"
                          for r, o in zip(eval_rows, outputs)))
    print(f"{len(outputs)} predictions, {n_tokens} tokens generated in {metrics['generate_seconds']}s "
          f"with {rt.backend}; written to {spec.output_dir}", flush=True)
    return metrics
