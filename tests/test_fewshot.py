"""Few-shot prompting and rank classification (`scoring: loglik`) on tiny models, and the zero-shot -> few-shot ->
tuned baselines of a run."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from tunelab import pipeline
from tunelab.config import ConfigError, build_config
from tunelab.data.task_records import load_records
from tunelab.eval.bootstrap import format_interval
from tunelab.eval.fewshot import FewShotError, demonstration_pool, draw_demonstrations
from tunelab.eval.runner import (
    _demonstrated_ids,
    answers,
    label_loglikelihoods,
    prompt_ids,
    run_task,
    shown_prompt_ids,
    skip_reason,
)
from tunelab.eval.targets import Target, load_target
from tunelab.render import format_decoder_prompt, with_demonstrations
from tunelab.resolve import check_config
from tunelab.tasks import TaskError, load_task

from helpers import NEGATIVE, NOUNS, POSITIVE, cli, generation_config, only_task, write_jsonl

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _review(rng: random.Random, positive: bool) -> dict:
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    return {"text": f"the {rng.choice(NOUNS)} was {adjective} {rng.randint(0, 999)}", "label": str(positive).lower()}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """A classification task with train and test splits; the train split also holds three test reviews verbatim,
    which must never be shown. Its label words differ in length (two tokens against one)."""
    folder = tmp_path_factory.mktemp("reviews")
    rng = random.Random(0)
    test = [_review(rng, i % 2 == 0) for i in range(12)]
    write_jsonl(folder / "test.jsonl", test)
    write_jsonl(folder / "train.jsonl", [_review(rng, i % 2 == 0) for i in range(20)] + test[:3])
    task = folder / "reviews.yaml"
    task.write_text(
        f"name: reviews\nkind: classification\nsource: {folder}\n"
        'templates: ["Review: {text}\\nIs it positive?"]\n'
        "input_fields: [text]\n"
        "label_words: {'true': [very good, 'yes'], 'false': [bad, 'no']}\n"
        "max_new_tokens: 3\n",
        encoding="utf-8",
    )
    spec = load_task(str(task))
    return spec, load_records(spec)


@pytest.fixture(scope="module")
def sayings(tmp_path_factory):
    """An evaluation-only generation task: one test split, no train split (as xsum and squad_mini)."""
    folder = tmp_path_factory.mktemp("sayings")
    write_jsonl(folder / "test.jsonl", [{"question": f"say the number {i}", "answer": str(i)} for i in range(30)])
    task = folder / "sayings.yaml"
    task.write_text(
        f'name: sayings\nkind: generation\nsource: {folder}\ntemplates: ["{{question}}"]\nreference_field: answer\n'
        "max_new_tokens: 3\n",
        encoding="utf-8",
    )
    return load_task(str(task))


@pytest.fixture(scope="module")
def decoder(tiny_decoder) -> Target:
    return load_target(tiny_decoder, batch_size=4)


@pytest.fixture(scope="module")
def chat_decoder(decoder) -> Target:
    tokenizer = copy.deepcopy(decoder.tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    return dataclasses.replace(decoder, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def seq2seq(tiny_seq2seq) -> Target:
    return load_target(tiny_seq2seq, batch_size=4)


# --- drawing ------------------------------------------------------------------------------------------


def test_demonstrations_never_include_a_scored_example(reviews):
    spec, records = reviews
    pool = demonstration_pool(spec, records, shots=1)
    assert len(pool) == 20  # the train split's 23 reviews less the 3 that are also scored
    scored = {spec.prompt(r) for r in records}
    drawn = draw_demonstrations(spec, records, shots=20, seed=0)  # every candidate, for every scored review
    assert all(len(shown) == 20 and not {prompt for prompt, _ in shown} & scored for shown in drawn)
    assert {answer for shown in drawn for _, answer in shown} == {"very good", "bad"}  # label words, not labels


def test_an_eval_only_task_draws_from_the_records_it_does_not_score(sayings):
    scored = load_records(sayings, limit=10, seed=3)
    drawn = draw_demonstrations(sayings, scored, shots=5, seed=0)
    shown = {prompt for demonstrations in drawn for prompt, _ in demonstrations}
    assert shown and not shown & {sayings.prompt(r) for r in scored}
    assert shown <= {sayings.prompt(r) for r in load_records(sayings)}
    with pytest.raises(FewShotError, match=r"21 demonstrations need 21.*hold 20.*lower --shots"):
        draw_demonstrations(sayings, scored, shots=21, seed=0)
    with pytest.raises(FewShotError, match="no train split"):
        draw_demonstrations(sayings, load_records(sayings), shots=1, seed=0)


def test_draws_are_seeded_per_example(reviews):
    spec, records = reviews
    first = draw_demonstrations(spec, records, shots=3, seed=7)
    assert first == draw_demonstrations(spec, records, shots=3, seed=7)
    assert first != draw_demonstrations(spec, records, shots=3, seed=8)
    assert len({tuple(shown) for shown in first}) > 1  # each scored example gets its own draw
    assert draw_demonstrations(spec, records[:4], shots=3, seed=7) == first[:4]


# --- formatting ---------------------------------------------------------------------------------------

DEMOS = [("Review: a\nIs it positive?", "yes"), ("Review: b\nIs it positive?", "no")]


def test_a_base_model_reads_demonstrations_as_training_lays_out_examples(decoder):
    text = format_decoder_prompt("Review: c\nIs it positive?", decoder.tokenizer, DEMOS)
    assert text == "Review: a\nIs it positive?\nyes\n\nReview: b\nIs it positive?\nno\n\nReview: c\nIs it positive?\n"
    assert format_decoder_prompt("q", decoder.tokenizer, []) == format_decoder_prompt("q", decoder.tokenizer) == "q\n"
    assert with_demonstrations("q", DEMOS) + "\n" == format_decoder_prompt("q", decoder.tokenizer, DEMOS)


def test_a_chat_model_reads_demonstrations_as_earlier_turns(chat_decoder):
    text = format_decoder_prompt("Review: c", chat_decoder.tokenizer, DEMOS)
    assert text == (
        "<|user|>Review: a\nIs it positive?\n<|assistant|>yes\n<|user|>Review: b\nIs it positive?\n"
        "<|assistant|>no\n<|user|>Review: c\n<|assistant|>"
    )


def test_an_encoder_decoder_reads_demonstrations_in_its_input(seq2seq, reviews):
    spec, records = reviews
    prompt = spec.prompt(records[0])
    ids, shown = shown_prompt_ids(seq2seq, spec, prompt, DEMOS, room=3)
    assert shown == 2 and ids == seq2seq.tokenizer(with_demonstrations(prompt, DEMOS))["input_ids"]


def _lengths(target, prompt, demonstrations) -> list[int]:
    """Token counts of the prompt after its last k demonstrations, k = 0 .. all."""
    return [len(_demonstrated_ids(target, prompt, demonstrations[len(demonstrations) - k :])) for k in range(5)]


def test_demonstrations_that_do_not_fit_are_dropped_first_ones_first(decoder, reviews):
    spec, records = reviews
    prompt, demonstrations = spec.prompt(records[0]), draw_demonstrations(spec, records, 4, seed=0)[0]
    lengths = _lengths(decoder, prompt, demonstrations)
    room = spec.max_new_tokens
    short = spec.model_copy(update={"max_length": (lengths[2] + lengths[3]) // 2 + room})
    ids, shown = shown_prompt_ids(decoder, short, prompt, demonstrations, room)
    assert shown == 2 and ids == _demonstrated_ids(decoder, prompt, demonstrations[2:])
    tiny = spec.model_copy(update={"max_length": lengths[0] + room - 1})  # not even the prompt alone fits
    ids, shown = shown_prompt_ids(decoder, tiny, prompt, demonstrations, room)
    assert shown == 0 and ids == prompt_ids(decoder, prompt, room, tiny)  # the query cut as zero-shot cuts it


def test_a_task_result_says_how_many_demonstrations_were_shown(decoder, reviews):
    spec, records = reviews
    lengths = _lengths(decoder, spec.prompt(records[0]), draw_demonstrations(spec, records, 4, seed=0)[0])
    short = spec.model_copy(update={"max_length": lengths[2] + spec.max_new_tokens + 4})
    result = run_task(decoder, short, records, samples=20, shots=4)
    assert result.shots == 4 and len(result.shown) == len(records) and max(result.shown) < 4
    report = result.as_dict()
    assert report["shots"] == 4 and report["demonstrations_shown"] == pytest.approx(sum(result.shown) / len(records))
    assert report["scoring"] == "generate" and "unmatched_share" in report


def test_zero_shots_are_todays_prompts(decoder, reviews):
    spec, records = reviews
    result = run_task(decoder, spec, records, samples=20)
    assert result.outputs == answers(decoder, spec, records)
    assert result.as_dict()["shots"] == 0 and "demonstrations_shown" not in result.as_dict()


def test_a_classifier_takes_no_demonstrations(decoder, reviews):
    spec, _ = reviews
    classifier = Target("clf", torch.nn.Linear(1, 1), decoder.tokenizer, "classification", ["true", "false"])
    assert skip_reason(classifier, spec) is None
    assert "no demonstrations" in skip_reason(classifier, spec, shots=2)


# --- rank classification ------------------------------------------------------------------------------


def _decoder_logprob(target: Target, context: list[int], word: str) -> float:
    """Summed log-probability of `word`'s tokens after `context`, one sequence alone, no EOS."""
    answer = target.tokenizer(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = target.model(input_ids=torch.tensor([context + answer])).logits[0]
    log_probs = logits.log_softmax(-1)
    return sum(float(log_probs[len(context) - 1 + i, token]) for i, token in enumerate(answer))


def _decoder_scores(target: Target, spec, records) -> list[dict[str, float]]:
    """Each label's log-likelihood computed independently of the runner: after the plain prompt and a newline, or
    after the chat template's user turn and generation prompt."""
    tokenizer, scores = target.tokenizer, []
    for record in records:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": spec.prompt(record)}], tokenize=False, add_generation_prompt=True
            )
            context = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            context = tokenizer(spec.prompt(record) + "\n")["input_ids"]
        scores.append(
            {label: _decoder_logprob(target, context, words[0]) for label, words in spec.label_words.items()}
        )
    return scores


def _seq2seq_scores(target: Target, spec, records) -> list[dict[str, float]]:
    """Each label's log-likelihood as the encoder-decoder's decoder output given the prompt, EOS left out."""
    tokenizer, scores = target.tokenizer, []
    for record in records:
        input_ids = torch.tensor([tokenizer(spec.prompt(record))["input_ids"]])
        row = {}
        for label, words in spec.label_words.items():
            answer = tokenizer(text_target=words[0])["input_ids"]
            assert answer[-1] == tokenizer.eos_token_id  # what training's targets end with, and scoring drops
            answer = answer[:-1]
            with torch.no_grad():
                logits = target.model(input_ids=input_ids, labels=torch.tensor([answer])).logits[0]
            row[label] = float(logits.log_softmax(-1).gather(-1, torch.tensor(answer).unsqueeze(-1)).sum())
        scores.append(row)
    return scores


@pytest.mark.parametrize(
    "model, by_hand",
    [("decoder", _decoder_scores), ("chat_decoder", _decoder_scores), ("seq2seq", _seq2seq_scores)],
)
def test_loglik_predicts_the_argmax_of_the_label_log_likelihoods(model, by_hand, request, reviews):
    spec, records = reviews
    target = request.getfixturevalue(model)
    expected = by_hand(target, spec, records)
    for batch_size in (4, 1):  # batched equals one example at a time
        scores = label_loglikelihoods(dataclasses.replace(target, batch_size=batch_size), spec, records)
        assert len(scores) == len(expected)
        for row, want in zip(scores, expected):
            assert row == pytest.approx(want, rel=1e-4)
    result = run_task(target, spec, records, samples=20, scoring="loglik")
    assert result.predictions == [max(row, key=row.get) for row in expected]


def test_loglik_results_name_a_label_for_every_answer_with_or_without_demonstrations(decoder, reviews):
    spec, records = reviews
    for shots in (0, 2):
        result = run_task(decoder, spec, records, samples=20, shots=shots, scoring="loglik")
        report = result.as_dict()
        assert report["scoring"] == "loglik" and report["shots"] == shots and "unmatched_share" not in report
        assert set(result.predictions) <= {"true", "false"} and result.outputs == result.predictions
    assert run_task(decoder, spec.model_copy(update={"scoring": "loglik"}), records, samples=20).scoring == "loglik"


def test_loglik_is_refused_for_a_task_that_is_not_classification(tmp_path):
    task = tmp_path / "gen.yaml"
    task.write_text(
        'name: gen\nkind: generation\nsource: x\ntemplates: ["{q}"]\nreference_field: a\nscoring: loglik\n',
        encoding="utf-8",
    )
    with pytest.raises(TaskError, match=r"(?s)gen.yaml.*scoring loglik ranks a classification task's labels"):
        load_task(str(task))


# --- reports and the command line ---------------------------------------------------------------------


def test_eval_cli_reports_shots_and_scoring_per_task(tiny_decoder, reviews, sayings, tmp_path):
    tasks = {spec.name: Path(spec.source) / f"{spec.name}.yaml" for spec in (reviews[0], sayings)}
    suite = tmp_path / "mine.yaml"
    entries = f"  - {{task: '{tasks['reviews']}', limit: 6}}\n  - {{task: '{tasks['sayings']}', limit: 4}}\n"
    suite.write_text(f"name: mine\ntasks:\n{entries}", encoding="utf-8")
    output = tmp_path / "out"
    assert cli(f"eval {tiny_decoder} --suite {suite} --shots 2 --scoring loglik --samples 20 --output {output}") == 0
    report = json.loads((output / "mine-2shot-loglik.json").read_text())
    assert report["tasks"]["reviews"]["scoring"] == "loglik" and report["tasks"]["sayings"]["scoring"] == "generate"
    assert report["tasks"]["reviews"]["shots"] == report["tasks"]["sayings"]["shots"] == 2
    table = (output / "mine-2shot-loglik.md").read_text()
    assert "| task | examples | shots | scoring |" in table and "| reviews | 6 | 2 | loglik |" in table
    rows = [json.loads(line) for line in (output / "mine-2shot-loglik.outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(row["shots"] == 2 for row in rows)
    assert cli(f"eval {tiny_decoder} --suite {suite} --shots -1") == 2
    assert cli(f"forgetting {tiny_decoder} {tiny_decoder} --suite {suite} --scoring loglik --output {output}") == 0
    forgetting = json.loads((output / "forgetting-mine-loglik.json").read_text())
    assert forgetting["scoring"] == "loglik"
    assert forgetting["tasks"]["reviews"]["scoring"] == {"base": "loglik", "tuned": "loglik"}
    assert "classification scored by loglik" in (output / "forgetting-mine-loglik.md").read_text()
    assert not (output / "forgetting-mine.json").exists()  # the generate-and-map report's name stays free


# --- a run's baselines --------------------------------------------------------------------------------


def test_old_configs_evaluate_base_is_read_as_baselines_and_few_shot_needs_a_prompt():
    assert build_config({"eval": {"evaluate_base": False}}).eval.baselines == []
    assert build_config({"eval": {"evaluate_base": True}}).eval.baselines == ["zero_shot"]
    assert build_config({}).eval.baselines == ["zero_shot"] and build_config({}).eval.shots == 5
    with pytest.raises(ConfigError, match="old spelling of eval.baselines"):
        build_config({"eval": {"evaluate_base": True, "baselines": []}})
    with pytest.raises(ConfigError, match="classifier run answers through a classification head"):
        check_config(
            build_config({"data": {"kind": "classification"}, "eval": {"baselines": ["zero_shot", "few_shot"]}})
        )


def test_too_few_training_records_for_the_shots_fail_before_a_model_loads(tiny_decoder, copy_task_file, tmp_path):
    config = generation_config(tiny_decoder, copy_task_file, tmp_path / "runs")
    config.eval.baselines, config.eval.shots = ["few_shot"], 100  # 64 records in all
    with pytest.raises(FewShotError, match="100 demonstrations need 100"):
        pipeline.train(config)
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_run_scores_zero_shot_few_shot_and_tuned_and_a_resume_keeps_the_baselines(
    tiny_decoder, copy_task_file, tmp_path, monkeypatch
):
    config = generation_config(tiny_decoder, copy_task_file, tmp_path, epochs=1)
    config.eval.baselines, config.eval.shots = ["zero_shot", "few_shot"], 2
    shots_scored = []
    score_tasks = pipeline.score_tasks

    def counting(*args, **kwargs):
        shots_scored.append(kwargs.get("shots", 0))
        return score_tasks(*args, **kwargs)

    monkeypatch.setattr(pipeline, "score_tasks", counting)
    run = pipeline.train(config)
    assert shots_scored == [0, 2, 0]  # zero-shot and 2-shot before training, the tuned model after
    evaluation = json.loads(run.eval_path.read_text())
    task = only_task(evaluation)
    assert [task[role]["shots"] for role in ("base", "few_shot", "tuned")] == [0, 2, 0]
    assert task["few_shot"]["demonstrations_shown"] == 2
    assert set(evaluation["macro_average"]) == {"base", "few_shot", "tuned"}
    card = run.card_path.read_text()
    assert "| task | examples | metric | base 0-shot | base 2-shot | tuned | change |" in card
    intervals = [format_interval(task[role]["metrics"]["rougeL"]) for role in ("base", "few_shot", "tuned")]
    assert f"| rougeL | {' | '.join(intervals)} |" in card and "Base 2-shot = the same base model" in card

    kept = {path: path.read_text() for path in (run.base_eval_path, run.few_shot_eval_path)}
    shots_scored.clear()
    pipeline.train(run.config(), resume=run)
    assert shots_scored == [0]  # only the tuned model: both baselines were kept
    assert all(path.read_text() == text for path, text in kept.items())

    scored = write_jsonl(tmp_path / "more.jsonl", [{"question": f"repeat the word {w}", "answer": w} for w in NOUNS])
    assert cli(f"eval {run.path} --data {scored} --shots 2 --samples 20") == 0
    report = json.loads((run.path / "eval" / "data-more-2shot.json").read_text())
    assert report["tasks"]["more.jsonl"]["shots"] == 2
