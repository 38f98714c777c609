import json

import numpy as np
import pytest

from flywheel.adapters.embeddings import LocalMiniLM
from flywheel.scoring import (
    EMBEDDING_COSINE,
    JSON_FIELD_EXACT,
    SCORER_DESCRIPTIONS,
    TOOL_CALL_EXACT,
    ItemScore,
    aggregate,
    describe,
    message_text,
    score_items,
    score_json_fields,
    score_text,
    score_tool_calls,
)


@pytest.fixture(scope="module")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


class CountingEmbedder:
    """Wraps an embedder and records each embed call, to check batching."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def embed(self, texts):
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def call(name, arguments):
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"type": "function", "function": {"name": name, "arguments": raw}}


def tool_msg(*calls):
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def text_msg(content):
    return {"role": "assistant", "content": content}


WEATHER = call("get_weather", {"city": "Paris", "unit": "celsius"})


# --- tool calls ---------------------------------------------------------------------------------


def test_exact_tool_call_scores_one():
    result = score_tool_calls(tool_msg(WEATHER), tool_msg(WEATHER))
    assert result == ItemScore(1.0, TOOL_CALL_EXACT, result.detail)
    assert result.detail["name_match"] == [True]
    assert result.detail["args_match"] == [1.0]


def test_half_the_arguments_right_scores_three_quarters():
    candidate = tool_msg(call("get_weather", {"city": "Paris", "unit": "fahrenheit"}))
    result = score_tool_calls(tool_msg(WEATHER), candidate)
    assert result.score == 0.75
    assert result.detail["args_match"] == [0.5]


def test_wrong_tool_scores_zero_even_with_the_same_arguments():
    candidate = tool_msg(call("get_forecast", {"city": "Paris", "unit": "celsius"}))
    result = score_tool_calls(tool_msg(WEATHER), candidate)
    assert result.score == 0.0
    assert result.detail["name_match"] == [False]


def test_argument_order_does_not_matter():
    reordered = tool_msg(call("get_weather", '{"unit": "celsius",   "city": "Paris"}'))
    assert score_tool_calls(tool_msg(WEATHER), reordered).score == 1.0


def test_argument_values_are_exact_and_typed():
    reference = tool_msg(call("set_alarm", {"hour": 7, "enabled": True, "label": "Gym"}))
    candidate = tool_msg(call("set_alarm", {"hour": 7.0, "enabled": 1, "label": "gym"}))
    # 7 == 7.0 is the same JSON number; 1 is not true; "gym" is not "Gym".
    assert score_tool_calls(reference, candidate).score == pytest.approx(0.5 + 0.5 / 3)


def test_malformed_arguments_get_name_credit_only():
    candidate = tool_msg(call("get_weather", '{"city": "Paris", "unit": '))
    result = score_tool_calls(tool_msg(WEATHER), candidate)
    assert result.score == 0.5
    assert result.detail["malformed_arguments"] == [0]


def test_extra_and_missing_calls_count_as_misses():
    book = call("book_table", {"people": 2})
    assert score_tool_calls(tool_msg(WEATHER), tool_msg(WEATHER, book)).score == 0.5
    assert score_tool_calls(tool_msg(WEATHER, book), tool_msg(WEATHER)).score == 0.5
    # Calls are aligned in order: the right calls in the wrong order are both wrong.
    assert score_tool_calls(tool_msg(WEATHER, book), tool_msg(book, WEATHER)).score == 0.0


def test_calls_without_arguments():
    reference = tool_msg(call("list_alarms", "{}"))
    assert score_tool_calls(reference, tool_msg(call("list_alarms", ""))).score == 1.0
    assert score_tool_calls(reference, tool_msg(call("list_alarms", {"all": True}))).score == 0.5


def test_no_tool_calls_on_either_side_is_exact_agreement():
    assert score_tool_calls(text_msg("Hello!"), text_msg("Hi")).score == 1.0
    assert score_tool_calls(tool_msg(WEATHER), text_msg("It is sunny.")).score == 0.0
    assert score_tool_calls(text_msg("Hello!"), tool_msg(WEATHER)).score == 0.0
    assert score_tool_calls(tool_msg(WEATHER), None).score == 0.0


# --- JSON fields --------------------------------------------------------------------------------


INVOICE = text_msg('{"vendor": "ACME Corp", "total": 12.5, "currency": "EUR", "paid": false}')


def test_json_fields_normalise_numbers_and_strings():
    candidate = text_msg('{"vendor": "  acme corp ", "total": "12.50", "currency": "eur", "paid": false}')
    result = score_json_fields(INVOICE, candidate)
    assert result.score == 1.0
    assert result.method == JSON_FIELD_EXACT


def test_json_fields_partial_and_missing_keys():
    candidate = text_msg('{"vendor": "ACME Corp", "total": 13, "extra": 1}')
    result = score_json_fields(INVOICE, candidate)
    assert result.score == 0.25
    assert result.detail["fields"] == {"vendor": True, "total": False, "currency": False, "paid": False}


def test_json_booleans_are_not_numbers():
    reference = text_msg('{"paid": false, "count": 0}')
    assert score_json_fields(reference, text_msg('{"paid": 0, "count": false}')).score == 0.0


def test_unparsable_candidate_scores_zero_with_a_reason():
    result = score_json_fields(INVOICE, text_msg("vendor: ACME Corp, total 12.5"))
    assert result.score == 0.0
    assert "not a JSON object" in result.detail["reason"]


def test_unparsable_reference_falls_back_to_embedding(minilm):
    result = score_json_fields(text_msg("ACME Corp, 12.50 EUR"), text_msg("ACME Corp, 12.50 EUR"), minilm)
    assert result.method == EMBEDDING_COSINE
    assert result.score == pytest.approx(1.0, abs=1e-5)
    assert "not a JSON object" in result.detail["fallback"]
    with pytest.raises(ValueError, match="embedder"):
        score_json_fields(text_msg("not json"), text_msg("x"))


# --- free text ----------------------------------------------------------------------------------


def test_text_scores_rank_a_paraphrase_above_an_unrelated_answer(minilm):
    reference = "Your order has shipped and should arrive on Friday."
    scores = score_text(
        [reference, reference, reference],
        [
            "The order was shipped; expect delivery on Friday.",
            "Photosynthesis converts light into chemical energy.",
            "   ",
        ],
        minilm,
    )
    paraphrase, unrelated, empty = scores
    assert paraphrase.score > 0.7
    assert paraphrase.score > unrelated.score + 0.3
    assert empty.score == 0.0 and empty.detail["reason"] == "candidate answer is empty"
    assert all(0.0 <= s.score <= 1.0 and s.method == EMBEDDING_COSINE for s in scores)
    assert paraphrase.detail["embedder"] == minilm.name


def test_negative_cosine_is_clipped_to_zero():
    class Opposite:
        name = "opposite"

        def embed(self, texts):
            half = len(texts) // 2
            return np.array([[1.0, 0.0]] * half + [[-1.0, 0.0]] * half, dtype=np.float32)

    (result,) = score_text(["yes"], ["no"], Opposite())
    assert result.score == 0.0
    assert result.detail["cosine"] == -1.0


def test_message_text_renders_tool_calls():
    assert message_text(tool_msg(WEATHER)) == 'call get_weather {"city": "Paris", "unit": "celsius"}'


# --- dispatch -----------------------------------------------------------------------------------


def test_score_items_batches_all_text_into_one_embed_call(minilm):
    counting = CountingEmbedder(minilm)
    pairs = [
        (text_msg("Good morning, how can I help?"), text_msg("Hello, how may I help you?")),
        (text_msg("The meeting is at 3 pm."), text_msg("We meet at three in the afternoon.")),
        (text_msg("Thanks!"), text_msg("")),
    ]
    scores = score_items("chat", pairs, counting)
    assert len(counting.calls) == 1 and len(counting.calls[0]) == 4
    assert [s.method for s in scores] == [EMBEDDING_COSINE] * 3
    assert scores[2].score == 0.0


def test_score_items_json_mixes_exact_and_fallback(minilm):
    counting = CountingEmbedder(minilm)
    pairs = [
        (INVOICE, INVOICE),
        (text_msg("no json here"), text_msg("no json here either")),
        (INVOICE, text_msg("{")),
    ]
    exact, fallback, broken = score_items("json_extraction", pairs, counting)
    assert (exact.score, exact.method) == (1.0, JSON_FIELD_EXACT)
    assert fallback.method == EMBEDDING_COSINE and "fallback" in fallback.detail
    assert (broken.score, broken.method) == (0.0, JSON_FIELD_EXACT)
    assert len(counting.calls) == 1


def test_score_items_tool_calling_needs_no_embedder():
    scores = score_items("tool_calling", [(tool_msg(WEATHER), tool_msg(WEATHER))], None)
    assert [s.score for s in scores] == [1.0]
    with pytest.raises(ValueError, match="unknown workload kind"):
        score_items("summarisation", [], None)


# --- aggregation --------------------------------------------------------------------------------


def test_aggregate_mean_and_deterministic_ci():
    scores = [ItemScore(v, TOOL_CALL_EXACT, {}) for v in [1.0, 0.75, 0.5, 1.0, 0.0, 1.0, 0.25, 1.0]]
    result = aggregate(scores, seed=0)
    assert result.mean == pytest.approx(0.6875)
    assert result.n == 8
    assert result.method == TOOL_CALL_EXACT
    assert 0.0 <= result.ci_low < result.mean < result.ci_high <= 1.0
    assert aggregate(scores, seed=0) == result
    assert aggregate(scores, seed=1) != result


def test_aggregate_edge_cases():
    empty = aggregate([])
    assert (empty.mean, empty.n, empty.ci_low, empty.ci_high) == (None, 0, None, None)
    single = aggregate([ItemScore(0.4, EMBEDDING_COSINE, {})])
    assert (single.mean, single.ci_low, single.ci_high) == (0.4, 0.4, 0.4)
    mixed = aggregate([ItemScore(1.0, JSON_FIELD_EXACT, {}), ItemScore(0.5, EMBEDDING_COSINE, {})])
    assert mixed.method == "embedding_cosine+json_field_exact"
    assert "no judge" in describe(mixed.method) and "MiniLM" in describe(mixed.method)


def test_every_method_is_described():
    assert set(SCORER_DESCRIPTIONS) == {TOOL_CALL_EXACT, JSON_FIELD_EXACT, EMBEDDING_COSINE}
    for method, text in SCORER_DESCRIPTIONS.items():
        assert text.startswith(method + ":") and "\n" not in text
