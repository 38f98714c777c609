"""The LLM judge's HTTP side: any OpenAI-compatible chat-completions endpoint (vLLM, NIM, OpenAI,
``transformers serve``, ...), configured by the Airflow connection ``flywheel_judge``.

The official ``openai`` SDK's ``AsyncOpenAI`` does the protocol, the per-call timeout and the
retries with exponential backoff and jitter on 408/409/429/5xx, timeouts and dropped connections
(honouring Retry-After); an ``asyncio.Semaphore`` bounds the calls in flight. Replies are cached
(:class:`JudgeCache`, PostgreSQL in production) by judge model, prompt version, comparison hash
and answer order, so a rerun of the same comparisons makes no call and costs nothing. Whatever the
endpoint sends back (an HTML error page with status 200, an empty body, a refusal) is handed to
``flywheel.judge`` as text to be counted with its reason; only a call that failed after every
retry is an error, and neither ever raises out of :meth:`JudgeClient.run`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, SecretStr

from flywheel.config import JudgeSettings
from flywheel.judge import RESPONSE_FORMAT, CallResult, JudgeCall, JudgeItem, JudgeStats, Verdict, combine, plan_calls

log = logging.getLogger(__name__)

MAX_REPLY_TOKENS = 300


class JudgeEndpoint(BaseModel):
    base_url: str
    api_key: SecretStr
    model: str


def endpoint_from_connection(*, host: str | None, port: int | None = None, schema: str | None = None,
                             password: str | None = None, extra: Mapping[str, Any] | None = None,
                             conn_id: str = "flywheel_judge", role: str = "judge") -> JudgeEndpoint:
    """The endpoint of an Airflow connection: host = base URL (``https://api.example.com/v1``) or
    a bare host with port and schema (``vllm``, 8000, ``v1`` -> ``http://vllm:8000/v1``); password =
    API key (servers that need none accept any); extra ``{"model": "..."}``."""
    extra = dict(extra or {})
    model = extra.get("model")
    if not host:
        raise ValueError(f"connection {conn_id}: host (the endpoint's base URL) is empty")
    if not isinstance(model, str) or not model.strip():
        example = "gpt-4o-mini" if role == "judge" else "all-MiniLM-L6-v2"
        raise ValueError(f'connection {conn_id}: extra must name the {role} model, e.g. {{"model": "{example}"}}')
    if "://" in host:
        base = host.rstrip("/")
    else:
        base = f"http://{host}{f':{port}' if port else ''}"
        base += f"/{(schema or 'v1').strip('/')}"
    return JudgeEndpoint(base_url=base, api_key=SecretStr(password or "none"), model=model.strip())


class JudgeCache(Protocol):
    def get(self, model: str, prompt_version: str, item_hashes: Sequence[str]) -> dict[tuple[str, str], CallResult]: ...

    def put(self, model: str, prompt_version: str, entries: Sequence[tuple[str, str, CallResult]]) -> None: ...


class MemoryJudgeCache:
    """A cache that lives as long as the object (benchmarks, tests, one-off calibration)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str, str, str], CallResult] = {}

    def get(self, model, prompt_version, item_hashes):
        wanted = set(item_hashes)
        return {(h, p): r for (m, v, h, p), r in self.data.items() if m == model and v == prompt_version and h in wanted}

    def put(self, model, prompt_version, entries):
        for h, p, r in entries:
            self.data.setdefault((model, prompt_version, h, p), r)


class JudgeClient:
    """Runs judge calls against one endpoint with bounded concurrency, retries and a cache."""

    def __init__(self, endpoint: JudgeEndpoint, settings: JudgeSettings | None = None,
                 cache: JudgeCache | None = None) -> None:
        self.endpoint = endpoint
        self.settings = settings or JudgeSettings()
        self.cache = cache
        self.structured = True  # ask for JSON-schema output until the server refuses it

    # -- the domain's view: items in, verdicts and statistics out
    def run(self, items: list[JudgeItem]) -> tuple[list[Verdict], JudgeStats]:
        s = self.settings
        calls = plan_calls(items, policy=s.position, seed=s.seed, prompt_version=s.prompt_version,
                           max_chars=s.max_answer_chars)
        return combine(items, calls, self.complete(calls))

    def complete(self, calls: Sequence[JudgeCall]) -> list[CallResult]:
        """One result per call, in order: from the cache, else from the endpoint (then cached)."""
        model, version = self.endpoint.model, self.settings.prompt_version
        found: dict[tuple[str, str], CallResult] = {}
        if self.cache is not None and calls:
            found = self.cache.get(model, version, sorted({c.item_hash for c in calls}))
        todo: dict[tuple[str, str], JudgeCall] = {}
        for c in calls:
            key = (c.item_hash, c.position)
            if key not in found:
                todo.setdefault(key, c)  # the same comparison twice in a batch is asked once
        fresh: dict[tuple[str, str], CallResult] = {}
        if todo:
            results = asyncio.run(self._complete_all(list(todo.values())))
            fresh = dict(zip(todo, results))
            if self.cache is not None:
                replies = [(h, p, r) for (h, p), r in fresh.items() if r.error is None and r.text is not None]
                if replies:
                    self.cache.put(model, version, replies)
        out = []
        seen: set[tuple[str, str]] = set()
        for c in calls:
            key = (c.item_hash, c.position)
            if key in fresh and key not in seen:
                out.append(fresh[key])
            else:
                # From the cache, or a repeat within the batch: no call made, no tokens spent.
                r = found[key] if key in found else fresh[key]
                out.append(r.model_copy(update={"cached": r.error is None, "prompt_tokens": 0, "completion_tokens": 0}))
            seen.add(key)
        return out

    async def _complete_all(self, calls: list[JudgeCall]) -> list[CallResult]:
        from openai import AsyncOpenAI

        s = self.settings
        semaphore = asyncio.Semaphore(max(1, s.max_concurrency))
        client = AsyncOpenAI(base_url=self.endpoint.base_url, api_key=self.endpoint.api_key.get_secret_value(),
                             timeout=s.timeout_s, max_retries=s.max_retries)
        async with client:
            async def bounded(call: JudgeCall) -> CallResult:
                async with semaphore:
                    return await self._complete_one(client, call)

            return list(await asyncio.gather(*(bounded(c) for c in calls)))

    async def _complete_one(self, client, call: JudgeCall) -> CallResult:
        import openai

        kwargs: dict[str, Any] = {"model": self.endpoint.model, "messages": call.messages, "temperature": 0.0,
                                  "max_tokens": MAX_REPLY_TOKENS}
        structured = self.structured
        try:
            try:
                response = await _post(client, {**kwargs, "response_format": RESPONSE_FORMAT} if structured else kwargs)
            except openai.BadRequestError as exc:
                if not structured:
                    raise
                # The server does not do JSON-schema output: ask the same without it, from now on.
                log.info("judge endpoint refused response_format (%s); asking for JSON in the prompt only",
                         str(exc)[:200])
                self.structured = False
                response = await _post(client, kwargs)
        except openai.APIStatusError as exc:
            return CallResult(error=f"HTTP {exc.status_code}: {str(exc)[:300]}")
        except openai.APITimeoutError:
            return CallResult(error=f"timed out after {self.settings.timeout_s:g}s and {self.settings.max_retries} retries")
        except openai.APIConnectionError as exc:
            return CallResult(error=f"connection failed: {str(exc)[:300]}")
        except Exception as exc:  # anything else the endpoint can provoke must not end the evaluation
            return CallResult(error=f"{exc.__class__.__name__}: {str(exc)[:300]}")
        return _result(response)


async def _post(client, body: dict[str, Any]):
    """POST /chat/completions through the SDK's own request path (its timeout, retries with backoff,
    status errors), the body sent as built and the reply handed back as the raw HTTP response:
    the SDK's recursive transform of the parameters and its typed parsing of the reply cost more
    CPU per call than the call's own work at high concurrency (docs/benchmarks.md, judge)."""
    import httpx

    return await client.post("/chat/completions", body=body, cast_to=httpx.Response)


def _result(response: Any) -> CallResult:
    """The reply text and token usage of a chat completion; a body that is not one (an HTML error
    page sent with status 200, an empty or truncated body) is returned as the text, for the judge's
    parser to count with its reason."""
    try:
        data = json.loads(response.content)
    except ValueError:  # not JSON (or not UTF-8): the text is the reply
        return CallResult(text=response.text)
    if not isinstance(data, dict):
        return CallResult(text=response.text)
    choices = data.get("choices") or []
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return CallResult(text="")
    text = message.get("content")
    if not isinstance(text, str):
        text = f"I cannot grade this: {message['refusal']}" if message.get("refusal") else ""
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return CallResult(text=text, prompt_tokens=_int(usage.get("prompt_tokens")),
                      completion_tokens=_int(usage.get("completion_tokens")))


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
