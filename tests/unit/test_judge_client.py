"""The judge client against a real local HTTP server speaking the OpenAI chat-completions protocol
(flywheel_local.rule_judge): retries, timeouts, the PostgreSQL cache, parse failures, order
swapping, structured-output fallback and hostile replies."""

from __future__ import annotations

import pytest

from flywheel.adapters.judge_client import JudgeClient, MemoryJudgeCache, endpoint_from_connection
from flywheel.adapters.postgres_eval import PostgresJudgeCache
from flywheel.config import JudgeSettings
from flywheel.judge import JudgeItem
from flywheel_local.rule_judge import MODEL_ID, RuleJudgeServer


@pytest.fixture
def server():
    with RuleJudgeServer() as srv:
        yield srv


def _client(srv, cache=None, **settings):
    endpoint = endpoint_from_connection(host=srv.base_url, password="test-key", extra={"model": MODEL_ID})
    opts = {"max_retries": 2, "timeout_s": 5.0, **settings}
    return JudgeClient(endpoint, JudgeSettings(**opts), cache)


def _item(candidate, reference="the parcel ships on friday"):
    return JudgeItem(request="user: when does my parcel ship?", reference=reference, candidate=candidate)


def test_scores_both_orders_and_records_tokens(server):
    items = [_item("the parcel ships on friday"), _item("the parcel ships monday"), _item("bananas")]
    verdicts, stats = _client(server).run(items)
    assert [v.score for v in verdicts] == [1.0, pytest.approx(0.5), 0.0]
    assert stats.calls == 6 and len(server.completion_requests()) == 6 and stats.cached == 0
    assert stats.order_agreement == 1.0 and stats.prompt_tokens > 0 and stats.completion_tokens > 0
    sent = server.completion_requests()[0]
    assert sent["model"] == MODEL_ID and sent["temperature"] == 0.0
    assert sent["response_format"]["type"] == "json_schema"


def test_position_bias_is_measured(server):
    server.position_bias = 4  # the server likes whatever it reads first
    verdicts, stats = _client(server).run([_item("the parcel ships monday")])
    assert verdicts[0].by_position == {"reference_first": 5.0, "candidate_first": 9.0}
    assert verdicts[0].agree is False and stats.order_agreement == 0.0 and stats.order_mean_abs_diff == 4.0
    _, one = _client(server, position="random").run([_item("the parcel ships monday")])
    assert one.calls == 1 and one.order_agreement is None


def test_retries_on_429_and_5xx_then_succeeds(server):
    server.script.extend([429, 500, 503])
    client = _client(server, max_retries=3, position="random")
    verdicts, stats = client.run([_item("the parcel ships on friday")])
    assert verdicts[0].score == 1.0 and stats.failed_calls == {}
    assert len(server.completion_requests()) == 4  # three refusals, then the answer


def test_gives_up_after_the_retries_and_counts_the_failure(server):
    server.script.extend([500] * 10)
    verdicts, stats = _client(server, max_retries=1, position="random").run([_item("x")])
    assert verdicts[0].score is None and verdicts[0].failure == "request_failed"
    assert "HTTP 500" in verdicts[0].reason and stats.unscored == {"request_failed": 1}
    assert len(server.completion_requests()) == 2


def test_per_call_timeout(server):
    server.slow_s = 3.0
    verdicts, stats = _client(server, timeout_s=0.5, max_retries=0, position="random").run(
        [_item("@@slow@@"), _item("the parcel ships on friday")])
    assert verdicts[0].score is None and "timed out" in verdicts[0].reason
    assert verdicts[1].score == 1.0  # one slow call does not hold up or fail the others


def test_hostile_and_broken_replies_are_counted_not_crashing(server):
    items = [_item(c) for c in ("@@html@@", "@@empty@@", "@@refuse@@", "@@inject@@", "@@range@@",
                                "x" * 100_000, "the parcel ships on friday")]
    verdicts, stats = _client(server, position="random").run(items)
    assert [v.failure for v in verdicts] == ["html_error_page", "empty", "refusal", "ambiguous", "out_of_range",
                                            None, None]
    assert verdicts[5].score == 0.0 and stats.truncated == 1  # a 100 KB answer is cut, then graded
    assert stats.unscored == {"html_error_page": 1, "empty": 1, "refusal": 1, "ambiguous": 1, "out_of_range": 1}
    assert stats.scored == 2


def test_falls_back_when_the_server_has_no_structured_output(server):
    server.structured = False
    client = _client(server, position="random")
    verdicts, _ = client.run([_item("the parcel ships on friday"), _item("bananas")])
    assert [v.score for v in verdicts] == [1.0, 0.0] and client.structured is False
    assert not server.completion_requests()[-1].get("response_format")


def test_connection_refused_is_a_counted_failure():
    with RuleJudgeServer() as srv:
        url = srv.base_url
    endpoint = endpoint_from_connection(host=url, extra={"model": "m"})
    verdicts, stats = JudgeClient(endpoint, JudgeSettings(max_retries=0, timeout_s=2, position="random")).run(
        [_item("x")])
    assert verdicts[0].failure == "request_failed" and "connection" in verdicts[0].reason.lower()


def test_postgres_cache_makes_reruns_free(server, flywheel_db):
    items = [_item("the parcel ships on friday"), _item("the parcel ships monday"), _item("@@refuse@@")]
    first, stats1 = _client(server, PostgresJudgeCache(flywheel_db)).run(items)
    calls_made = len(server.completion_requests())
    assert calls_made == 6 and stats1.cached == 0
    again, stats2 = _client(server, PostgresJudgeCache(flywheel_db)).run(items)
    assert len(server.completion_requests()) == calls_made  # nothing sent again
    assert [v.score for v in again] == [v.score for v in first] and again[2].failure == "refusal"
    assert stats2.cached == 6 and stats2.prompt_tokens == 0 and stats2.completion_tokens == 0
    # Another judge model or prompt version is another cache entry.
    other = JudgeClient(endpoint_from_connection(host=server.base_url, extra={"model": "other"}),
                        JudgeSettings(max_retries=0), PostgresJudgeCache(flywheel_db))
    other.run(items[:1])
    assert len(server.completion_requests()) == calls_made + 2


def test_failed_calls_are_not_cached(server):
    cache = MemoryJudgeCache()
    server.script.extend([500, 500])
    _client(server, cache, max_retries=0).run([_item("the parcel ships on friday")])
    assert len(cache.data) == 0
    verdicts, stats = _client(server, cache, max_retries=0).run([_item("the parcel ships on friday")])
    assert verdicts[0].score == 1.0 and len(cache.data) == 2 and stats.cached == 0


def test_duplicate_comparisons_in_a_batch_are_asked_once(server):
    verdicts, stats = _client(server, position="random").run([_item("same"), _item("same")])
    assert len(server.completion_requests()) == 1 and stats.cached == 1
    assert verdicts[0].score == verdicts[1].score


@pytest.mark.parametrize("kwargs, url", [
    ({"host": "https://api.example.com/v1/"}, "https://api.example.com/v1"),
    ({"host": "vllm", "port": 8000}, "http://vllm:8000/v1"),
    ({"host": "nim.internal", "port": 9000, "schema": "/openai/v1"}, "http://nim.internal:9000/openai/v1"),
])
def test_endpoint_from_connection(kwargs, url):
    endpoint = endpoint_from_connection(**kwargs, password="sk-secret-123", extra={"model": " judge-70b "})
    assert (endpoint.base_url, endpoint.model) == (url, "judge-70b")
    assert "sk-secret-123" not in repr(endpoint) and "sk-secret-123" not in str(endpoint)  # secret in logs


def test_connection_errors_name_the_fix():
    with pytest.raises(ValueError, match="extra must name the judge model"):
        endpoint_from_connection(host="h", extra={})
    with pytest.raises(ValueError, match="host"):
        endpoint_from_connection(host="", extra={"model": "m"})
