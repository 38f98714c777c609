"""LoRA supervised fine-tuning: peft + transformers ``Trainer``.

- Examples are the candidate's chat template over the whole conversation (flywheel_trainer.chat);
  the loss covers the answer only (tool calls and the end-of-turn token included), and the LM head
  runs only where a label is: on real vocabularies the logits of prompt tokens are most of the
  memory and a good share of the compute of a step, and no loss needs them.
- Padding-free packing where the model supports it (checked numerically at start: packed and
  one-by-one losses must agree), else padding to the longest example of the micro-batch.
- The effective batch is ``lora.batch_size`` examples per optimizer step; micro-batches of
  ``lora.micro_batch_size`` accumulate gradients to reach it. Out of GPU memory, the micro-batch
  is halved (the accumulation doubled) and training resumes from the last checkpoint; at a
  micro-batch of 1 the error names the settings to change.
- bf16 on a GPU that has it, fp32 elsewhere; seeded; validation loss after every epoch.
- Checkpoints every ``checkpoint_steps`` optimizer steps and at every epoch end go to
  ``<output>/checkpoints`` (object storage included): a restarted job resumes from the newest one
  and its step count continues.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import resource
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flywheel_trainer.chat import ChatFormat, ChatItemError
from flywheel_trainer.packing import (
    Example,
    collate_packed,
    collate_padded,
    collate_shared_prefix,
    pack_rows,
    shared_prefix_length,
    worth_sharing,
)
from flywheel_trainer.spec import ChatItem, LoraSpec

CHECKPOINTS = "checkpoints"
LATEST = "latest"  # names the newest complete checkpoint under <output>/checkpoints
# Fault injection for tests: any micro-batch larger than this raises an out-of-memory error.
SIMULATE_OOM_ENV = "FLYWHEEL_TEST_OOM_ABOVE_MICRO_BATCH"


class TrainingOutOfMemory(RuntimeError):
    """Out of accelerator memory even at a micro-batch of one example."""


def encode_examples(chat: ChatFormat, items: Sequence[ChatItem], max_seq_len: int) -> tuple[list[Example], Counter]:
    """(ids, labels) per item, and why items were skipped: a conversation that the template rejects
    or that is longer than ``max_seq_len`` is left out and counted, never truncated (a cut
    conversation teaches the wrong answer)."""
    examples: list[Example] = []
    skipped: Counter = Counter()
    for item in items:
        try:
            ids, labels = chat.example(item.messages, item.tools)
        except ChatItemError:
            skipped["template_error"] += 1
            continue
        if len(ids) > max_seq_len:
            skipped["longer_than_max_seq_len"] += 1
            continue
        examples.append((ids, labels))
    return examples, skipped


def sample_examples(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """At most ``limit`` of ``examples``: a sample seeded by ``seed``, in their original order."""
    if limit is None or len(examples) <= limit:
        return examples
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), limit))]


def answer_loss(model, inputs: dict, labels, num_items_in_batch=None):
    """Mean cross-entropy over the answer tokens; the LM head only where a label is.

    ``num_items_in_batch`` (the Trainer counts the answer tokens of all accumulated micro-batches)
    makes every token weigh the same whatever micro-batch it falls in.
    """
    import torch.nn.functional as F

    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, target[keep], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))


def shared_prefix_loss(model, inputs: dict, labels, num_items_in_batch=None):
    """:func:`answer_loss` for a batch from packing.collate_shared_prefix: the prefix runs once
    (batch of one), its keys and values are repeated for every row, then the rows (each example's
    own tokens, packed or padded) run on top. Gradients flow through the prefix once, summed over
    the examples."""
    import torch
    import torch.nn.functional as F

    decoder = model.get_decoder()
    prefix = inputs["prefix_ids"]
    out = decoder(input_ids=prefix, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values  # transformers >= 5.24 names it `cache`
    cache.batch_repeat_interleave(inputs["input_ids"].shape[0])
    mask = inputs["attention_mask"]
    if mask.dim() == 4 and getattr(model.config, "_attn_implementation", None) == "eager":
        # eager attention adds the mask to its scores: True (attend) -> 0, False -> the dtype's minimum
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    hidden = decoder(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=inputs["position_ids"],
                     use_cache=True, **{cache_arg: cache}).last_hidden_state
    target = labels[:, 1:]  # the first token of every example after the prefix has no label
    keep = target != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, target[keep], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))


def _full_loss(model, inputs: dict, labels, num_items_in_batch=None):
    """The model's own loss (for models whose head is not a plain projection, e.g. soft-capped logits)."""
    return model(**inputs, labels=labels, use_cache=False, num_items_in_batch=num_items_in_batch).loss


def _plain_head(model) -> bool:
    config = model.config
    return (getattr(config, "final_logit_softcapping", None) is None and hasattr(model, "get_decoder")
            and model.get_output_embeddings() is not None)


class Collator:
    """Micro-batch -> tensors: a shared prefix computed once when the examples have a long one (the
    rest packed when ``pack_prefix``), else packed rows of at most ``capacity`` tokens, else padded
    rows."""

    def __init__(self, pad_id: int, *, packing: bool, capacity: int, share_prefix: bool,
                 pack_prefix: bool = False) -> None:
        self.pad_id, self.packing, self.capacity, self.share_prefix = pad_id, packing, capacity, share_prefix
        self.pack_prefix = pack_prefix
        self.batches: Counter = Counter()

    def __call__(self, features: list[dict]) -> dict:
        import torch

        examples = [(f["input_ids"], f["labels"]) for f in features]
        prefix = shared_prefix_length(examples) if self.share_prefix else 0
        if worth_sharing(examples, prefix):
            batch = collate_shared_prefix(examples, prefix, self.pad_id, pack=self.pack_prefix)
            kind = "shared_prefix"
        elif self.packing:
            batch, kind = collate_packed(pack_rows(examples, self.capacity), self.pad_id), "packed"
        else:
            batch, kind = collate_padded(examples, self.pad_id), "padded"
        self.batches[kind] += 1
        batch["num_tokens"] = torch.tensor(sum(len(ids) for ids, _ in examples))  # example tokens, for tokens/s
        return batch


def _agree(model, device: str, pad_id: int, batch: dict, reference: dict, loss) -> bool:
    import torch

    def run(fn, b):
        return fn(model, {k: v.to(device) for k, v in b.items() if k != "labels"}, b["labels"].to(device))

    try:
        with torch.no_grad():
            got, want = run(loss, batch), run(answer_loss, reference)
    except Exception as exc:  # noqa: BLE001 — an architecture this path does not fit: fall back
        print(f"lora: {loss.__name__} is not available for this model ({type(exc).__name__}: {exc})", flush=True)
        return False
    return bool(torch.isfinite(got)) and abs(got.item() - want.item()) <= 1e-3 * max(1.0, abs(want.item()))


def _probe_examples(model):
    vocab = model.get_input_embeddings().num_embeddings
    if vocab <= 45:
        return None
    head = list(range(5, 25))  # a shared prompt of 20 tokens, then each example's own tokens
    # Own tokens 4, 2, 5 and 3 long: packed into rows of 5, the 2 and the 3 share a row.
    return [(head + [30, 31, 32, 33], [-100] * 21 + [31, 32, 33]), (head + [34, 35], [-100] * 21 + [35]),
            (head + [36, 37, 38, 39, 40], [-100] * 22 + [38, 39, 40]), (head + [41, 42, 43], [-100] * 21 + [42, 43])]


def packing_supported(model, pad_id: int, device: str) -> bool:
    """Whether this model reads restarted position_ids as sequence boundaries: the loss of examples
    packed in one row must equal their loss computed apart."""
    examples = _probe_examples(model)
    return examples is not None and _agree(model, device, pad_id, collate_packed([examples], pad_id),
                                           collate_padded(examples, pad_id), answer_loss)


def shared_prefix_supported(model, pad_id: int, device: str, *, pack: bool = False) -> bool:
    """Whether running a shared prefix once and the rest on its KV cache (packed into rows with a
    4-D attention mask when ``pack``) gives the same loss as the examples padded."""
    examples = _probe_examples(model)
    if examples is None:
        return False
    prefix = shared_prefix_length(examples)
    return _agree(model, device, pad_id, collate_shared_prefix(examples, prefix, pad_id, pack=pack),
                  collate_padded(examples, pad_id), shared_prefix_loss)


def _peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def _last_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last)."""
    done = [p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def train_lora(model, chat: ChatFormat, train_items: Sequence[ChatItem], val_items: Sequence[ChatItem],
               lora: LoraSpec, *, output, max_seq_len: int, seed: int, runtime,
               checkpoint_steps: int | None = None) -> tuple[Any, dict]:
    """Wrap ``model`` with a LoRA adapter, train it (resuming from ``output``'s checkpoints), return
    (peft model, metrics). ``output`` is a flywheel_trainer.storage.Output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    train, train_skipped = encode_examples(chat, train_items, max_seq_len)
    val, val_skipped = encode_examples(chat, val_items, max_seq_len)
    if not train:
        from flywheel_trainer.spec import SpecError

        raise SpecError(f"spec field 'train_uri': none of the {len(train_items)} training examples can be used "
                        f"({dict(train_skipped)}); raise 'max_seq_len' ({max_seq_len}) or check the data")
    if train_skipped or val_skipped:
        print(f"lora: skipped training examples {dict(train_skipped)}, validation examples {dict(val_skipped)}",
              flush=True)
    usable = len(train)
    train = sample_examples(train, lora.max_train_examples, seed)
    if len(train) < usable:
        print(f"lora: training on {len(train)} of the {usable} usable examples (lora.max_train_examples; a sample "
              f"seeded by {seed})", flush=True)
    pad_id = chat.tokenizer.pad_token_id
    device = runtime.device
    torch.manual_seed(seed)  # the adapter's initial weights
    config = LoraConfig(r=lora.adapter_dim, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    plain_head = _plain_head(model)
    loss_fn = answer_loss if plain_head else _full_loss
    # Packing and the shared prefix compute the loss themselves: they need a plain LM head.
    try_packing = lora.packing and plain_head
    packing = try_packing and packing_supported(model, pad_id, device)
    # Packed rows after the prefix where the model takes a 4-D mask; flash attention does not (the
    # check fails), so its rows stay one example each. A packed path that agrees needs no second check.
    pack_prefix = try_packing and shared_prefix_supported(model, pad_id, device, pack=True)
    share_prefix = pack_prefix or (try_packing and shared_prefix_supported(model, pad_id, device))
    attn = getattr(model.config, "_attn_implementation", None)
    # Flash attention's varlen kernel costs nothing per row: one row per micro-batch. sdpa / eager
    # attend over a whole row, so rows stay as long as the longest example.
    longest = max(len(ids) for ids, _ in train + val)
    capacity = 1 << 30 if attn and attn.startswith("flash") else longest
    steps_per_epoch = math.ceil(len(train) / lora.batch_size)
    total_steps = steps_per_epoch * lora.epochs
    # A checkpoint every `checkpoint_steps` optimizer steps, and at least one per epoch.
    checkpoint_steps = max(1, min(checkpoint_steps or steps_per_epoch, steps_per_epoch))
    tokens_per_epoch = sum(len(ids) for ids, _ in train)
    print(f"lora: r={lora.adapter_dim} alpha={lora.alpha} dropout={lora.dropout} lr={lora.learning_rate} "
          f"epochs={lora.epochs} batch={lora.batch_size} (micro-batch {lora.micro_batch} x {lora.accumulation_steps}) "
          f"on {device} ({runtime.dtype}); {len(train)} train / {len(val)} val examples, {tokens_per_epoch} tokens "
          f"per epoch; {'packed' if packing else 'padded'} batches"
          f"{', shared prompt prefixes computed once' if share_prefix else ''}"
          f"{' (the rest packed)' if pack_prefix else ''}, loss on answer tokens "
          f"({'LM head on answer tokens only' if plain_head else 'full LM head'}); {trainable:,} trainable parameters",
          flush=True)

    local_ckpt = output.path(CHECKPOINTS)
    resume = _fetch_checkpoint(output)
    if resume:
        print(f"lora: resuming from {resume.name} (of {total_steps} steps)", flush=True)

    from flywheel_trainer.device import cpu_share

    share = cpu_share() if device == "cpu" else None
    per_epoch: list[float] = []
    val_losses: list[float] = []
    first_loss: list[float] = []

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.pending: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.pending.append(float(logs["loss"]))
                if not first_loss:
                    first_loss.append(float(logs["loss"]))
            if "eval_loss" in logs and state.global_step > 0:
                val_losses.append(round(float(logs["eval_loss"]), 5))
                print(f"lora epoch {round(state.epoch)}/{lora.epochs} (step {state.global_step}/{total_steps}): "
                      f"train loss {per_epoch[-1] if per_epoch else float('nan'):.4f}, "
                      f"val loss {val_losses[-1]:.4f} ({time.monotonic() - started:.1f}s)", flush=True)

        def on_epoch_end(self, args, state, control, **kwargs):
            # Every step's loss of the epoch is logged by now; the validation loss comes right after.
            if self.pending:
                per_epoch.append(round(sum(self.pending) / len(self.pending), 5))
                self.pending = []
            if not val:
                print(f"lora epoch {round(state.epoch)}/{lora.epochs} (step {state.global_step}/{total_steps}): "
                      f"train loss {per_epoch[-1] if per_epoch else float('nan'):.4f} "
                      f"({time.monotonic() - started:.1f}s)", flush=True)

        def on_save(self, args, state, control, **kwargs):
            _publish_checkpoint(output, state.global_step)

        def on_step_begin(self, args, state, control, **kwargs):
            if share is not None:  # CPU: follow the other jobs starting and ending, say the work left
                share.adjust(progress=(state.global_step, total_steps))

    tokens_seen = [0]

    class AnswerLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            n_tokens = inputs.pop("num_tokens")
            if model.training:
                tokens_seen[0] += int(n_tokens)
            fn = shared_prefix_loss if "prefix_ids" in inputs else loss_fn
            loss = fn(model, inputs, labels, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

    # Out of memory before the first checkpoint, the retry starts again from these weights.
    initial_adapter = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    collator = Collator(pad_id, packing=packing, capacity=capacity, share_prefix=share_prefix, pack_prefix=pack_prefix)
    simulate_oom_above = int(os.environ[SIMULATE_OOM_ENV]) if os.environ.get(SIMULATE_OOM_ENV) else None
    val_loss_before = None
    micro = lora.micro_batch
    started = time.monotonic()
    while True:
        accumulation = math.ceil(lora.batch_size / micro)
        args = TrainingArguments(
            output_dir=str(local_ckpt),
            per_device_train_batch_size=micro,
            per_device_eval_batch_size=micro,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=lora.epochs,
            learning_rate=lora.learning_rate,
            lr_scheduler_type="linear",  # linear decay to zero; LoRA's B starts at zero, so no warm-up
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=runtime.dtype == "bfloat16",
            eval_strategy="epoch" if val else "no",
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="steps",
            save_steps=checkpoint_steps,
            save_total_limit=1,
            seed=seed,
            data_seed=seed,
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=device == "cpu",
        )
        features = [{"input_ids": ids, "labels": lab} for ids, lab in train]
        trainer = AnswerLossTrainer(
            model=model, args=args, train_dataset=features,
            eval_dataset=[{"input_ids": ids, "labels": lab} for ids, lab in val] or None,
            data_collator=collator,
            callbacks=[Progress()],
        )
        trainer.remove_callback(PrinterCallback)
        if simulate_oom_above is not None and micro > simulate_oom_above:
            trainer.add_callback(_SimulatedOom(micro))
        try:
            if val and resume is None and val_loss_before is None:
                # The untuned model's validation loss: what the adapter has to beat.
                val_loss_before = round(trainer.evaluate()["eval_loss"], 5)
                print(f"lora: validation loss before training {val_loss_before:.4f}", flush=True)
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except Exception as exc:  # noqa: BLE001 — only out-of-memory is handled, the rest re-raised
            if not _is_oom(exc):
                raise
            del trainer
            if device == "cuda":
                torch.cuda.empty_cache()
            if micro == 1:
                raise TrainingOutOfMemory(
                    f"out of {device} memory at a micro-batch of 1 example (lora.batch_size={lora.batch_size}, "
                    f"gradient accumulation {lora.batch_size}, max_seq_len {max_seq_len}): lower 'max_seq_len' or "
                    "'lora.adapter_dim', or give the job a GPU with more memory") from exc
            micro = max(1, micro // 2)
            resume = _last_checkpoint(local_ckpt)
            if resume is None:
                model.load_state_dict(initial_adapter, strict=False)
            print(f"lora: out of {device} memory; retrying with micro-batch {micro} and gradient accumulation "
                  f"{math.ceil(lora.batch_size / micro)} (effective batch {lora.batch_size} kept; set "
                  f"lora.micro_batch_size={micro} to start there)"
                  + (f", from {resume.name}" if resume else ""), flush=True)

    seconds = time.monotonic() - started
    model.eval()
    shutil.rmtree(local_ckpt, ignore_errors=True)
    output.remove_tree(CHECKPOINTS)  # the adapter is the result; checkpoints were for restarts only
    return model, {
        "train_seconds": round(seconds, 3),
        "train_steps": trainer.state.global_step,
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else None,
        "train_loss_first": first_loss[0] if first_loss else None,
        "train_loss_last": per_epoch[-1] if per_epoch else None,
        "train_loss_per_epoch": per_epoch,
        "val_loss_before": val_loss_before,
        "val_loss": val_losses[-1] if val_losses else None,
        "val_loss_per_epoch": val_losses,
        "train_examples": len(train),
        "train_examples_usable": usable,  # more than train_examples where lora.max_train_examples sampled them
        "val_examples": len(val),
        "train_skipped": dict(train_skipped),
        "train_tokens": tokens_seen[0],
        "train_tokens_per_second": round(tokens_seen[0] / seconds, 1) if seconds else None,
        "packing": packing,
        "shared_prefix": "packed" if pack_prefix else "padded" if share_prefix else None,
        "batches": dict(collator.batches),  # micro-batches by kind: shared_prefix / packed / padded
        "micro_batch_size": micro,
        "gradient_accumulation": math.ceil(lora.batch_size / micro),
        "trainable_params": trainable,
        "peak_memory_bytes": _peak_memory_bytes(device),
    }


class _SimulatedOom:
    """Raises torch's out-of-memory error at the first step (see SIMULATE_OOM_ENV)."""

    def __new__(cls, micro: int):
        from transformers import TrainerCallback

        class Raise(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                import torch

                raise torch.OutOfMemoryError(f"simulated: CUDA out of memory at micro-batch {micro}")

        return Raise()


def _publish_checkpoint(output, step: int) -> None:
    """Copy the checkpoint just saved to the output, then point ``latest`` at it."""
    name = f"checkpoint-{step}"
    if output.remote:
        output.publish(f"{CHECKPOINTS}/{name}")
        output.write_text(f"{CHECKPOINTS}/{LATEST}", name + "\n")
        output.remove_other_trees(CHECKPOINTS, keep={name, LATEST})


def _fetch_checkpoint(output) -> Path | None:
    """The newest complete checkpoint of an earlier attempt of this job, made local."""
    local = output.path(CHECKPOINTS)
    if output.remote and output.fetch(f"{CHECKPOINTS}/{LATEST}"):
        name = (local / LATEST).read_text().strip()
        if name.startswith("checkpoint-") and "/" not in name:
            output.fetch(f"{CHECKPOINTS}/{name}")
    return _last_checkpoint(local)
