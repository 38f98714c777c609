"""The embedded default's serving endpoint: an OpenAI-compatible server with vLLM's runtime LoRA API.

    python -m flywheel_local.serving_server --port 8000 [--model NAME=PATH ...]

Why our own and not ``transformers serve``: that server (transformers 5.24) loads whole models by
id or path and has no way to add or remove a LoRA adapter at run time, which is what a deployment
and a rollback do. vLLM does (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter`` with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), so this server implements the same endpoints on
transformers + peft and one client (flywheel.adapters.serving) drives both:

    GET  /health, /v1/models
    POST /v1/chat/completions      greedy decoding; "model" is a base model or a loaded adapter
    POST /v1/load_lora_adapter     {"lora_name", "lora_path", "base_model"?}
    POST /v1/unload_lora_adapter   {"lora_name"}
    POST /v1/embeddings            {"model", "input": str | [str], "encoding_format": "float" | "base64"}

The embeddings route serves sentence-embedding models (all-MiniLM-L6-v2 from its PyPI package by
default) for in-context example selection and the similarity scorer: the embedded stack points
the ``flywheel_embeddings`` connection here, so the model loads once in this long-lived process
instead of once in every Airflow task that needs it (about 12 CPU-seconds of imports and loading
each time on the demo machine). Production points that connection at any OpenAI-compatible
embeddings endpoint instead (vLLM, TEI, NIM, OpenAI).

Several base models (the configured candidates) are served from one process, each loaded on first
use; adapters on one base share its weights (peft, one named adapter per deployed version).
Requests are rendered exactly as the experiments rendered them (the model's own chat template, the
same code: flywheel_trainer.chat) and the output is parsed back into an assistant message with the
candidate's tool-call parser (flywheel.toolcalls), as vLLM's --tool-call-parser does. A prompt
longer than the context is refused (HTTP 400), as vLLM does. Work is serialised by one lock: this
is a CPU server for a laptop-sized model, not a production server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flywheel.toolcalls import DEFAULT_PARSER, parse_output

log = logging.getLogger("flywheel.serving")


class ServingRefused(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = None  # accepted; decoding is greedy (documented)
    stream: bool = False


MAX_EMBEDDING_INPUTS = 2048  # per request, as OpenAI's API


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str] = Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class LoadAdapter(BaseModel):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1)
    base_model: str | None = None


class UnloadAdapter(BaseModel):
    lora_name: str = Field(min_length=1, max_length=200)


@dataclass
class _Base:
    name: str
    path: str
    tokenizer: Any = None
    model: Any = None  # the base model, or the PeftModel wrapping it once an adapter is loaded
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> path
    parser: str = DEFAULT_PARSER  # the model family's tool-call format
    chat: Any = None  # flywheel_trainer.chat.ChatFormat of the tokenizer

    @property
    def loaded(self) -> bool:
        return self.model is not None


def _local_path(path: str) -> Path:
    return Path(path[len("file://"):] if path.startswith("file://") else path)


def check_adapter_fits(adapter_dir: Path, model) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the base model, before touching the model.

    peft would otherwise inject the adapter's layers and only then fail on the weights, leaving the
    served model half-changed."""
    from safetensors import safe_open

    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ServingRefused(400, f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ServingRefused(400, f"{config_file} is not valid JSON: {exc}") from None
    if config.get("peft_type") not in (None, "LORA"):
        raise ServingRefused(400, f"{adapter_dir} is a {config.get('peft_type')} adapter; only LoRA is served")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ServingRefused(400, f"{adapter_dir} has no adapter_model.safetensors")
    modules = dict(model.named_modules())
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():
                if ".lora_A." not in key and ".lora_B." not in key:
                    continue
                shape = fh.get_slice(key).get_shape()
                target = key.split(".lora_")[0].removeprefix("base_model.model.")
                module = modules.get(target)
                if module is None or not hasattr(module, "in_features"):
                    raise ServingRefused(400, f"adapter {adapter_dir} targets {target}, which the base model does not have")
                if ".lora_A." in key and shape[1] != module.in_features:
                    raise ServingRefused(400, f"adapter {adapter_dir} does not fit the base model: {target} takes "
                                              f"{module.in_features} inputs, the adapter expects {shape[1]}")
                if ".lora_B." in key and shape[0] != module.out_features:
                    raise ServingRefused(400, f"adapter {adapter_dir} does not fit the base model: {target} gives "
                                              f"{module.out_features} outputs, the adapter expects {shape[0]}")
    except ServingRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file: say so, keep serving
        raise ServingRefused(400, f"cannot read the adapter weights {weights}: {exc}") from None


class ModelRegistry:
    """The served base models and the adapters loaded on them; every change under one lock."""

    def __init__(self, bases: dict[str, str], *, max_new_tokens: int = 64, max_seq_len: int = 512,
                 parsers: dict[str, str] | None = None) -> None:
        self.bases = {name: _Base(name, path, parser=(parsers or {}).get(name, DEFAULT_PARSER))
                      for name, path in bases.items()}
        self.max_new_tokens = max_new_tokens
        self.max_seq_len = max_seq_len
        self.lock = threading.Lock()

    # --- loading --------------------------------------------------------------------------------
    def _ensure_loaded(self, base: _Base) -> _Base:
        if base.loaded:
            return base
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _local_path(base.path)
        if not (path / "config.json").is_file():
            raise ServingRefused(404, f"base model {base.name} has no weights at {path}", "NotFoundError")
        from flywheel_trainer.chat import ChatFormat
        from flywheel_trainer.spec import SpecError

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.model_max_length = 1 << 30  # the context is checked here, per request
        try:
            base.chat = ChatFormat(tokenizer, candidate=base.name, model_uri=str(path))
        except SpecError as exc:
            raise ServingRefused(400, str(exc)) from None
        base.tokenizer = tokenizer
        base.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        log.info("loaded base model %s from %s", base.name, path)
        return base

    def _owner(self, adapter: str) -> _Base | None:
        return next((b for b in self.bases.values() if adapter in b.adapters), None)

    def list_models(self) -> list[dict[str, Any]]:
        created = int(time.time())
        with self.lock:
            out = [{"id": b.name, "object": "model", "created": created, "owned_by": "flywheel-local",
                    "root": b.path, "parent": None} for b in self.bases.values()]
            for b in self.bases.values():
                out += [{"id": a, "object": "model", "created": created, "owned_by": "flywheel-local",
                         "root": p, "parent": b.name} for a, p in b.adapters.items()]
        return out

    def load_adapter(self, req: LoadAdapter) -> str:
        from peft import PeftModel

        with self.lock:
            if req.lora_name in self.bases or self._owner(req.lora_name):
                raise ServingRefused(400, f"The lora adapter '{req.lora_name}' has already been loaded.")
            if req.base_model is None and len(self.bases) != 1:
                raise ServingRefused(400, f"this server serves several base models ({', '.join(self.bases)}); "
                                          "say which one the adapter belongs to in base_model")
            name = req.base_model or next(iter(self.bases))
            if name not in self.bases:
                raise ServingRefused(404, f"base model {name!r} is not served here (served: {', '.join(self.bases)})",
                                     "NotFoundError")
            path = _local_path(req.lora_path)
            if not path.is_dir():
                raise ServingRefused(404, f"no adapter directory at {path}", "NotFoundError")
            base = self._ensure_loaded(self.bases[name])
            check_adapter_fits(path, base.model.get_base_model() if base.adapters else base.model)
            try:
                if base.adapters:
                    base.model.load_adapter(str(path), adapter_name=req.lora_name)
                else:
                    base.model = PeftModel.from_pretrained(base.model, str(path), adapter_name=req.lora_name)
            except Exception as exc:  # noqa: BLE001 - refuse it and keep serving what was served
                self._drop(base, req.lora_name)
                raise ServingRefused(400, f"loading adapter {req.lora_name!r} from {path} failed: {exc}") from None
            base.model.eval()
            base.adapters[req.lora_name] = str(path)
            log.info("loaded adapter %s on %s from %s", req.lora_name, name, path)
            return f"Success: LoRA adapter '{req.lora_name}' added successfully."

    @staticmethod
    def _drop(base: _Base, adapter: str) -> None:
        from peft import PeftModel

        if not isinstance(base.model, PeftModel):
            return
        if adapter in getattr(base.model, "peft_config", {}):
            if len(base.model.peft_config) == 1:
                base.model = base.model.unload()  # the last adapter: back to the plain base model
            else:
                base.model.delete_adapter(adapter)
        base.adapters.pop(adapter, None)

    def unload_adapter(self, req: UnloadAdapter) -> str:
        with self.lock:
            base = self._owner(req.lora_name)
            if base is None:
                raise ServingRefused(404, f"The lora adapter '{req.lora_name}' cannot be found.", "NotFoundError")
            self._drop(base, req.lora_name)
            log.info("unloaded adapter %s from %s", req.lora_name, base.name)
            return f"Success: LoRA adapter '{req.lora_name}' removed successfully."

    # --- generation -----------------------------------------------------------------------------
    def render(self, base: _Base, req: ChatRequest, max_new: int) -> list[int]:
        """The prompt's token ids exactly as the experiments built them: the model's chat template,
        the request's messages and tools, control tokens in the text encoded as text."""
        from flywheel_trainer.chat import ChatItemError

        try:
            ids = base.chat.prompt(req.messages, req.tools)
        except ChatItemError as exc:
            raise ServingRefused(400, str(exc)) from None
        room = self._context(base) - max_new
        if len(ids) > room:
            raise ServingRefused(400, f"This model's maximum context length is {self._context(base)} tokens; the "
                                      f"prompt has {len(ids)} and {max_new} are asked for the answer")
        return ids

    def _context(self, base: _Base) -> int:
        positions = getattr(base.model.config, "max_position_embeddings", None)
        return min(self.max_seq_len, positions) if positions else self.max_seq_len

    def chat(self, req: ChatRequest) -> dict[str, Any]:
        import torch
        from peft import PeftModel

        from flywheel_trainer.generate import decode, stop_ids

        if req.stream:
            raise ServingRefused(400, "streaming is not supported by the local serving endpoint; send stream=false")
        with self.lock:
            if req.model in self.bases:
                base, adapter = self._ensure_loaded(self.bases[req.model]), None
            else:
                base, adapter = self._owner(req.model), req.model
                if base is None:
                    raise ServingRefused(404, f"The model `{req.model}` does not exist.", "NotFoundError")
            max_new = min(req.max_completion_tokens or req.max_tokens or self.max_new_tokens, self._context(base) - 1)
            ids = self.render(base, req, max_new)
            stops = stop_ids(base.model, base.tokenizer)
            model = base.model
            input_ids = torch.tensor([ids])
            kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
                          do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=base.tokenizer.pad_token_id)
            with torch.no_grad():
                if adapter is not None:
                    model.set_adapter(adapter)
                    out = model.generate(**kwargs)
                elif isinstance(model, PeftModel):
                    with model.disable_adapter():  # the base model's own answer, adapters loaded or not
                        out = model.generate(**kwargs)
                else:
                    out = model.generate(**kwargs)
        tokens = out[0, len(ids):].tolist()
        text, completion_tokens = decode(base.tokenizer, tokens, stops)  # as the eval jobs decode
        message = parse_output(text, base.parser)
        stopped = any(t in stops for t in tokens)
        finish = "tool_calls" if message.get("tool_calls") else ("stop" if stopped else "length")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(ids) + completion_tokens},
        }


class EmbeddingModels:
    """Sentence-embedding models by name, each loaded on first use (or by :meth:`preload`)."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = dict(paths)
        self._models: dict[str, Any] = {}
        self.lock = threading.Lock()

    def _model(self, name: str):
        from flywheel.adapters.embeddings import LocalMiniLM

        if name not in self.paths:
            raise ServingRefused(404, f"the embedding model '{name}' is not served here; served: "
                                      f"{sorted(self.paths) or 'none'}", "NotFoundError")
        with self.lock:
            if name not in self._models:
                self._models[name] = LocalMiniLM(self.paths[name])
                self._models[name].embed(["warm up"])  # loads the weights now, under the lock
                log.info("loaded embedding model %s from %s", name, self.paths[name])
            return self._models[name]

    def preload(self) -> None:
        """Load every model in a background thread, so the first request does not wait for it."""
        def load() -> None:
            for name in self.paths:
                try:
                    self._model(name)
                except Exception:  # noqa: BLE001 - the request that needs it reports the error
                    log.exception("could not load embedding model %s", name)

        threading.Thread(target=load, name="embedding-preload", daemon=True).start()

    def list_models(self, created: int) -> list[dict[str, Any]]:
        return [{"id": name, "object": "model", "created": created, "owned_by": "flywheel-local", "root": path,
                 "parent": None} for name, path in self.paths.items()]

    def embed(self, req: EmbeddingRequest) -> dict[str, Any]:
        import base64

        import numpy as np

        model = self._model(req.model)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        with self.lock:
            vectors = model.embed(texts)
            tokens = model.count_tokens(texts)
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise ServingRefused(400, f"the embedding model '{req.model}' gives {vectors.shape[1]} dimensions; "
                                      f"it cannot give {req.dimensions}")
        if req.encoding_format == "base64":
            rows = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            rows = [[float(x) for x in v] for v in vectors]
        return {"object": "list", "model": req.model,
                "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def create_app(registry: ModelRegistry, embeddings: EmbeddingModels | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(title="flywheel local serving endpoint", version="1")
    embeddings = embeddings or EmbeddingModels({})

    def error(status: int, message: str, kind: str) -> JSONResponse:
        # The shape vLLM and OpenAI use, so a client handles both the same way.
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.exception_handler(ServingRefused)
    async def refused(_request: Request, exc: ServingRefused):
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(400, f"invalid request: {details}", "BadRequestError")

    @app.get("/health")
    def health():
        return PlainTextResponse("ok")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": registry.list_models() + embeddings.list_models(int(time.time()))}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        return registry.chat(req)

    @app.post("/v1/embeddings")
    def embed(req: EmbeddingRequest):
        return embeddings.embed(req)

    @app.post("/v1/load_lora_adapter")
    def load(req: LoadAdapter):
        return PlainTextResponse(registry.load_adapter(req))

    @app.post("/v1/unload_lora_adapter")
    def unload(req: UnloadAdapter):
        return PlainTextResponse(registry.unload_adapter(req))

    return app


DEFAULT_EMBEDDING_NAME = "all-MiniLM-L6-v2"


def _default_embedding() -> dict[str, str]:
    from flywheel.adapters.embeddings import EmbeddingModelMissing, default_model_path

    try:
        return {DEFAULT_EMBEDDING_NAME: default_model_path()}
    except EmbeddingModelMissing as exc:
        log.warning("no embedding model served: %s", exc)
        return {}


def _parse_models(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model {v!r}: expected NAME=PATH")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel_local.serving_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=PATH of a base model to serve (repeat); default: every configured candidate")
    parser.add_argument("--embedding-model", action="append", default=[],
                        help="NAME=PATH of a sentence-transformers model to serve at /v1/embeddings (repeat); "
                             f"default: {DEFAULT_EMBEDDING_NAME} from its package, when installed")
    # Every core by default: at a run's start the in-context example selection of all workloads
    # embeds here (thousands of requests) while the GPU jobs wait for their experiments to be
    # prepared; one thread left the other core idle (measured in a make demo run, 2026-12-01: the
    # jobs started at 49 s with one thread, 39 s with two). The embedded stack sets
    # OMP_WAIT_POLICY=PASSIVE, so idle threads sleep instead of spinning on shared cores.
    parser.add_argument("--threads", type=int, default=int(os.environ.get("FLYWHEEL_SERVING_THREADS", "0"))
                        or len(os.sched_getaffinity(0)), help="torch threads (default: FLYWHEEL_SERVING_THREADS, "
                        "else every core of this process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import uvicorn

    from flywheel.config import load_config

    torch.set_num_threads(max(1, args.threads))  # it shares the machine with Airflow's workers
    cfg = load_config()
    bases = _parse_models(args.model) or {name: c.model_path for name, c in cfg.candidates.items()}
    parsers = {name: c.tool_call_parser for name, c in cfg.candidates.items()}
    registry = ModelRegistry(bases, max_new_tokens=cfg.max_new_tokens, max_seq_len=cfg.max_seq_len, parsers=parsers)
    embeddings = EmbeddingModels(_parse_models(args.embedding_model) if args.embedding_model else _default_embedding())
    embeddings.preload()
    log.info("serving base models %s and embedding models %s on %s:%d", ", ".join(bases),
             ", ".join(embeddings.paths) or "none", args.host, args.port)
    uvicorn.run(create_app(registry, embeddings), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
