"""In-context learning: rank the training examples by similarity to each eval request.

The examples are shown to the candidate as earlier turns of the conversation (flywheel.prompts:
``icl_example``), within a token budget measured with the candidate's own tokenizer and chat
template. Counting needs the tokenizer, so the GPU job does it (flywheel_trainer.chat
``fit_examples``): this module hands it, per eval item, the most similar candidates in order, and
the job takes them greedily while they fit. The job also holds the model directory, which may be
an object-storage prefix the Airflow worker never downloads.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from flywheel.embeddings import Embedder


def rank_examples(query_vec: np.ndarray, pool_vecs: np.ndarray, *, k: int, exclude: Collection[int] = ()) -> list[int]:
    """Indices of the ``k`` pool examples most similar to the query, most similar first.

    Similarity is the cosine of L2-normalised vectors; ties go to the lower index. ``exclude`` lists
    indices never to take: the pool records that ask the query itself (showing the answer is not
    learning).
    """
    if len(pool_vecs) == 0 or k <= 0:
        return []
    similarity = np.asarray(pool_vecs, dtype=np.float64) @ np.asarray(query_vec, dtype=np.float64)
    # lexsort sorts by the last key first: similarity descending, then index ascending.
    ranked = np.lexsort((np.arange(len(similarity)), -similarity))
    out: list[int] = []
    for i in map(int, ranked):
        if i not in exclude:
            out.append(i)
            if len(out) == k:
                break
    return out


def rank_for_eval(
    eval_texts: Sequence[str],
    eval_keys: Sequence[str],
    pool_texts: Sequence[str],
    pool_keys: Sequence[str],
    embedder: Embedder,
    *,
    k: int,
) -> list[list[int]]:
    """For each eval item, the ``k`` most similar pool examples (indices), most similar first.

    ``*_texts`` are what similarity is measured on (flywheel.prompts.similarity_text), ``*_keys``
    identify the request (flywheel.prompts.request_key): a pool record asking exactly what an eval
    item asks is never its example. All texts are embedded in one call.
    """
    if len(eval_texts) != len(eval_keys) or len(pool_texts) != len(pool_keys):
        raise ValueError("every text needs its key")
    if not eval_texts:
        return []
    if not pool_texts or k <= 0:
        return [[] for _ in eval_texts]
    vectors = embedder.embed([*eval_texts, *pool_texts])
    eval_vecs, pool_vecs = vectors[: len(eval_texts)], vectors[len(eval_texts):]
    by_key: dict[str, set[int]] = {}
    for i, key in enumerate(pool_keys):
        by_key.setdefault(key, set()).add(i)
    return [rank_examples(vec, pool_vecs, k=k, exclude=by_key.get(key, set())) for vec, key in zip(eval_vecs, eval_keys)]
