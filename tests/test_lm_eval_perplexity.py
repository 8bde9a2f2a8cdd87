"""lm-evaluation-harness's perplexity convention (`loglikelihood_rolling`) on a tiny decoder, checked against hand
computations: the prefix token, every token scored once however long the text, and the word and byte counts
that `word_perplexity`, `byte_perplexity` and `bits_per_byte` divide by."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.data.task_records import load_records
from tunelab.eval.forgetting import _task_row
from tunelab.eval.metrics import MetricError, TextLikelihood
from tunelab.eval.rolling import lm_eval_length, prefix_token, rolling_windows, text_ids, text_likelihood
from tunelab.eval.runner import TaskResult, _nll_pairs, run_task, score
from tunelab.eval.targets import Target, load_target
from tunelab.tasks import load_task

from conftest import write_jsonl

TEXTS = [
    "the film was great and the cast was wonderful",
    "a dull script",
    "Zürich  is\tnice.\n",
    " ".join(["the ending was superb and moving but the story was tedious"] * 4),
]
LM_EVAL_METRICS = ["lm_eval_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"]


@pytest.fixture(scope="module")
def decoder(tiny_decoder) -> Target:
    return load_target(tiny_decoder, batch_size=4)


@pytest.fixture
def texts_task(tmp_path):
    """A language-modelling task over TEXTS scored by tunelab's perplexity and every lm-eval metric."""
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    task = tmp_path / "texts.yaml"
    task.write_text(
        f"name: texts\nkind: language_modeling\nsource: {data}\ntext_field: text\n"
        f"metrics: [perplexity, {', '.join(LM_EVAL_METRICS)}]\n",
        encoding="utf-8",
    )
    spec = load_task(str(task))
    return spec, load_records(spec)


def _hand_nll(target: Target, ids: list[int]) -> float:
    """Summed NLL of ids[1:] given everything before them, in one forward over the whole sequence."""
    tokens = torch.tensor([ids])
    with torch.no_grad():
        logits = target.model(input_ids=tokens).logits[0, :-1]
    return -float(logits.log_softmax(-1).gather(-1, tokens[0, 1:].unsqueeze(-1)).sum())


def test_windows_are_lm_evals_rolling_windows_made_disjoint():
    # lm-eval's own test case (tests/test_utils.py): 34 tokens, max_seq_len 10, context_len 1, prefix -100; the
    # model inputs are what HFLM feeds after make_disjoint_window ((context + continuation)[:-1]).
    assert list(rolling_windows(list(range(34)), -100, 10)) == [
        ([-100, *range(0, 9)], list(range(0, 10))),
        (list(range(9, 19)), list(range(10, 20))),
        (list(range(19, 29)), list(range(20, 30))),
        (list(range(23, 33)), list(range(30, 34))),
    ]


@pytest.mark.parametrize("length", [1, 2, 3, 7])
def test_every_token_is_predicted_once_from_the_tokens_before_it(length):
    for n in range(0, 20):
        ids = list(range(100, 100 + n))
        tokens = [-1, *ids]
        windows = list(rolling_windows(ids, -1, length))
        assert [t for _, predicted in windows for t in predicted] == ids
        for inputs, predicted in windows:
            assert len(predicted) <= len(inputs) <= length
            end = tokens.index(predicted[-1])
            assert inputs == tokens[end - len(inputs) : end]  # the input ends right before the last prediction


def test_the_prefix_token_is_bos_else_eos(decoder):
    tokenizer = decoder.tokenizer
    assert tokenizer.bos_token_id is None and prefix_token(tokenizer) == tokenizer.eos_token_id
    with_bos = type("Tokenizer", (), {"bos_token_id": 7, "eos_token_id": 9})()
    assert prefix_token(with_bos) == 7
    with pytest.raises(MetricError, match="neither"):
        prefix_token(type("Tokenizer", (), {"bos_token_id": None, "eos_token_id": None})())


def test_text_ids_keep_the_tokenizers_special_tokens_unless_the_text_starts_with_the_prefix(decoder):
    tokenizer, prefix = decoder.tokenizer, prefix_token(decoder.tokenizer)
    assert text_ids(tokenizer, "a dull script", prefix) == tokenizer("a dull script")["input_ids"]
    marked = f"{tokenizer.decode(prefix)} a dull script"
    assert text_ids(tokenizer, marked, prefix) == tokenizer(marked, add_special_tokens=False)["input_ids"]


def test_the_first_token_is_scored_after_the_prefix(decoder):
    text = TEXTS[0]
    prefix = prefix_token(decoder.tokenizer)
    ids = decoder.tokenizer(text)["input_ids"]
    scored = text_likelihood(decoder, text, prefix, length=256)
    assert scored.tokens == len(ids)
    assert scored.nll == pytest.approx(_hand_nll(decoder, [prefix, *ids]), rel=1e-5)


def test_a_text_longer_than_the_window_is_scored_once_per_token(decoder):
    text, prefix = TEXTS[-1], prefix_token(decoder.tokenizer)
    ids = decoder.tokenizer(text)["input_ids"]
    assert len(ids) > 3 * 8
    windowed = text_likelihood(decoder, text, prefix, length=8)
    expected = 0.0
    for inputs, predicted in rolling_windows(ids, prefix, 8):
        with torch.no_grad():
            logits = decoder.model(input_ids=torch.tensor([inputs])).logits[0, -len(predicted) :]
        expected -= float(logits.log_softmax(-1).gather(-1, torch.tensor(predicted).unsqueeze(-1)).sum())
    assert windowed.tokens == len(ids)
    assert windowed.nll == pytest.approx(expected, rel=1e-5)
    whole = text_likelihood(decoder, text, prefix, length=256)
    assert whole.tokens == len(ids) and whole.nll == pytest.approx(_hand_nll(decoder, [prefix, *ids]), rel=1e-5)
    assert windowed.nll != pytest.approx(whole.nll, rel=1e-6)  # less context, another score


def test_words_and_bytes_are_counted_as_lm_eval_counts_them(decoder):
    scored = text_likelihood(decoder, "Zürich  is\tnice.\n", prefix_token(decoder.tokenizer), length=256)
    assert scored.words == 4  # re.split(r"\s+") leaves an empty piece after the final newline, and lm-eval counts it
    assert scored.bytes == 18  # "ü" is two bytes


def test_the_window_is_the_models_context_length_unless_the_task_sets_one(decoder, texts_task):
    spec, _ = texts_task
    assert lm_eval_length(decoder, spec) == decoder.model.config.max_position_embeddings == 256
    assert lm_eval_length(decoder, spec.model_copy(update={"max_length": 16})) == 16


def test_run_task_reports_both_conventions_and_keeps_tunelab_perplexity(decoder, texts_task):
    spec, records = texts_task
    result = run_task(decoder, spec, records, samples=50)
    assert list(result.scores) == ["perplexity", *LM_EVAL_METRICS]
    assert result.predictions == _nll_pairs(decoder, spec, records)  # tunelab's own convention, unchanged
    nll = sum(text.nll for text in result.rolling_nll)
    tokens, words, size = (sum(getattr(t, unit) for t in result.rolling_nll) for unit in ("tokens", "words", "bytes"))
    assert tokens == sum(count for _, count in result.predictions) + len(TEXTS)  # one more token per text
    assert words == sum(len(t.split()) for t in TEXTS) + 1  # and the empty piece after TEXTS[2]'s newline
    assert size == sum(len(t.encode("utf-8")) for t in TEXTS)
    values = {name: interval.value for name, interval in result.scores.items()}
    assert values["lm_eval_perplexity"] == pytest.approx(math.exp(nll / tokens))
    assert values["word_perplexity"] == pytest.approx(math.exp(nll / words))
    assert values["byte_perplexity"] == pytest.approx(math.exp(nll / size))
    assert values["bits_per_byte"] == pytest.approx(nll / size / math.log(2))
    for interval in result.scores.values():
        assert interval.low <= interval.value <= interval.high


def test_the_lm_eval_pass_runs_only_for_a_task_that_reads_it(decoder, texts_task):
    spec, records = texts_task
    result = run_task(decoder, spec.model_copy(update={"metrics": ["perplexity"]}), records, samples=20)
    assert result.rolling_nll == [] and list(result.scores) == ["perplexity"]


def test_lm_eval_metrics_refuse_a_task_that_is_not_language_modelling(decoder):
    spec = load_task("squad_mini").model_copy(update={"metrics": ["exact_match", "word_perplexity"]})
    with pytest.raises(MetricError, match="language_modeling"):
        run_task(decoder, spec, load_records(spec, 2), samples=20)


def _result(spec, texts: list[TextLikelihood]) -> TaskResult:
    result = TaskResult(spec.name, spec.kind, len(texts), predictions=[(t.nll, t.tokens) for t in texts])
    result.references = [None] * len(texts)
    result.rolling_nll = texts
    result.scores = score(spec, result, samples=100)
    return result


def test_forgetting_reads_an_lm_eval_metric_as_lower_is_better():
    spec = load_task("wiki_paragraphs").model_copy(update={"metrics": ["bits_per_byte", "perplexity"]})
    base = _result(spec, [TextLikelihood(20.0, 10, 8, 40)] * 30)
    worse = _result(spec, [TextLikelihood(30.0, 10, 8, 40)] * 30)
    row = _task_row(spec, base, worse, samples=100, seed=0)
    assert row["metric"] == "bits_per_byte" and not row["higher_is_better"]
    assert row["change"]["value"] == pytest.approx((30.0 - 20.0) / 40 / math.log(2))
    assert row["forgotten"] and row["relative_change_pct"] > 0
