"""flywheel-trainer: the GPU job entrypoint of the data flywheel.

  python -m flywheel_trainer pretrain --corpus corpus.jsonl --out DIR [--hidden 192 --layers 3 ...]
      build a tiny Llama student locally (BPE tokenizer, its own chat template, pre-training on a
      generic corpus of conversations rendered through that template)
  python -m flywheel_trainer run --spec spec.json       (local backend: a file)
  python -m flywheel_trainer run --spec-json '{...}'    (Kubernetes pod: one argument, no shell)
      [--result-file /airflow/xcom/return.json]         (the pod's result, read back by Airflow)
      one experiment: base / icl (generate only) or lora (fine-tune an adapter, then generate)
  python -m flywheel_trainer warm-server --socket PATH
      local backend on CPU: start jobs from a process with torch and transformers imported
      (flywheel_trainer.warm)

Exit status: 0 done, 2 invalid arguments / spec / input file (one line on stderr says which field
and how to fix it), 3 out of accelerator memory even at a micro-batch of one (the line names the
settings to change), 1 any other failure (with its traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flywheel_trainer.spec import SpecError, parse_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel-trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="build and pre-train a tiny local student model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True,
                   help="JSONL of conversations {\"messages\": [...], \"tools\": [...]} (or {\"text\": ...})")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000, help="BPE vocabulary size (at most)")
    # Prompt + answer must fit the position embeddings: production-like prompts (five tool schemas)
    # take ~350 tokens of the student, in-context examples more.
    p.add_argument("--max-seq-len", type=int, default=1024, help="max_position_embeddings of the model")
    p.add_argument("--block", type=int, default=512, help="tokens per packed training row")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=2, help="packed rows per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bpe-dropout", type=float, default=0.0,
                   help="BPE-dropout while encoding the corpus: each merge is skipped with this "
                        "probability, so the pieces of the vocabulary's long tokens are trained too")
    p = sub.add_parser("run", help="run one experiment job")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--spec", type=Path, help="path of the job spec JSON")
    g.add_argument("--spec-json", help="the job spec as a JSON string")
    p.add_argument("--result-file", type=Path,
                   help="also write the job's metrics (JSON) here, e.g. /airflow/xcom/return.json in a "
                        "Kubernetes pod, where Airflow reads a pod's result")
    p = sub.add_parser("warm-server", help="local backend, CPU only: a fork server with torch and transformers "
                                           "imported, which starts each job without the import cost")
    p.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from flywheel_trainer.tiny_lm import pretrain

            if not args.corpus.is_file():
                raise SpecError(f"--corpus {args.corpus} does not exist; give a JSONL file of conversations")
            for name in ("hidden", "layers", "heads", "vocab", "max_seq_len", "block", "steps", "batch_size"):
                if getattr(args, name) < 1:
                    raise SpecError(f"--{name.replace('_', '-')} must be >= 1")
            if not 0.0 <= args.bpe_dropout < 1.0:
                raise SpecError("--bpe-dropout must be in [0, 1)")
            pretrain(corpus=args.corpus, out=args.out, hidden=args.hidden, layers=args.layers,
                     heads=args.heads, vocab=args.vocab, max_seq_len=args.max_seq_len, block=args.block,
                     steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     bpe_dropout=args.bpe_dropout)
            return 0
        if args.command == "warm-server":
            from flywheel_trainer.warm import serve

            return serve(args.socket)
        source = f"--spec {args.spec}" if args.spec else "--spec-json"
        try:
            raw = json.loads(args.spec.read_text(encoding="utf-8")) if args.spec else json.loads(args.spec_json)
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read the job spec from {source}: {exc}") from exc
        from flywheel_trainer.job import run_job

        metrics = run_job(parse_spec(raw))
        if args.result_file:
            args.result_file.parent.mkdir(parents=True, exist_ok=True)
            args.result_file.write_text(json.dumps(metrics, sort_keys=True), encoding="utf-8")
        return 0
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:
        from flywheel_trainer.finetune import TrainingOutOfMemory

        if isinstance(exc, TrainingOutOfMemory):
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
