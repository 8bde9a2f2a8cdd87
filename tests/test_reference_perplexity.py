"""reference_perplexity: the perplexity of each record's reference answer given its prompt, on tiny decoder and
encoder-decoder models, checked against the models' own loss computed one example at a time."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tunelab.data.task_records import load_records
from tunelab.eval.forgetting import _task_row
from tunelab.eval.metrics import MetricError, get_metric
from tunelab.eval.metrics import score as metric_score
from tunelab.eval.runner import TaskResult, reference_nll, run_task, score, skip_reason
from tunelab.eval.targets import Target, load_target
from tunelab.tasks import load_task

from helpers import write_jsonl

ANSWERS = ["cat", "a brown dog", "the quick fox jumps over it", "yes", "seven small blue birds", "rain"]


@pytest.fixture
def generation_task(tmp_path):
    """A generation task scored by ROUGE-L of its answers and the perplexity of its references, over prompts and
    answers of varied lengths (so batches need padding)."""
    rows = [{"question": f"say {' '.join(['please'] * i)} the phrase {a}", "answer": a} for i, a in enumerate(ANSWERS)]
    data = write_jsonl(tmp_path / "say.jsonl", rows)
    task = tmp_path / "say.yaml"
    task.write_text(
        "name: say\nkind: generation\n"
        f"source: {data}\n"
        'templates: ["{question}"]\n'
        "reference_field: answer\n"
        "metrics: [rougeL, reference_perplexity]\n"
        "max_new_tokens: 4\n",
        encoding="utf-8",
    )
    spec = load_task(str(task))
    return spec, load_records(spec)


@pytest.fixture(scope="module")
def decoder(tiny_decoder) -> Target:
    return load_target(tiny_decoder, batch_size=4)


@pytest.fixture(scope="module")
def seq2seq(tiny_seq2seq) -> Target:
    return load_target(tiny_seq2seq, batch_size=4)


def _decoder_loss(target: Target, prompt: str, answer: str) -> tuple[float, int]:
    """Summed answer NLL from the model's own loss: prompt + newline (no chat template here) as context, the
    answer and EOS as labels, one example alone."""
    tokenizer = target.tokenizer
    assert not tokenizer.chat_template
    context = tokenizer(f"{prompt}\n")["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = torch.tensor([context + answer_ids])
    labels = torch.tensor([[-100] * len(context) + answer_ids])
    with torch.no_grad():
        loss = target.model(input_ids=input_ids, labels=labels).loss
    return float(loss) * len(answer_ids), len(answer_ids)


def _seq2seq_loss(target: Target, prompt: str, answer: str) -> tuple[float, int]:
    """Summed answer NLL from an encoder-decoder's own loss, the prompt as encoder input, one example alone."""
    input_ids = torch.tensor([target.tokenizer(prompt)["input_ids"]])
    answer_ids = target.tokenizer(text_target=answer)["input_ids"]
    with torch.no_grad():
        loss = target.model(input_ids=input_ids, labels=torch.tensor([answer_ids])).loss
    return float(loss) * len(answer_ids), len(answer_ids)


def test_metric_reads_reference_nll_and_lower_is_better():
    metric = get_metric("reference_perplexity")
    assert metric.reads == "reference_nll" and not metric.higher_is_better and metric.library == "tunelab"
    assert get_metric("perplexity").reads == get_metric("rougeL").reads == "answers"
    assert metric.compute([(2.0, 2), (4.0, 2)], [None, None]) == pytest.approx(math.exp(1.5))


def test_one_task_result_carries_rouge_of_answers_and_perplexity_of_references(decoder, generation_task):
    spec, records = generation_task
    result = run_task(decoder, spec, records, samples=50)
    assert set(result.scores) == {"rougeL", "reference_perplexity"}
    assert result.predictions == result.outputs and len(result.outputs) == len(records)
    expected = [_decoder_loss(decoder, spec.prompt(r), spec.target(r)) for r in records]
    assert [count for _, count in result.reference_nll] == [count for _, count in expected]
    for (nll, _), (want, _) in zip(result.reference_nll, expected):
        assert nll == pytest.approx(want, rel=1e-4)
    mean_loss = sum(nll for nll, _ in expected) / sum(count for _, count in expected)
    assert result.scores["reference_perplexity"].value == pytest.approx(math.exp(mean_loss), rel=1e-4)
    references = [spec.reference_of(r) for r in records]
    assert result.scores["rougeL"].value == pytest.approx(metric_score("rougeL", result.outputs, references))


def test_encoder_decoder_reference_nll_is_its_own_loss(seq2seq, generation_task):
    spec, records = generation_task
    expected = [_seq2seq_loss(seq2seq, spec.prompt(r), spec.target(r)) for r in records]
    pairs = reference_nll(seq2seq, spec, records)
    assert [count for _, count in pairs] == [count for _, count in expected]
    for (nll, _), (want, _) in zip(pairs, expected):
        assert nll == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("model", ["decoder", "seq2seq"])
def test_batched_equals_one_example_at_a_time(model, request, generation_task):
    spec, records = generation_task
    target = request.getfixturevalue(model)
    batched = reference_nll(target, spec, records)
    alone = reference_nll(dataclasses.replace(target, batch_size=1), spec, records)
    assert [count for _, count in batched] == [count for _, count in alone]
    for (nll, _), (want, _) in zip(batched, alone):
        assert nll == pytest.approx(want, rel=1e-4)


def test_a_prompt_over_the_input_limit_is_cut_and_the_answer_kept(decoder, generation_task):
    spec, records = generation_task
    short = spec.model_copy(update={"max_length": 16})
    long_record = dataclasses.replace(records[0], fields={"question": "word " * 200, "answer": "a brown dog"})
    (nll, count), (kept_nll, kept_count) = reference_nll(decoder, short, [long_record, records[1]])
    assert count == kept_count == len(decoder.tokenizer("a brown dog", add_special_tokens=False)["input_ids"]) + 1
    assert math.isfinite(nll) and nll != pytest.approx(kept_nll)  # a different (cut) context, the same answer


def test_a_classifier_is_skipped_and_a_task_without_references_refused(decoder, generation_task):
    spec, _ = generation_task
    classifier = Target("clf", torch.nn.Linear(1, 1), decoder.tokenizer, "encoder", ["a", "b"], head=True)
    assert "classifier" in skip_reason(classifier, spec)
    texts = load_task("wiki_paragraphs").model_copy(update={"metrics": ["perplexity", "reference_perplexity"]})
    with pytest.raises(MetricError, match="Use it with a generation or chat task"):
        reference_nll(decoder, texts, [])


def _result(spec, reference_nll: list[tuple[float, int]]) -> TaskResult:
    """A result whose answers are all right, so only the reference perplexity can differ between two of them."""
    answers = ["the same answer"] * len(reference_nll)
    result = TaskResult(spec.name, spec.kind, len(answers), predictions=answers, references=list(answers))
    result.reference_nll = reference_nll
    result.scores = score(spec, result, samples=100)
    return result


def test_forgetting_compares_reference_perplexity_lower_being_better(generation_task):
    spec, _ = generation_task
    spec = spec.model_copy(update={"metrics": ["reference_perplexity", "rougeL"]})
    base = _result(spec, [(20.0, 10)] * 30)
    worse = _result(spec, [(30.0, 10)] * 30)
    row = _task_row(spec, base, worse, samples=100, seed=0)
    assert row["metric"] == "reference_perplexity" and not row["higher_is_better"]
    assert row["change"]["value"] == pytest.approx(math.exp(3.0) - math.exp(2.0))
    assert row["forgotten"] and row["relative_change_pct"] > 0
    row = _task_row(spec, worse, base, samples=100, seed=0)
    assert not row["forgotten"] and row["significant"]
