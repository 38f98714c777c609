"""Benchmark: the similarity scorer embeds a whole experiment in one batch, not item by item.

Runs both side by side in one process on the same texts and prints the ratio (absolute times on
these machines are noisy; the ratio is what to compare across runs).

    .venv/bin/python bench/bench_scoring.py [--items 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

from flywheel.adapters.embeddings import LocalMiniLM
from flywheel.scoring import score_items

WORDS = ("order refund shipping address invoice payment account password delivery package "
         "return warranty battery screen charger subscription plan upgrade cancel track").split()


def _messages(n: int, seed: int) -> list[tuple[dict, dict]]:
    rng = random.Random(seed)
    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
    return [({"role": "assistant", "content": text()}, {"role": "assistant", "content": text()}) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    embedder = LocalMiniLM()
    pairs = _messages(args.items, seed=0)
    embedder.embed(["warm-up"])  # load the model outside the timings

    batched, per_item = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        a = score_items("chat", pairs, embedder)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = [score_items("chat", [p], embedder)[0] for p in pairs]
        per_item.append(time.perf_counter() - t)
    assert all(abs(x.score - y.score) < 1e-4 for x, y in zip(a, b)), "both ways must give the same scores"
    mb, mp = statistics.median(batched), statistics.median(per_item)
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    print(f"items={args.items} repeats={args.repeats}")
    print(f"batched  median {mb:.3f}s  ({args.items / mb:,.0f} items/s)")
    print(f"per-item median {mp:.3f}s  ({args.items / mp:,.0f} items/s)")
    print(f"ratio per-item / batched = {mp / mb:.1f}x")


if __name__ == "__main__":
    main()
