"""Evidence from a preference run: preference accuracy (does the model find each held-out pair's chosen answer likelier
per token than its rejected one) and the length of its own answers, base against tuned with intervals, in eval.json
and the card with the rewards training logged; `predict`, `eval --data`, a plain model on a preference task, the blind
human sheet of base against tuned, `serve` and the forgetting report on a preference run.

A tiny Llama with smollm2's tokenizer (its ChatML template) stands in for a chat model; the run is DPO with LoRA on
self-written pairs (`helpers.preference_rows`)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tunelab.card import preference_section
from tunelab.data import taskset
from tunelab.eval import human
from tunelab.eval.commands import evaluate_suite
from tunelab.eval.human.answers import shown_prompt
from tunelab.eval.metrics import get_metric, score
from tunelab.eval.runner import run_task
from tunelab.eval.targets import Target, load_target
from tunelab.records import Record
from tunelab.run_commands import evaluate_run, predict_run
from tunelab.serve.catalog import Catalog
from tunelab.tasks import TaskSpec

from helpers import preference_rows, write_jsonl, write_yaml
from serving import call, in_process

PREFERENCE_METRICS = ["preference_accuracy", "answer_words"]

FORCED = " yes"
"""The token a forced model all but always says."""


@pytest.fixture(scope="module")
def dpo_run(preference_run):
    """The shared tiny DPO run, with the retention suite scored after training (one example a task)."""
    return preference_run("lora", retention_suite="retention", retention_limit=1)


def _evaluation(run) -> dict:
    (task,) = json.loads(run.eval_path.read_text())["tasks"].values()
    return task


def _forced(model: str) -> Target:
    """The tiny chat model with a head that says FORCED: a zero projection and a bias of 10 on its token, so every
    other token is equally unlikely and an answer's mean log-likelihood per token rises with its share of FORCED."""
    target = load_target(model)
    config = target.model.config
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    (token,) = target.tokenizer(FORCED, add_special_tokens=False)["input_ids"]
    head.bias.data[token] = 10.0
    target.model.lm_head = head
    return target


def chosen_preferred(pair) -> float:
    return get_metric("preference_accuracy").per_example(pair, None)


def _pair(chosen: str, rejected: str) -> dict:
    return {"prompt": "Say something.", "chosen": chosen, "rejected": rejected}


def _spec(**settings) -> TaskSpec:
    return TaskSpec(name="pairs", kind="preference", source="pairs", metrics=PREFERENCE_METRICS, **settings)


def test_a_pair_counts_when_its_chosen_answer_is_likelier_per_token():
    metric = get_metric("preference_accuracy")
    assert metric.reads == "pair_nll" and metric.higher_is_better
    # (summed NLL, tokens): chosen 6/3 = 2 per token beats rejected 3/1 = 3, though its sum is larger
    assert metric.per_example(((6.0, 3), (3.0, 1)), None) == 100.0
    assert metric.per_example(((3.0, 1), (6.0, 3)), None) == 0.0
    assert metric.per_example(((2.0, 1), (4.0, 2)), None) == 0.0  # a tie is not a preference
    assert score("preference_accuracy", [((6.0, 3), (3.0, 1)), ((3.0, 1), (6.0, 3))], None) == 50.0
    words = get_metric("answer_words")
    assert words.higher_is_better is None and words.reads == "answers"
    assert score("answer_words", ["one two three", "  four\nfive ", ""], [None] * 3) == pytest.approx(5 / 3)


def test_preference_accuracy_of_a_forced_model_is_the_share_of_pairs_it_must_prefer(chat_decoder):
    target = _forced(chat_decoder)
    pairs = [
        _pair("yes yes yes yes", "no"),  # chosen: mostly FORCED
        _pair("no", "yes yes yes yes"),  # rejected: mostly FORCED
        _pair("yes yes yes no no no", "no"),  # per token the chosen answer; summed, the shorter rejected one
        _pair("cat", "dog"),  # one unforced token each (and the closing token): a tie, no preference
    ]
    unpaired = {"prompt": "Say something.", "completion": "yes yes", "label": True}
    records = [Record(fields, f"pairs.jsonl:{line}") for line, fields in enumerate([*pairs, unpaired], 1)]
    result = run_task(target, _spec(max_new_tokens=4), records, samples=50)
    assert result.scores["preference_accuracy"].value == 50.0
    assert [chosen_preferred(pair) for pair in result.pair_nll] == [100.0, 0.0, 100.0, 0.0]
    (chosen_nll, chosen_tokens), (rejected_nll, rejected_tokens) = result.pair_nll[2]
    assert chosen_nll > rejected_nll and chosen_tokens > rejected_tokens  # summed, the rejected answer wins
    assert result.notes == [
        "preference_accuracy: 1 of 5 records are unpaired examples (one answer judged good or bad), left out: "
        "there is no second answer to compare"
    ]
    assert result.outputs == [FORCED.strip() + FORCED * 3] * 5 and result.scores["answer_words"].value == 4.0


def test_unpaired_records_alone_leave_preference_accuracy_unscored_and_say_why(chat_decoder):
    records = [Record({"prompt": "Hi.", "completion": "Hello.", "label": label}, "kto.jsonl:1") for label in (1, 0)]
    result = run_task(load_target(chat_decoder), _spec(max_new_tokens=2), records, samples=20)
    assert list(result.scores) == ["answer_words"]
    report = result.as_dict()
    assert "none of the 2 records is a pair" in report["unscored"]["preference_accuracy"]
    section = preference_section({"tasks": {"kto": {"base": report, "tuned": report}}}, [])
    assert "preference accuracy" in section and "not scored: none of the 2 records is a pair" in section


def test_a_preference_run_scores_base_and_tuned_and_keeps_their_answers(dpo_run):
    task = _evaluation(dpo_run)
    assert task["kind"] == "preference" and task["metric"] == "preference_accuracy"
    for role in ("base", "tuned"):
        result = task[role]
        assert list(result["metrics"]) == PREFERENCE_METRICS and result["examples"] == 8
        for interval in result["metrics"].values():
            assert interval["low"] <= interval["value"] <= interval["high"]
        assert len(result["answers"]) == 8 and all(isinstance(answer, str) for answer in result["answers"])
    accuracy = {role: task[role]["metrics"]["preference_accuracy"]["value"] for role in ("base", "tuned")}
    assert accuracy["tuned"] > accuracy["base"], accuracy  # DPO taught the tiny model the pattern of its pairs
    assert task["base"]["answers"] != task["tuned"]["answers"]


def test_the_card_says_preference_accuracy_answer_length_and_the_last_rewards(dpo_run):
    task, card = _evaluation(dpo_run), dpo_run.card_path.read_text()
    section = card.split("## Preferences\n")[1].split("\n\n")[0]
    for metric in PREFERENCE_METRICS:
        base, tuned = (task[role]["metrics"][metric] for role in ("base", "tuned"))
        assert f"{base['value']:.2f} [{base['low']:.2f}, {base['high']:.2f}] -> {tuned['value']:.2f}" in section
    log = [json.loads(line) for line in dpo_run.metrics_path.read_text().splitlines()]
    last = [entry for entry in log if "rewards/accuracies" in entry][-1]
    assert (
        f"training, last logged step {last['step']}: rewards/accuracies {last['rewards/accuracies']:.3f}, "
        f"rewards/margins {last['rewards/margins']:.3f}" in section
    )
    assert "validation, last logged step" in section
    assert "neither longer nor shorter is better" in section


def test_predict_writes_the_answer_to_each_prompt(dpo_run, tmp_path):
    rows = preference_rows(3, seed=1)
    written = predict_run(dpo_run, str(write_jsonl(tmp_path / "pairs.jsonl", rows)), str(tmp_path / "out.jsonl"))
    predicted = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == len(predicted) == 3
    assert [{key: row[key] for key in rows[0]} for row in predicted] == rows
    assert all(isinstance(row["prediction"], str) for row in predicted)


def test_eval_data_scores_a_run_on_a_file_of_pairs(dpo_run, tmp_path):
    unpaired = {"prompt": "Hi.", "completion": "Hello.", "label": True}
    data = write_jsonl(tmp_path / "held-out.jsonl", [*preference_rows(4, seed=2), unpaired])
    report = json.loads(evaluate_run(dpo_run, str(data), tmp_path / "eval", samples=50).read_text())
    result = report["tasks"]["held-out.jsonl"]
    assert list(result["metrics"]) == PREFERENCE_METRICS and result["examples"] == 5
    assert result["notes"] == [
        "preference_accuracy: 1 of 5 records are unpaired examples (one answer judged good or bad), left out: "
        "there is no second answer to compare"
    ]
    unpaired_only = write_jsonl(tmp_path / "kto.jsonl", [unpaired, {**unpaired, "label": False}])
    path = evaluate_run(dpo_run, str(unpaired_only), tmp_path / "eval", samples=50)
    assert list(json.loads(path.read_text())["tasks"]["kto.jsonl"]["metrics"]) == ["answer_words"]
    assert "- kto.jsonl: preference_accuracy not scored: none of the 2 records is a pair" in (
        path.with_suffix(".md").read_text()
    )


def test_a_plain_model_is_scored_on_a_preference_task_and_one_without_a_template_is_skipped(chat_decoder, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", preference_rows(4, seed=3))
    task = write_yaml(
        tmp_path / "pairs.yaml",
        {"name": "pairs", "kind": "preference", "source": str(folder), "metrics": PREFERENCE_METRICS},
    )
    suite = write_yaml(tmp_path / "suite.yaml", {"name": "prefs", "tasks": [{"task": str(task)}]})
    report = json.loads(
        evaluate_suite(chat_decoder, str(suite), output=str(tmp_path / "eval"), samples=50).read_text()
    )
    assert list(report["tasks"]["pairs"]["metrics"]) == PREFERENCE_METRICS
    assert report["average"]["over"] == {"pairs": "preference_accuracy"}  # answer length is no score to average


def test_human_export_is_a_blind_sheet_of_the_base_against_the_tuned_answers(dpo_run, tmp_path):
    output = tmp_path / "dpo-sheet.csv"
    human.export_sheet(dpo_run, None, 3, output, seed=0)
    with output.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    key = json.loads((tmp_path / "dpo-sheet.key.json").read_text())
    config = dpo_run.config()
    assert key["systems"] == {"A": f"base {config.model.name}", "B": f"tuned {dpo_run.path.name}"}
    spec = taskset.task_specs(config).pick(None)
    records = taskset.test_records(config, spec)[:3]
    prompts = [f"user: {record.fields['prompt']}" for record in records]
    task = _evaluation(dpo_run)
    answers = {key["systems"]["A"]: task["base"]["answers"], key["systems"]["B"]: task["tuned"]["answers"]}
    assert len(rows) == 6
    for row in rows:
        item = key["items"][row["item_id"]]
        assert row["prompt"] == prompts[item["prompt_index"]]
        assert row["output"] == answers[item["system"]][item["prompt_index"]]  # as the run's evaluation answered


def test_serve_answers_a_prompt_as_predict_does(dpo_run, tmp_path):
    rows = preference_rows(2, seed=4)
    predict_run(dpo_run, str(write_jsonl(tmp_path / "pairs.jsonl", rows)), str(tmp_path / "out.jsonl"))
    predicted = [json.loads(line)["prediction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    catalog = Catalog()
    catalog.add(f"dpo={dpo_run.path}")
    max_tokens = dpo_run.config().eval.max_new_tokens
    with in_process(catalog) as url:
        answers = []
        for row in rows:
            body = {"model": "dpo", "messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": max_tokens}
            status, reply, _ = call(url, "/v1/chat/completions", body)
            assert status == 200, reply
            answers.append(reply["choices"][0]["message"]["content"])
    assert answers == predicted and any(answers)


def test_the_forgetting_report_of_a_preference_run(dpo_run):
    report = json.loads((dpo_run.path / "eval" / "forgetting-retention.json").read_text())
    assert report["tuned"].endswith("(tuned)") and report["tasks"]
    for row in report["tasks"].values():
        assert "skipped" in row or {"base", "tuned", "change"} <= set(row)
    assert "## Forgetting (retention suite)" in dpo_run.card_path.read_text()


def test_a_rater_reads_the_turns_a_conversation_or_a_pair_is_answered_from():
    system = {"role": "system", "content": "Answer briefly."}
    turns = [system, {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    pair = Record({"prompt": [*turns, {"role": "user", "content": "Bye?"}], "chosen": "Bye.", "rejected": "No."}, "p")
    assert shown_prompt(_spec(), pair) == ("system: Answer briefly.\nuser: Hi.\nassistant: Hello.\nuser: Bye?")
    chat = TaskSpec(name="chat", kind="chat", source="chat")
    conversation = Record(
        {"messages": [*turns, {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]}, "c"
    )
    assert shown_prompt(chat, conversation) == "system: Answer briefly.\nuser: Hi.\nassistant: Hello.\nuser: Bye?"
