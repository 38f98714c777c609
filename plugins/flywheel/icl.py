"""In-context learning: pick the training examples most similar to a query and put them in its prompt.

Prompt format used across the project (one record)::

    <tools> name1 name2
    <system> ...
    <user> ...
    <assistant>

and a completion is ``call NAME {json args}`` (tool calls joined by " ; "), compact JSON, or text.
An example in an ICL prompt is its prompt, a single space, its completion and a newline, so the
query prompt's final ``<assistant>`` cue reads like every example's.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np

from flywheel.embeddings import Embedder

TokenCounter = Callable[[str], int]

# Lines whose content is the same for every record of a workload: they carry no signal for
# choosing examples and would push the user's words out of MiniLM's 256-token window.
_SHARED_TAGS = ("<tools>", "<system>")
_ROLE_TAGS = ("<tools>", "<system>", "<user>", "<assistant>")


def render_example(prompt: str, completion: str) -> str:
    """One few-shot example exactly as it appears in the prompt (and as its tokens are counted)."""
    return f"{prompt.rstrip()} {completion.strip()}\n"


def build_icl_prompt(examples: Sequence[tuple[str, str]], query_prompt: str) -> str:
    """The examples (prompt, completion), in the given order, followed by the query prompt."""
    return "".join(render_example(p, c) for p, c in examples) + query_prompt


def similarity_text(prompt: str) -> str:
    """The part of a prompt that tells records apart: the conversation without tools/system lines."""
    kept: list[str] = []
    tag = None
    for line in prompt.splitlines():
        stripped = line.lstrip()
        # A line without a role tag continues the previous turn (multi-line content).
        tag = next((t for t in _ROLE_TAGS if stripped.startswith(t)), tag)
        if tag not in _SHARED_TAGS and stripped != "<assistant>":
            kept.append(line)
    return "\n".join(kept).strip() or prompt


def select_examples(
    query_vec: np.ndarray,
    pool_vecs: np.ndarray,
    *,
    pool_texts: Sequence[str],
    count_tokens: TokenCounter,
    budget_tokens: int,
    max_examples: int = 8,
    exclude: Collection[int] = (),
) -> list[int]:
    """Indices of the pool examples to show before the query, in prompt order.

    ``pool_texts[i]`` is the text example ``i`` adds to the prompt (see :func:`render_example`);
    its token count is its cost, and the costs of the chosen examples sum to at most
    ``budget_tokens``. Examples are taken greedily from the most similar (cosine of L2-normalised
    vectors; ties go to the lower index); one that does not fit the remaining budget is skipped and
    the next one tried. ``exclude`` lists indices never to take: :func:`select_for_eval` puts the
    pool records whose prompt is the query itself there, since showing the answer is not learning.

    The result is ordered least similar first, so the most similar example sits next to the query.
    """
    if len(pool_texts) != len(pool_vecs):
        raise ValueError(f"{len(pool_vecs)} pool vectors but {len(pool_texts)} pool texts")
    if len(pool_texts) == 0 or max_examples <= 0 or budget_tokens <= 0:
        return []
    similarity = np.asarray(pool_vecs, dtype=np.float64) @ np.asarray(query_vec, dtype=np.float64)
    # lexsort sorts by the last key first: similarity descending, then index ascending.
    ranked = np.lexsort((np.arange(len(similarity)), -similarity))

    chosen: list[int] = []
    remaining = budget_tokens
    for i in map(int, ranked):
        if len(chosen) == max_examples:
            break
        if i in exclude:
            continue
        cost = count_tokens(pool_texts[i])
        if cost <= remaining:
            chosen.append(i)
            remaining -= cost
    return chosen[::-1]


def token_counter(model_path: str | Path) -> TokenCounter:
    """Count tokens with a model's ``tokenizer.json`` (the ``tokenizers`` library; no torch).

    Special tokens are not counted: examples sit in the middle of a prompt, where the tokenizer
    adds none.
    """
    from tokenizers import Tokenizer

    path = Path(model_path)
    tokenizer_file = path if path.is_file() else path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json at {tokenizer_file}: the ICL token budget is counted with the "
            "candidate model's own tokenizer, so its model directory must contain tokenizer.json"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count_tokens


def select_for_eval(
    eval_prompts: Sequence[str],
    pool_prompts: Sequence[str],
    pool_completions: Sequence[str],
    embedder: Embedder,
    count_tokens: TokenCounter,
    budget_tokens: int,
    max_examples: int,
) -> list[str]:
    """The ICL prompt for each eval prompt, built from the (prompt, completion) training pool.

    All prompts are embedded in one call; each pool example's tokens are counted once.
    """
    if len(pool_prompts) != len(pool_completions):
        raise ValueError(f"{len(pool_prompts)} pool prompts but {len(pool_completions)} completions")
    if not eval_prompts:
        return []
    if not pool_prompts or budget_tokens <= 0 or max_examples <= 0:
        return list(eval_prompts)

    vectors = embedder.embed([similarity_text(p) for p in [*eval_prompts, *pool_prompts]])
    eval_vecs, pool_vecs = vectors[: len(eval_prompts)], vectors[len(eval_prompts) :]
    pool_texts = [render_example(p, c) for p, c in zip(pool_prompts, pool_completions)]
    cost_by_text = {t: count_tokens(t) for t in pool_texts}
    pool_index_by_prompt: dict[str, set[int]] = defaultdict(set)
    for i, p in enumerate(pool_prompts):
        pool_index_by_prompt[p].add(i)

    prompts = []
    for query_prompt, query_vec in zip(eval_prompts, eval_vecs):
        chosen = select_examples(
            query_vec,
            pool_vecs,
            pool_texts=pool_texts,
            count_tokens=cost_by_text.__getitem__,
            budget_tokens=budget_tokens,
            max_examples=max_examples,
            exclude=pool_index_by_prompt.get(query_prompt, set()),
        )
        examples = [(pool_prompts[i], pool_completions[i]) for i in chosen]
        prompts.append(build_icl_prompt(examples, query_prompt))
    return prompts
