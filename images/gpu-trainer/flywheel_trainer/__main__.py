"""flywheel-trainer: the GPU job entrypoint.

    python -m flywheel_trainer pretrain --corpus corpus.jsonl --out DIR [--hidden 192 ...]
    python -m flywheel_trainer run --spec spec.json          (local backend)
    python -m flywheel_trainer run --spec-json '{...}'       (Kubernetes pod argument)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flywheel_trainer.spec import JobSpec, SpecError, parse_spec, read_jsonl


def run_job(spec: JobSpec) -> dict:
    from flywheel_trainer import device as devices
    from flywheel_trainer.generate import generate_transformers, generate_vllm, vllm_available

    eval_rows = read_jsonl(spec.eval_file, ("id", "prompt"))
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    device = devices.pick_device()
    devices.seed_everything(spec.seed)
    metrics: dict = {"strategy": spec.strategy, "device": device, "gpu_count": devices.gpu_count(),
                     "eval_examples": len(eval_rows), "train_seconds": 0.0}
    print(f"{spec.job_name}: {spec.strategy} on {device}, {len(eval_rows)} eval prompts", flush=True)

    adapter_dir = None
    model = tokenizer = None
    if spec.strategy == "lora" or not vllm_available():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(spec.model_path, local_files_only=True)
        model.to(device).eval()
    if spec.strategy == "lora":
        from flywheel_trainer.finetune import train_lora

        train_rows = read_jsonl(spec.train_file, ("prompt", "completion"))
        val_rows = read_jsonl(spec.val_file, ("prompt", "completion")) if spec.val_file else []
        if not train_rows:
            raise SpecError(f"{spec.train_file} has no training examples")
        model, train_metrics = train_lora(model, tokenizer, train_rows, val_rows, spec.lora,
                                          max_seq_len=spec.max_seq_len, seed=spec.seed, device=device)
        metrics.update(train_metrics)
        adapter_dir = spec.output_dir / "adapter"
        model.save_pretrained(adapter_dir)
        print(f"adapter saved to {adapter_dir}", flush=True)

    prompts = [r["prompt"] for r in eval_rows]
    started = time.monotonic()
    if vllm_available():
        outputs, n_tokens = generate_vllm(spec.model_path, adapter_dir, prompts, max_new_tokens=spec.max_new_tokens,
                                          max_seq_len=spec.max_seq_len,
                                          adapter_dim=spec.lora.adapter_dim if spec.lora else None)
        metrics["backend"] = "vllm"
    else:
        outputs, n_tokens = generate_transformers(model, tokenizer, prompts, max_new_tokens=spec.max_new_tokens,
                                                  max_seq_len=spec.max_seq_len, device=device)
        metrics["backend"] = "transformers"
    metrics["generate_seconds"] = round(time.monotonic() - started, 3)
    metrics["tokens_generated"] = n_tokens
    assert len(outputs) == len(eval_rows)  # one prediction per eval item, never fewer
    tmp = spec.output_dir / "predictions.jsonl.tmp"
    tmp.write_text("".join(json.dumps({"id": r["id"], "output": o}, ensure_ascii=False) + "\n"
                           for r, o in zip(eval_rows, outputs)), encoding="utf-8")
    (spec.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tmp.rename(spec.output_dir / "predictions.jsonl")  # last: its presence means the job finished
    print(f"{len(outputs)} predictions, {n_tokens} tokens in {metrics['generate_seconds']}s "
          f"({metrics['backend']})", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel-trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="build and pre-train a tiny local student model")
    p.add_argument("--corpus", type=Path, required=True, help="JSONL of {\"text\": ...}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--special-tokens", default="", help="comma-separated role markers, one token each")
    p = sub.add_parser("run", help="run one experiment job")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--spec", type=Path, help="path of the job spec JSON")
    g.add_argument("--spec-json", help="the job spec as a JSON string")
    args = parser.parse_args(argv)
    try:
        if args.command == "pretrain":
            from flywheel_trainer.tiny_lm import pretrain

            pretrain(corpus=args.corpus, out=args.out, hidden=args.hidden, layers=args.layers, heads=args.heads,
                     vocab=args.vocab, max_seq_len=args.max_seq_len, steps=args.steps, batch_size=args.batch_size,
                     lr=args.lr, seed=args.seed,
                     special_tokens=[t for t in args.special_tokens.split(",") if t])
            return 0
        try:
            raw = json.loads(args.spec.read_text()) if args.spec else json.loads(args.spec_json)
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read the job spec: {exc}") from exc
        run_job(parse_spec(raw))
        return 0
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
