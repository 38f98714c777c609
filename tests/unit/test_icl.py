"""In-context examples: ranked by MiniLM similarity here, fitted to the token budget by the job
(tests/trainer/test_chat_templates.py)."""

import numpy as np
import pytest

from flywheel.adapters.embeddings import LocalMiniLM
from flywheel.icl import rank_examples, rank_for_eval
from flywheel.prompts import request_key, similarity_text


def unit_rows(*rows) -> np.ndarray:
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


QUERY = unit_rows([1.0, 0.0])[0]
# Pool similarities to the query: 0.0, ~0.95, ~0.71, 1.0
POOL = unit_rows([0.0, 1.0], [1.0, 0.33], [1.0, 1.0], [1.0, 0.0])


def test_most_similar_first():
    assert rank_examples(QUERY, POOL, k=3) == [3, 1, 2]
    assert rank_examples(QUERY, POOL, k=10) == [3, 1, 2, 0]


def test_ties_go_to_the_lower_index_and_exclusions_are_respected():
    pool = unit_rows([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    assert rank_examples(QUERY, pool, k=2) == [0, 1]
    assert rank_examples(QUERY, pool, k=2, exclude={0}) == [1, 2]


def test_empty_pool_or_k_ranks_nothing():
    assert rank_examples(QUERY, np.zeros((0, 2)), k=4) == []
    assert rank_examples(QUERY, POOL, k=0) == []


@pytest.fixture(scope="module")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


def _request(user: str) -> dict:
    return {"tools": [{"type": "function", "function": {"name": "get_weather"}},
                      {"type": "function", "function": {"name": "book_table"}}],
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": user}]}


POOL_REQUESTS = [_request("What's the weather in Paris?"), _request("Book a table for 4 at 8pm."),
                 _request("Is it raining in London right now?"), _request("Reserve dinner for two tomorrow."),
                 _request("Tell me a joke about cats.")]


def _rank(minilm, eval_requests, k=2):
    return rank_for_eval([similarity_text(r) for r in eval_requests], [request_key(r) for r in eval_requests],
                         [similarity_text(r) for r in POOL_REQUESTS], [request_key(r) for r in POOL_REQUESTS],
                         minilm, k=k)


def test_similar_requests_rank_first(minilm):
    weather, booking = _rank(minilm, [_request("How's the weather in Berlin today?"), _request("Book me a table for three.")])
    assert set(weather) == {0, 2} and set(booking) == {1, 3}
    assert _rank(minilm, [_request("How's the weather in Berlin today?")], k=5)[0][-1] == 4  # the joke is least similar


def test_the_query_itself_is_never_its_example(minilm):
    (ranked,) = _rank(minilm, [POOL_REQUESTS[0]], k=4)
    assert 0 not in ranked and ranked[0] == 2  # the next most similar weather question comes first


def test_without_pool_or_eval_items(minilm):
    assert rank_for_eval(["a"], ["a"], [], [], minilm, k=4) == [[]]
    assert rank_for_eval([], [], ["p"], ["p"], minilm, k=4) == []
