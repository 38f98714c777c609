"""The local serving endpoint and deployments against it, for real: a tiny random-weight Llama
built here, real LoRA adapters (peft), the server over HTTP (uvicorn in a thread), the flywheel
schema on the embedded PostgreSQL.

Random-weight adapters (init_lora_weights=False) change the model's greedy output, so "which
adapter answered" is visible in the answer itself.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from flywheel.adapters import deployments
from flywheel.adapters.serving import ServingClient, ServingError
from flywheel.deploy import DeploymentError, RollbackRefused

MESSAGES = [{"role": "system", "content": "Route the customer message."},
            {"role": "user", "content": "where is my order A-100234?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_base(path, hidden: int) -> None:
    from flywheel_trainer.tiny_lm import build_model, train_tokenizer

    import torch

    torch.manual_seed(0)
    texts = ["where is my order A-100234?", "<tool_call>{\"name\": \"get_order_status\", \"arguments\": {}}</tool_call>",
             "Route the customer message.", "hello there, how can I help you today?"] * 5
    tok = train_tokenizer(texts, 300, 128)  # the students' tokenizer, with their chat template
    model = build_model(tok, hidden=hidden, layers=1, heads=2, max_seq_len=128)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def _build_adapter(base_path, path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True)
    # Random A and B (not the no-op init): the adapter visibly changes the answers.
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    peft.save_pretrained(path)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-models")
    paths = {"a": root / "micro-a", "b": root / "micro-b"}
    _build_base(paths["a"], 32)
    _build_base(paths["b"], 48)
    for name, base, seed in (("a1", "a", 1), ("a2", "a", 2), ("b1", "b", 3)):
        paths[name] = root / "adapters" / name
        _build_adapter(paths[base], paths[name], seed)
    paths["not_adapter"] = root / "adapters" / "empty"
    paths["not_adapter"].mkdir()
    return paths


@pytest.fixture(scope="module")
def server(micro):
    import uvicorn

    from flywheel.adapters.embeddings import default_model_path
    from flywheel_local.serving_server import EmbeddingModels, ModelRegistry, create_app

    registry = ModelRegistry({"micro-a": str(micro["a"]), "micro-b": str(micro["b"])}, max_new_tokens=12,
                             max_seq_len=128)
    embeddings = EmbeddingModels({"all-MiniLM-L6-v2": default_model_path()})
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(registry, embeddings), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "serving endpoint did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server) -> ServingClient:
    return ServingClient(server, timeout=60)


def _answer(client: ServingClient, model: str) -> dict:
    return client.chat(model, MESSAGES, max_tokens=12)["choices"][0]["message"]


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# --- the server ---------------------------------------------------------------------------------

def test_serves_base_models_openai_shaped(client):
    assert {"micro-a", "micro-b"} <= client.model_ids()
    resp = client.chat("micro-a", MESSAGES, max_tokens=5)
    assert resp["object"] == "chat.completion" and resp["model"] == "micro-a"
    choice = resp["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    usage = resp["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Greedy decoding: the same request gets the same answer.
    assert _answer(client, "micro-a") == _answer(client, "micro-a")


def test_runtime_lora_adapters_change_the_answer_and_share_the_base(client, micro):
    base_answer = _answer(client, "micro-a")
    n1, n2 = _unique("ad1-"), _unique("ad2-")
    client.load_adapter(n1, str(micro["a1"]), base_model="micro-a")
    client.load_adapter(n2, f"file://{micro['a2']}", base_model="micro-a")
    try:
        listed = {m["id"]: m for m in client.models()}
        assert listed[n1]["parent"] == "micro-a" and listed[n2]["parent"] == "micro-a"
        a1, a2 = _answer(client, n1), _answer(client, n2)
        assert a1 != base_answer and a2 != base_answer and a1 != a2
        # The base model still answers as itself with adapters loaded on it.
        assert _answer(client, "micro-a") == base_answer
    finally:
        client.unload_adapter(n1)
    assert n1 not in client.model_ids()
    assert _answer(client, n2) == a2  # unloading one adapter leaves the other as it was
    client.unload_adapter(n2)
    assert _answer(client, "micro-a") == base_answer  # the last adapter gone: the plain base again


def test_refusals_are_clear_and_leave_serving_unchanged(client, micro):
    base_answer = _answer(client, "micro-a")
    name = _unique("ad-")
    client.load_adapter(name, str(micro["a1"]), base_model="micro-a")
    with pytest.raises(ServingError, match="already been loaded"):
        client.load_adapter(name, str(micro["a2"]), base_model="micro-a")
    with pytest.raises(ServingError, match="does not fit the base model"):
        client.load_adapter(_unique("wrong-"), str(micro["b1"]), base_model="micro-a")
    with pytest.raises(ServingError, match="not a LoRA adapter directory"):
        client.load_adapter(_unique("empty-"), str(micro["not_adapter"]), base_model="micro-a")
    with pytest.raises(ServingError, match="no adapter directory"):
        client.load_adapter(_unique("gone-"), str(micro["a1"]) + "-missing", base_model="micro-a")
    with pytest.raises(ServingError, match="serves several base models"):
        client.load_adapter(_unique("nobase-"), str(micro["a1"]))
    with pytest.raises(ServingError, match="HTTP 404.*does not exist"):
        client.chat("no-such-model", MESSAGES)
    with pytest.raises(ServingError, match="HTTP 400.*messages"):
        client.chat("micro-a", [])
    with pytest.raises(ServingError, match="HTTP 404.*cannot be found"):
        client.unload_adapter(_unique("never-"))
    assert _answer(client, "micro-a") == base_answer
    assert _answer(client, name) != base_answer
    client.unload_adapter(name)


def test_embeddings_endpoint_gives_the_in_process_vectors(server):
    """/v1/embeddings through the openai SDK (EndpointEmbedder): the vectors of MiniLM run in this
    process, in input order, whatever the request size and with empty texts (to float32 rounding:
    a different batching pads differently)."""
    import numpy as np

    from flywheel.adapters.embeddings import EndpointEmbedder, LocalMiniLM

    texts = ["where is my order A-100234?", "", "Book a table for two tonight.", "refund   please"] * 3
    remote = EndpointEmbedder(f"{server}/v1", "all-MiniLM-L6-v2", batch_size=5)  # 3 requests
    got = remote.embed(texts)
    want = LocalMiniLM().embed([t if t.strip() else " " for t in texts])
    assert got.dtype == np.float32 and got.shape == (12, 384)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert remote.embed([]).shape == (0, 384)
    assert remote.name == "all-MiniLM-L6-v2 (endpoint)"


def test_embeddings_endpoint_speaks_openai_and_refuses_clearly(server):
    import base64

    import httpx
    import numpy as np

    url = f"{server}/v1/embeddings"
    plain = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": "hello"}, timeout=60).json()
    packed = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": ["hello"], "encoding_format": "base64"},
                        timeout=60).json()
    assert plain["object"] == "list" and plain["data"][0]["index"] == 0 and len(plain["data"][0]["embedding"]) == 384
    assert plain["usage"]["prompt_tokens"] == 3  # [CLS] hello [SEP]
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(plain["data"][0]["embedding"], dtype=np.float32))
    assert "all-MiniLM-L6-v2" in {m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]}

    unknown = httpx.post(url, json={"model": "micro-a", "input": "x"}, timeout=60)
    assert unknown.status_code == 404 and "not served here" in unknown.json()["error"]["message"]
    dims = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 64}, timeout=60)
    assert dims.status_code == 400 and "384 dimensions" in dims.json()["error"]["message"]
    too_many = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": ["x"] * 2049}, timeout=60)
    assert too_many.status_code == 400
    tokens = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": [[1, 2, 3]]}, timeout=60)
    assert tokens.status_code == 400  # token-id inputs are not supported


def test_embeddings_endpoint_down_names_it():
    from flywheel.adapters.embeddings import EndpointEmbedder

    dead = EndpointEmbedder(f"http://127.0.0.1:{_free_port()}/v1", "all-MiniLM-L6-v2", timeout=2, max_retries=0)
    with pytest.raises(RuntimeError, match=r"embeddings endpoint http://127\.0\.0\.1:\d+/v1 \(model 'all-MiniLM-L6-v2'\) failed"):
        dead.embed(["x"])


def test_endpoint_down_is_a_clear_error():
    down = ServingClient(f"http://127.0.0.1:{_free_port()}", timeout=5)
    assert not down.health()
    with pytest.raises(ServingError, match="not reachable"):
        down.models()


# --- deployments, routing and rollback ----------------------------------------------------------

def _request(workload: str, adapter, run: str, by: str = "alice") -> deployments.DeployRequest:
    return deployments.DeployRequest(
        run_key=run, workload_id=workload, candidate="micro-a", strategy="lora", model_path="/models/micro-a",
        adapter_uri=f"file://{adapter}", template_version="flywheel.prompts:1", dataset_hash="h-" + run,
        scores={"score": 0.5}, approved_by=by)


@pytest.fixture
def staged(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_SERVING_ADAPTERS", str(tmp_path / "serving-adapters"))
    return tmp_path / "serving-adapters"


def _route(conn, workload):
    (route,) = deployments.routes(conn, workload)
    return route


def test_deploy_serves_the_adapter_and_rollback_restores_the_previous_one(flywheel_db, client, micro, staged):
    w = _unique("w")
    base_answer = _answer(client, "micro-a")
    v1 = deployments.deploy(flywheel_db, client, _request(w, micro["a1"], "run/1"))
    assert (v1.version, v1.status, v1.served_model) == (1, "active", f"{w}-v1")
    assert v1.serving_path.startswith(str(staged)) and v1.template_version == "flywheel.prompts:1"
    route = _route(flywheel_db, w)
    assert (route.model, route.version, route.endpoint, route.updated_by) == (f"{w}-v1", 1, client.base_url, "alice")
    v1_answer = _answer(client, route.model)
    assert v1_answer != base_answer  # a routed request is answered by the deployed adapter

    # A retried deployment task finds its version instead of making another.
    assert deployments.deploy(flywheel_db, client, _request(w, micro["a1"], "run/1")).version == 1
    # An adapter left loaded by an attempt that never committed does not block the version's name.
    client.load_adapter(f"{w}-v2", str(micro["a1"]), base_model="micro-a")

    v2 = deployments.deploy(flywheel_db, client, _request(w, micro["a2"], "run/2", by="bob"))
    assert (v2.version, v2.status) == (2, "active")
    v2_answer = _answer(client, _route(flywheel_db, w).model)
    assert v2_answer != v1_answer

    v3 = deployments.rollback(flywheel_db, client, w, actor="carol", reason="v2 answers worse")
    assert (v3.version, v3.status, v3.rollback_of, v3.approved_by) == (3, "active", 1, "carol")
    route = _route(flywheel_db, w)
    assert (route.model, route.version, route.updated_by) == (f"{w}-v3", 3, "carol")
    assert _answer(client, route.model) == v1_answer  # v1's adapter answers again

    versions = {d.version: d for d in deployments.history(flywheel_db, w)}
    assert [versions[v].status for v in (1, 2, 3)] == ["superseded", "rolled_back", "active"]
    assert versions[3].serving_path == versions[1].serving_path  # the same immutable staged copy
    # Only the active version and the one it replaced stay loaded.
    assert {m for m in client.model_ids() if m.startswith(w)} == {f"{w}-v2", f"{w}-v3"}

    # Going back again: v2 was rolled back and v1 is what serves, so there is nothing earlier...
    with pytest.raises(RollbackRefused, match="no earlier version"):
        deployments.rollback(flywheel_db, client, w, actor="carol", reason="again")
    # ...unless it is named.
    v4 = deployments.rollback(flywheel_db, client, w, to_version=2, actor="dave", reason="v2 was fine after all")
    assert (v4.version, v4.rollback_of) == (4, 2)
    assert _answer(client, _route(flywheel_db, w).model) == v2_answer

    events = deployments.events(flywheel_db, w)
    assert [(e["action"], e["outcome"], e["version"], e["actor"]) for e in events] == [
        ("deploy", "succeeded", 1, "alice"), ("deploy", "succeeded", 2, "bob"),
        ("rollback", "succeeded", 3, "carol"), ("rollback", "refused", None, "carol"),
        ("rollback", "succeeded", 4, "dave")]
    assert events[2]["reason"] == "v2 answers worse" and events[2]["from_version"] == 2 and events[2]["to_version"] == 1
    for name in (f"{w}-v3", f"{w}-v4"):
        client.unload_adapter(name)


def test_rollback_refusals_are_recorded_and_change_nothing(flywheel_db, client, micro, staged):
    w = _unique("w")
    with pytest.raises(RollbackRefused, match="has no deployments"):
        deployments.rollback(flywheel_db, client, w, actor="carol", reason="r")
    deployments.deploy(flywheel_db, client, _request(w, micro["a1"], "run/1"))
    with pytest.raises(RollbackRefused, match="no earlier version"):
        deployments.rollback(flywheel_db, client, w, actor="carol", reason="r")
    with pytest.raises(RollbackRefused, match="already the active version"):
        deployments.rollback(flywheel_db, client, w, to_version=1, actor="carol", reason="r")
    with pytest.raises(RollbackRefused, match="has no version 7"):
        deployments.rollback(flywheel_db, client, w, to_version=7, actor="carol", reason="r")
    with pytest.raises(DeploymentError, match="needs a reason"):
        deployments.rollback(flywheel_db, client, w, actor="carol", reason=" ")
    assert [d.status for d in deployments.history(flywheel_db, w)] == ["active"]
    assert _route(flywheel_db, w).version == 1
    outcomes = [(e["outcome"], e["error"]) for e in deployments.events(flywheel_db, w)]
    assert [o for o, _ in outcomes] == ["refused", "succeeded", "refused", "refused", "refused"]
    assert all(err for o, err in outcomes if o == "refused")
    client.unload_adapter(f"{w}-v1")


def test_endpoint_down_or_refusing_leaves_the_active_version(flywheel_db, client, micro, staged):
    w = _unique("w")
    deployments.deploy(flywheel_db, client, _request(w, micro["a1"], "run/1"))
    v1_answer = _answer(client, f"{w}-v1")

    down = ServingClient(f"http://127.0.0.1:{_free_port()}", timeout=5)
    with pytest.raises(DeploymentError, match=r"v2 of .* failed; v1 stays active: .*not reachable"):
        deployments.deploy(flywheel_db, down, _request(w, micro["a2"], "run/2"))
    # The adapter built for another base model is refused by the endpoint.
    with pytest.raises(DeploymentError, match="v3 of .* failed; v1 stays active: .*does not fit"):
        deployments.deploy(flywheel_db, client, _request(w, micro["b1"], "run/3"))
    hist = {d.version: d for d in deployments.history(flywheel_db, w)}
    assert (hist[1].status, hist[2].status, hist[3].status) == ("active", "failed", "failed")
    assert "not reachable" in hist[2].error and "does not fit" in hist[3].error
    route = _route(flywheel_db, w)
    assert (route.version, route.model) == (1, f"{w}-v1")
    assert _answer(client, route.model) == v1_answer

    # A failed version is never a rollback target; a retry of the failed deployment reuses its number.
    with pytest.raises(RollbackRefused, match="never served"):
        deployments.rollback(flywheel_db, client, w, to_version=2, actor="carol", reason="r")
    v2 = deployments.deploy(flywheel_db, client, _request(w, micro["a2"], "run/2"))
    assert (v2.version, v2.status) == (2, "active")
    assert [(e["action"], e["outcome"], e["version"]) for e in deployments.events(flywheel_db, w)] == [
        ("deploy", "succeeded", 1), ("deploy", "failed", 2), ("deploy", "failed", 3),
        ("rollback", "refused", None), ("deploy", "succeeded", 2)]
    for name in (f"{w}-v1", f"{w}-v2"):
        client.unload_adapter(name)


def test_deployment_events_are_append_only(flywheel_db, client, micro, staged):
    w = _unique("w")
    with pytest.raises(RollbackRefused):
        deployments.rollback(flywheel_db, client, w, actor="carol", reason="r")
    for sql in ("UPDATE deployment_events SET actor = 'mallory'", "DELETE FROM deployment_events"):
        with pytest.raises(Exception, match="append-only"):
            with flywheel_db.cursor() as cur:
                cur.execute(sql)
        flywheel_db.rollback()
    assert [e["actor"] for e in deployments.events(flywheel_db, w)] == ["carol"]
