"""Zero-shot tasks through lm-eval (prunekit.llm.tasks): offline task configs, a tiny model evaluated."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")

from prunekit.errors import ConfigError, PrunekitError, UnknownNameError  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and a shared machine's cores are not oversubscribed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SAMPLE = (
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took up "
    "any book but the Baronetage. Anne was nobody with either father or sister; her word had no weight. "
) * 4


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in milliseconds on a fixed English sample (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([SAMPLE], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_lm(vocab_size: int, seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _need_austen():
    datasets = pytest.importorskip("prunekit.datasets")
    if not datasets.is_installed("austen"):
        pytest.skip("the Austen novels are not installed: prunekit data install austen")


def test_task_configs_load_offline_with_deterministic_local_data():
    pytest.importorskip("lm_eval", reason="zero-shot tasks need lm-eval (pip install lm-eval==0.4.13)")
    _need_austen()
    from lm_eval.tasks import TaskManager

    from prunekit.llm.tasks import OFFLINE_TASKS, TASKS_DIR, austen

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(OFFLINE_TASKS) <= set(manager.all_tasks)
    loaded = manager.load(list(OFFLINE_TASKS))["tasks"]
    by_name = {getattr(t, "task_name", None) or t.config.task: t for t in loaded.values()}
    lastword, cloze = by_name["austen_lastword"], by_name["austen_cloze"]
    docs = list(lastword.test_docs())
    assert len(docs) == austen.SIZES["lastword"]
    for d in docs[:50]:
        assert d["target"].isalpha() and d["target"] in d["context"]  # guessable from the passage
        assert lastword.doc_to_target(d) == " " + d["target"]
    mc = list(cloze.test_docs())
    assert len(mc) == austen.SIZES["cloze"]
    assert all(len(d["choices"]) == 4 and 0 <= d["label"] < 4 for d in mc)
    assert len({d["label"] for d in mc}) == 4  # the answer is not always in the same place
    # deterministic: building again from the text gives the same items as the cached file
    from prunekit.datasets import load_text

    text = load_text(austen.DEFAULT_TEXT)
    rows = [json.loads(line) for line in austen.data_file("cloze").read_text().splitlines()]
    assert austen.build_cloze(text) == rows


def test_a_tiny_model_evaluates_on_a_handful_of_items_and_stays_unchanged():
    pytest.importorskip("lm_eval", reason="zero-shot tasks need lm-eval (pip install lm-eval==0.4.13)")
    _need_austen()
    from prunekit.llm.tasks import evaluate_tasks

    tok = tiny_tokenizer()
    model = tiny_lm(len(tok))
    model.train()
    state = snapshot(model)
    res = evaluate_tasks(model, tok, limit=3, batch_size=4)
    assert res.items == {"austen_lastword": 3, "austen_cloze": 3}
    assert 0 <= res.metrics["austen_cloze"]["acc"] <= 1 and 0 <= res.metrics["austen_lastword"]["acc"] <= 1
    assert res.metrics["austen_lastword"]["perplexity"] > 1
    assert res.data["austen_cloze"]["text"] == "persuasion" and len(res.data["austen_cloze"]["items_sha256"]) == 64
    assert model.training  # its mode restored
    assert_unchanged(model, state)


@pytest.mark.parametrize(
    ("tasks", "kwargs", "error", "advice"),
    [
        (["austen_nonsense"], {}, UnknownNameError, "austen_lastword"),
        ([], {}, ConfigError, "at least one task"),
        (["austen_cloze"], {"batch_size": 0}, ConfigError, "batch_size"),
    ],
)
def test_bad_tasks_are_refused_and_the_model_is_unchanged(tasks, kwargs, error, advice):
    pytest.importorskip("lm_eval", reason="zero-shot tasks need lm-eval (pip install lm-eval==0.4.13)")
    from prunekit.llm.tasks import evaluate_tasks

    model = tiny_lm(64)
    state = snapshot(model)
    with pytest.raises(error) as info:
        evaluate_tasks(model, None, tasks=tasks, **kwargs)
    assert isinstance(info.value, PrunekitError) and advice in str(info.value)
    assert_unchanged(model, state)
