"""Fixtures of the trainer tests: a synthetic corpus and routing task as chat conversations, and a
tiny student pre-trained through the real CLI with its own chat template. No download.

The pre-training corpus has small talk and calls of OTHER tools (`get_weather`, `book_hotel`, ...),
each with the tools' JSON schemas in the system turn, so the model learns the format and to copy
the city from the user's message. The routing task offers four tools the corpus never shows
(`cancel_order`, `track_parcel`, ...): the base model does not pick the right one, a LoRA adapter
learns to.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

CITIES = ["oslo", "lima", "cairo", "seoul", "porto", "hanoi"]
# Every tool takes the city the user named: the corpus teaches the model to copy it.
PRETRAIN_TOOLS = {
    "get_weather": ["what is the weather in", "weather in", "is it cold in"],
    "book_hotel": ["book a hotel in", "find me a hotel in", "hotel in"],
    "find_train": ["find a train to", "train to", "next train to"],
    "call_taxi": ["call a taxi in", "taxi in", "get me a cab in"],
    "rent_car": ["rent a car in", "car rental in", "hire a car in"],
    "show_map": ["show the map of", "map of", "open a map of"],
}
# The words of the task are known from small talk, the tools are not.
SMALL_TALK = [
    ("hi there", "Hello! How can I help?"),
    ("thanks a lot", "You are welcome."),
    ("where is my parcel", "I can help you track your parcel."),
    ("please cancel my order", "I can help you cancel your order."),
    ("I want a refund for my item", "I can help you get a refund for your item."),
    ("I cannot log in", "I can help you reset your login."),
]
# The task: four tools the corpus never shows; the user's words pick one.
ROUTES = {
    "cancel_order": ["cancel my order in", "please cancel the order in", "cancel order in"],
    "track_parcel": ["track my parcel in", "where is my parcel in", "track parcel in"],
    "refund_item": ["refund my item in", "I want a refund in", "refund item in"],
    "reset_login": ["reset my login in", "I cannot log in from", "reset login in"],
}


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def call(name: str, city: str, n: int = 0) -> dict:
    # 9-character ids: what Mistral's templates accept (the other families ignore ids).
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call{n:05d}", "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}]}


def routing_items(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        name, city = rng.choice(list(ROUTES)), rng.choice(CITIES)
        user = f"please {rng.choice(ROUTES[name])} {city}"
        items.append({"id": f"r{seed}-{i}", "tools": [tool(t) for t in sorted(ROUTES)],
                      "messages": [{"role": "user", "content": user}, call(name, city, i)]})
    return items


def corpus_docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 3 == 0:
            question, answer = rng.choice(SMALL_TALK)
            docs.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]})
            continue
        tools = rng.sample(sorted(PRETRAIN_TOOLS), 4)
        name, city = rng.choice(tools), rng.choice(CITIES)
        user = f"please {rng.choice(PRETRAIN_TOOLS[name])} {city}"
        docs.append({"tools": [tool(t) for t in tools],
                     "messages": [{"role": "user", "content": user}, call(name, city, i)]})
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_cli(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    # A guard against a hung trainer, not a timing goal (those are in bench/): generous, because a
    # loaded 2-core machine makes the ~20 s pre-training take minutes.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "flywheel_trainer", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# Small enough to pre-train in a few seconds on 2 cores, big enough to learn format and copying.
TINY = {"hidden": 64, "layers": 2, "heads": 4, "vocab": 400, "max_seq_len": 256, "block": 256, "steps": 150,
        "batch_size": 8, "lr": 5e-3, "seed": 0}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    return write_jsonl(path, corpus_docs(1200, seed=1))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus) -> Path:
    """A tiny Llama student pre-trained through the real CLI (`python -m flywheel_trainer pretrain`)."""
    out = tmp_path_factory.mktemp("models") / "tiny-lm"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    proc = run_cli("pretrain", "--corpus", str(corpus), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def routing_task(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("routing")
    evals = routing_items(24, seed=3)
    return {
        "train": write_jsonl(root / "train.jsonl", routing_items(160, seed=2)),
        "val": write_jsonl(root / "val.jsonl", routing_items(16, seed=4)),
        "eval": write_jsonl(root / "eval.jsonl", [{**e, "messages": e["messages"][:-1]} for e in evals]),
        "gold": {e["id"]: e["messages"][-1]["tool_calls"][0]["function"]["name"] for e in evals},
        "root": root,
    }
