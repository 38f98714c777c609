import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from flywheel.adapters.embeddings import LocalMiniLM
from flywheel.icl import (
    build_icl_prompt,
    render_example,
    select_examples,
    select_for_eval,
    similarity_text,
    token_counter,
)


def word_count(text: str) -> int:
    return len(text.split())


def unit_rows(*rows) -> np.ndarray:
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def prompt(user: str) -> str:
    return (
        "<tools> get_weather book_table\n<system> You are a helpful assistant.\n"
        f"<user> {user}\n<assistant>"
    )


# --- select_examples ----------------------------------------------------------------------------


QUERY = unit_rows([1.0, 0.0])[0]
# Pool similarities to the query: 0.0, ~0.95, ~0.71, 1.0
POOL = unit_rows([0.0, 1.0], [1.0, 0.33], [1.0, 1.0], [1.0, 0.0])


def select(pool, texts, budget, **kwargs):
    return select_examples(
        QUERY, pool, pool_texts=texts, count_tokens=word_count, budget_tokens=budget, **kwargs
    )


def test_most_similar_examples_are_chosen_and_end_nearest_the_query():
    assert select(POOL, ["a", "b", "c", "d"], budget=100, max_examples=3) == [2, 1, 3]


def test_examples_that_do_not_fit_are_skipped_and_the_budget_holds():
    texts = ["w " * 2, "w " * 5, "w " * 4, "w " * 3]
    for budget in range(0, 16):
        chosen = select(POOL, texts, budget)
        assert sum(word_count(texts[i]) for i in chosen) <= budget
    # Budget 6: index 3 (3 tokens) fits, index 1 (5) does not, index 2 (4) does not, index 0 (2) does.
    assert select(POOL, texts, budget=6) == [0, 3]


def test_ties_go_to_the_lower_index_and_exclusions_are_respected():
    pool = unit_rows([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    texts = ["x"] * 4
    assert select(pool, texts, budget=10, max_examples=2) == [1, 0]
    assert select(pool, texts, budget=10, max_examples=2, exclude={0}) == [2, 1]
    assert select(pool, texts, budget=10, max_examples=2) == select(pool, texts, 10, max_examples=2)


def test_empty_pool_or_budget_selects_nothing():
    assert select(np.zeros((0, 2)), [], budget=50) == []
    assert select(POOL, list("abcd"), budget=0) == []
    assert select(POOL, list("abcd"), budget=50, max_examples=0) == []


# --- prompt rendering ---------------------------------------------------------------------------


def test_build_icl_prompt_format():
    examples = [(prompt("Weather in Oslo?"), 'call get_weather {"city":"Oslo"}')]
    built = build_icl_prompt(examples, prompt("Weather in Rome?"))
    assert built == (
        "<tools> get_weather book_table\n<system> You are a helpful assistant.\n<user> Weather in Oslo?\n"
        '<assistant> call get_weather {"city":"Oslo"}\n'
        "<tools> get_weather book_table\n<system> You are a helpful assistant.\n<user> Weather in Rome?\n"
        "<assistant>"
    )
    assert build_icl_prompt([], "<user> hi\n<assistant>") == "<user> hi\n<assistant>"
    assert render_example("<user> hi\n<assistant>", "  Hello!  ") == "<user> hi\n<assistant> Hello!\n"


def test_similarity_text_keeps_the_conversation_only():
    text = (
        "<tools> a b\n<system> Be brief.\nStill system.\n"
        "<user> Hi\nsecond line\n<assistant> Hey\n<user> Bye\n<assistant>"
    )
    assert similarity_text(text) == "<user> Hi\nsecond line\n<assistant> Hey\n<user> Bye"
    assert similarity_text("plain text") == "plain text"


# --- token_counter ------------------------------------------------------------------------------


@pytest.fixture()
def tiny_tokenizer_dir(tmp_path):
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"])
    corpus = [
        "<user> What is the weather in Paris?",
        "<assistant> call get_weather {\"city\": \"Paris\"}",
        "Book a table for two people tonight.",
        "The invoice total is twelve euros and fifty cents.",
    ] * 5
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_token_counter_uses_the_model_tokenizer(tiny_tokenizer_dir):
    count = token_counter(tiny_tokenizer_dir)
    reference = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    text = "<user> What is the weather in Paris?"
    assert count(text) == len(reference.encode(text).ids) > 0
    assert count("") == 0
    assert token_counter(tiny_tokenizer_dir / "tokenizer.json")(text) == count(text)


def test_token_counter_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        token_counter(tmp_path)


# --- select_for_eval ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


POOL_PAIRS = [
    (prompt("What's the weather in Paris?"), 'call get_weather {"city":"Paris"}'),
    (prompt("Book a table for 4 at 8pm."), 'call book_table {"people":4,"time":"20:00"}'),
    (prompt("Is it raining in London right now?"), 'call get_weather {"city":"London"}'),
    (prompt("Reserve dinner for two tomorrow."), 'call book_table {"people":2,"day":"tomorrow"}'),
    (prompt("Tell me a joke about cats."), "Why did the cat sit on the computer? To watch the mouse."),
]


def test_select_for_eval_prefers_similar_examples_and_respects_the_budget(tiny_tokenizer_dir, minilm):
    count = token_counter(tiny_tokenizer_dir)
    pool_prompts, pool_completions = zip(*POOL_PAIRS)
    costs = [count(render_example(p, c)) for p, c in POOL_PAIRS]
    budget = sorted(costs)[0] + sorted(costs)[1]  # room for two of the cheapest examples at most
    eval_prompts = [prompt("How's the weather in Berlin today?"), prompt("Book me a table for three.")]

    built = select_for_eval(eval_prompts, pool_prompts, pool_completions, minilm, count, budget, 4)

    weather, booking = built
    assert weather.endswith(eval_prompts[0]) and booking.endswith(eval_prompts[1])
    for text in built:
        examples = text[: -len(eval_prompts[0])]
        used = [cost for (p, c), cost in zip(POOL_PAIRS, costs) if render_example(p, c) in text]
        assert sum(used) <= budget and used
        assert examples.count("<assistant> ") == len(used)
    assert "get_weather" in weather.split("<user>")[-2]  # the example next to the query is a weather one
    assert "book_table {" in booking.split("<user>")[-2]
    assert "joke" not in weather and "joke" not in booking
    again = select_for_eval(eval_prompts, pool_prompts, pool_completions, minilm, count, budget, 4)
    assert again == built


def test_select_for_eval_never_shows_the_query_itself(minilm):
    pool_prompts, pool_completions = zip(*POOL_PAIRS)
    query = POOL_PAIRS[0][0]
    (built,) = select_for_eval([query], pool_prompts, pool_completions, minilm, word_count, 10_000, 2)
    assert built.count(query) == 1 and built.endswith(query)
    assert 'call get_weather {"city":"Paris"}' not in built
    assert 'call get_weather {"city":"London"}' in built  # the next most similar is still used


def test_select_for_eval_without_pool_returns_the_prompts_unchanged(minilm):
    assert select_for_eval([prompt("hi")], [], [], minilm, word_count, 100, 4) == [prompt("hi")]
    assert select_for_eval([], ["p"], ["c"], minilm, word_count, 100, 4) == []
