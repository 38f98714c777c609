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
    LLM_JUDGE,
    TOOL_CALL_JUDGED,
    FreeText,
    canonical,
    describe,
    method_for,
    plan_scores,
    tool_metrics,
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
    assert result.detail["name_match"] is True and result.detail["exact_match"] is True
    assert result.detail["args_matched"] == result.detail["args_total"] == 2


def test_half_the_arguments_right_scores_three_quarters():
    candidate = tool_msg(call("get_weather", {"city": "Paris", "unit": "fahrenheit"}))
    result = score_tool_calls(tool_msg(WEATHER), candidate)
    assert result.score == 0.75
    assert (result.detail["args_matched"], result.detail["args_total"]) == (1, 2)


def test_wrong_tool_scores_zero_even_with_the_same_arguments():
    candidate = tool_msg(call("get_forecast", {"city": "Paris", "unit": "celsius"}))
    result = score_tool_calls(tool_msg(WEATHER), candidate)
    assert result.score == 0.0
    assert result.detail["name_match"] is False


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
    assert result.detail["malformed_arguments"] == 1


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


def test_unparsable_reference_is_compared_as_whole_text_by_the_same_scorer():
    same = score_json_fields(text_msg("ACME Corp, 12.50 EUR"), text_msg(" acme corp,  12.50 eur"))
    assert (same.method, same.score) == (JSON_FIELD_EXACT, 1.0)
    assert "not a JSON object" in same.detail["reason"]
    assert score_json_fields(text_msg("not json"), text_msg("x")).score == 0.0


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


def test_score_items_json_never_mixes_scorers(minilm):
    counting = CountingEmbedder(minilm)
    pairs = [
        (INVOICE, INVOICE),
        (text_msg("no json here"), text_msg("no json here either")),
        (INVOICE, text_msg("{")),
    ]
    exact, whole_text, broken = score_items("json_extraction", pairs, counting)
    assert (exact.score, exact.method) == (1.0, JSON_FIELD_EXACT)
    assert (whole_text.score, whole_text.method) == (0.0, JSON_FIELD_EXACT)
    assert (broken.score, broken.method) == (0.0, JSON_FIELD_EXACT)
    assert counting.calls == []  # no embedding stand-in inside a JSON experiment


def test_score_items_tool_calling_needs_no_embedder():
    scores = score_items("tool_calling", [(tool_msg(WEATHER), tool_msg(WEATHER))], None)
    assert [s.score for s in scores] == [1.0]
    with pytest.raises(ValueError, match="unknown workload kind"):
        score_items("summarisation", [], None)


# --- one scorer per experiment --------------------------------------------------------------------


def test_every_method_is_described():
    assert set(SCORER_DESCRIPTIONS) == {TOOL_CALL_EXACT, JSON_FIELD_EXACT, EMBEDDING_COSINE, TOOL_CALL_JUDGED,
                                        "json_field_judged", LLM_JUDGE}
    for method, text in SCORER_DESCRIPTIONS.items():
        assert text.startswith(method + ":") and "\n" not in text
        assert describe(method) == text


def test_method_is_chosen_per_experiment():
    assert method_for("chat", judge=False) == EMBEDDING_COSINE
    assert method_for("chat", judge=True) == LLM_JUDGE
    assert method_for("tool_calling", judge=True) == TOOL_CALL_JUDGED
    with pytest.raises(ValueError, match="unknown workload kind"):
        method_for("summarisation", judge=True)


# --- exact tool-calling metrics ---------------------------------------------------------------------


def test_type_normalisation_of_argument_values():
    assert canonical(7) == canonical(7.0) == canonical("7") == canonical(" 7.0 ")
    assert canonical(True) == canonical("true") == canonical("True")
    assert canonical(True) != canonical(1) and canonical(False) != canonical(0)
    assert canonical({"a": 1, "b": [1, "x"]}) == canonical({"b": [1.0, "x"], "a": "1"})
    assert canonical("A-100") != canonical("a-100")  # ids keep their case
    assert canonical(None) != canonical("null") and canonical("nan") == ("str", "nan")


@pytest.mark.parametrize("candidate, name, exact, matched", [
    (tool_msg(call("refund", {"order_id": "A-1", "amount": 12.5, "notify": True})), True, True, 3),
    # numbers as strings, booleans as strings, keys reordered: still exact
    (tool_msg(call("refund", '{"notify": "true", "amount": "12.50", "order_id": "A-1"}')), True, True, 3),
    (tool_msg(call("refund", {"order_id": "A-2", "amount": 12.5, "notify": True})), True, False, 2),
    (tool_msg(call("refund", {"order_id": "A-1", "amount": 12.5, "notify": True, "extra": 1})), True, False, 3),
    (tool_msg(call("cancel", {"order_id": "A-1", "amount": 12.5, "notify": True})), False, False, 0),
    (tool_msg(call("refund", '{"order_id": "A-1", ')), True, False, 0),
    (text_msg("I will refund you."), False, False, 0),
    (None, False, False, 0),
])
def test_tool_metrics_on_hand_made_cases(candidate, name, exact, matched):
    reference = tool_msg(call("refund", {"order_id": "A-1", "amount": 12.5, "notify": True}))
    m = tool_metrics(reference, candidate)
    assert (m.name_match, m.exact_match, m.args_matched, m.args_total) == (name, exact, matched, 3)


def test_tool_metrics_sequences_and_no_calls():
    a, b = call("a", {"x": 1}), call("b", {})
    assert tool_metrics(tool_msg(a, b), tool_msg(a, b)).exact_match
    swapped = tool_metrics(tool_msg(a, b), tool_msg(b, a))
    assert not swapped.name_match and swapped.args_matched == 0
    missing = tool_metrics(tool_msg(a, b), tool_msg(a))
    assert not missing.name_match and missing.args_matched == 1
    none = tool_metrics(text_msg("hi"), text_msg("hello"))
    assert none.name_match and none.exact_match and none.args_total == 0


def test_judge_plans_grade_only_free_text_arguments():
    reference = tool_msg(call("reply", {"ticket": 42, "message": "Your refund was sent to your card today."}))
    candidate = tool_msg(call("reply", {"ticket": "42", "message": "We refunded your card today."}))
    (plan,) = plan_scores("tool_calling", [(reference, candidate)], judge=True)
    assert plan.method == TOOL_CALL_JUDGED
    (free,) = plan.free_text
    assert free == FreeText("Your refund was sent to your card today.", "We refunded your card today.",
                            "argument message of reply")
    assert plan.resolve({id(free): 0.8}).score == pytest.approx(0.5 + 0.25 * 1 + 0.25 * 0.8)
    unscored = plan.resolve({}, {id(free): "judge: refusal"})
    assert unscored.score is None and unscored.failure == "judge: refusal"
    # Without a judge the same item is exact throughout: the message differs, so it gets no credit.
    (exact,) = plan_scores("tool_calling", [(reference, candidate)], judge=False)
    assert exact.free_text == [] and exact.resolve({}).score == pytest.approx(0.75)


def test_judge_plans_for_chat_and_json():
    (chat,) = plan_scores("chat", [(text_msg("Paris is the capital."), text_msg("It is Paris."))], judge=True)
    assert chat.method == LLM_JUDGE and [f.what for f in chat.free_text] == ["answer"]
    (empty,) = plan_scores("chat", [(text_msg("Paris."), text_msg("  "))], judge=True)
    assert empty.free_text == [] and empty.resolve({}).score == 0.0
    ref = text_msg('{"vendor": "ACME", "note": "pay within thirty days please", "total": 3}')
    cand = text_msg('{"vendor": "acme", "note": "payment due in 30 days", "total": "3.0"}')
    (js,) = plan_scores("json_extraction", [(ref, cand)], judge=True)
    assert [f.what for f in js.free_text] == ["field note"]
    assert js.resolve({id(js.free_text[0]): 1.0}).score == pytest.approx(1.0)
