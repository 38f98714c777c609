"""The serving endpoint: one client for vLLM's runtime LoRA API and the embedded local server.

Both speak the same HTTP API:

    GET  /v1/models                   what is served (base models and loaded adapters)
    POST /v1/chat/completions         OpenAI chat completions; "model" names a base model or an adapter
    POST /v1/load_lora_adapter        {"lora_name", "lora_path"}   (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)
    POST /v1/unload_lora_adapter      {"lora_name"}

The local server (flywheel_local.serving_server) serves several base models from one process, so
a load also names the ``base_model``; vLLM serves one base model per server and ignores the field.
A NIM takes adapters from its LoRA store directory instead of this API: point
``FLYWHEEL_SERVING_ADAPTERS`` at that directory and the staged copy is what it picks up.

Every failure is a ``ServingError`` whose message names the endpoint, the call and what it said.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import requests

SERVING_CONN_ID = os.environ.get("FLYWHEEL_SERVING_CONN_ID", "flywheel_serving")
DEFAULT_URL = "http://127.0.0.1:8000"


class ServingError(RuntimeError):
    """The serving endpoint is unreachable, or refused a request (the message says which and why)."""


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


class ServingClient:
    """HTTP client of one OpenAI-compatible endpoint with the runtime LoRA API."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            resp = self.session.request(method, url, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except requests.RequestException as exc:
            raise ServingError(f"serving endpoint {self.base_url} is not reachable ({what}): {exc}") from exc
        if resp.status_code >= 400:
            raise ServingError(f"serving endpoint {self.base_url} refused {what}: HTTP {resp.status_code}: "
                               f"{_error_text(resp)}")
        return resp

    def health(self) -> bool:
        try:
            return self.session.get(f"{self.base_url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models", "the model list").json().get("data") or [])

    def model_ids(self) -> set[str]:
        return {str(m.get("id")) for m in self.models()}

    def load_adapter(self, name: str, path: str, base_model: str | None = None) -> None:
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if base_model:
            body["base_model"] = base_model
        self._call("POST", "/v1/load_lora_adapter", f"loading adapter {name!r} from {path}", json=body)

    def unload_adapter(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", f"unloading adapter {name!r}", json={"lora_name": name})

    def chat(self, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {"model": model, "messages": messages, **extra}
        return self._call("POST", "/v1/chat/completions", f"a chat completion with {model!r}", json=body).json()


def stage_adapter(adapter_uri: str, workload_id: str, version: int, root: str | os.PathLike | None = None) -> str:
    """Copy an adapter out of object storage into the serving adapter directory, once per version.

    The endpoint loads this copy (vLLM reads a local directory; a NIM scans its LoRA store), so a
    deployed version never changes under the server even if the run's artifacts are cleaned up.
    ``root`` (FLYWHEEL_SERVING_ADAPTERS) must be a directory the serving endpoint sees at the same
    path: a shared volume in production, a folder of FLYWHEEL_HOME in the embedded stack.
    """
    from airflow.sdk import ObjectStoragePath

    root = Path(root or adapter_root())
    target = root / workload_id / f"v{int(version)}"
    if (target / "adapter_config.json").exists():
        return str(target)
    source = ObjectStoragePath(adapter_uri)
    if not (source / "adapter_config.json").exists():
        raise ServingError(f"no LoRA adapter at {adapter_uri} (adapter_config.json missing); was the experiment's "
                           "output removed?")
    tmp = root / workload_id / f".v{int(version)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            (tmp / item.name).write_bytes(item.read_bytes())
    tmp.rename(target)  # the endpoint never sees a half-copied adapter
    return str(target)


def adapter_root() -> Path:
    root = os.environ.get("FLYWHEEL_SERVING_ADAPTERS")
    if root:
        return Path(root)
    return Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")).resolve() / "serving" / "adapters"


def endpoint() -> tuple[str, str | None]:
    """(URL, API key) of the serving endpoint: FLYWHEEL_SERVING_URL (+ FLYWHEEL_SERVING_API_KEY) when
    set (the embedded stack sets it), else the Airflow connection ``flywheel_serving`` (an http
    connection; the password is the API key), else the local default."""
    if os.environ.get("FLYWHEEL_SERVING_URL"):
        return os.environ["FLYWHEEL_SERVING_URL"], os.environ.get("FLYWHEEL_SERVING_API_KEY") or None
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(SERVING_CONN_ID)
    except Exception:  # noqa: BLE001 - no Airflow here, or no such connection: the local default
        return DEFAULT_URL, None
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return f"{scheme}://{conn.host}{port}{path}", conn.password or None


def client() -> ServingClient:
    url, key = endpoint()
    return ServingClient(url, api_key=key)
