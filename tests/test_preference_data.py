"""Preference data: every form (explicit prompt as a string or messages, implicit prompt, unpaired good/bad
answers; answers as a string, one message or a list of one) read through a run's data path, every validation
error named by file, line and field (through the run's path and `tunelab data check`), `data.skip_invalid`, the
data report's counts on small self-written files with known answers (pairs, unpaired answers, prompt turns,
chosen equal to rejected, length bias, truncation), duplicates and leakage found and cleaned, the real
preference_demo and kto_demo files, and the built-in preference_hh task. Tokens are smollm2-135m-instruct's.

preference_hh is red-team material: its test only counts records, and nothing here prints its text."""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import fmean

import pytest

from tunelab.config import build_config
from tunelab.data.report import render_report
from tunelab.data.task_records import load_records
from tunelab.data.taskset import load_taskset
from tunelab.data_checks import read_checked, report_data_file, run_data_report
from tunelab.kinds import kind_named
from tunelab.kinds.chat_masks import closing_text
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.kinds.preference import encoded_preference, preference_of
from tunelab.kinds.preference_pairs import read_preference
from tunelab.models.loading import config_tokenizer
from tunelab.records import DataError
from tunelab.tasks import load_task

from helpers import SHARED_DATA, cli, session_home, write_jsonl, write_yaml

MODEL = "smollm2-135m-instruct"
CLOSING = "<|im_end|>"
README = Path(__file__).resolve().parents[1] / "README.md"


def _settings(tmp_path, train, validation, test, **data) -> dict:
    return {
        "name": "preference-data",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": MODEL},
        "data": {
            "kind": "preference",
            "train": str(train),
            "validation": str(validation),
            "test": str(test),
            "max_length": 256,
            **data,
        },
    }


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You answer in one sentence."}
HELD_OUT = [
    {"prompt": "Which ocean is the largest?", "chosen": "The Pacific.", "rejected": "The Baltic."},
    {"prompt": "How many legs has a spider?", "chosen": "Eight.", "rejected": "Three."},
]


def _held_out(tmp_path) -> tuple[Path, Path]:
    return (
        write_jsonl(tmp_path / "validation.jsonl", HELD_OUT[:1]),
        write_jsonl(tmp_path / "test.jsonl", HELD_OUT[1:]),
    )


def _config(tmp_path, rows: list[dict], **data):
    """A preference run's config training on `rows` (written to train.jsonl), with small held-out splits."""
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    return build_config(_settings(tmp_path, train, *_held_out(tmp_path), **data))


def _config_file(tmp_path, rows: list[dict], **data) -> Path:
    """The same config as a YAML file, for `tunelab data check CONFIG`."""
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    return write_yaml(tmp_path / "run.yaml", _settings(tmp_path, train, *_held_out(tmp_path), **data))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The run's tokenizer, prepared in the session's registry cache as every other load here is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return config_tokenizer(_config(tmp_path_factory.mktemp("preference-tokenizer"), HELD_OUT))


QUESTION = "Which planet is the largest?"
GOOD, BAD = "Jupiter is the largest planet.", "The Moon."

FORMS = {
    "explicit prompt, string answers": (
        {"prompt": QUESTION, "chosen": GOOD, "rejected": BAD},
        ([_user(QUESTION)], [_assistant(GOOD)], [_assistant(BAD)]),
    ),
    "explicit prompt as messages, answers as one message": (
        {
            "prompt": [SYSTEM, _user("Name a gas giant."), _assistant("Saturn."), _user(QUESTION)],
            "chosen": _assistant(GOOD),
            "rejected": _assistant(BAD),
        },
        (
            [SYSTEM, _user("Name a gas giant."), _assistant("Saturn."), _user(QUESTION)],
            [_assistant(GOOD)],
            [_assistant(BAD)],
        ),
    ),
    "answers as a list of one message": (
        {"prompt": QUESTION, "chosen": [_assistant(GOOD)], "rejected": [_assistant(BAD)]},
        ([_user(QUESTION)], [_assistant(GOOD)], [_assistant(BAD)]),
    ),
    "implicit prompt": (
        {
            "chosen": [SYSTEM, _user(QUESTION), _assistant(GOOD)],
            "rejected": [SYSTEM, _user(QUESTION), _assistant(BAD)],
        },
        ([SYSTEM, _user(QUESTION)], [_assistant(GOOD)], [_assistant(BAD)]),
    ),
    "unpaired, label true": (
        {"prompt": QUESTION, "completion": GOOD, "label": True},
        ([_user(QUESTION)], [_assistant(GOOD)], None),
    ),
    "unpaired, label false, prompt as messages": (
        {"prompt": [_user(QUESTION)], "completion": [_assistant(BAD)], "label": False},
        ([_user(QUESTION)], None, [_assistant(BAD)]),
    ),
    "unpaired, label written as text": (
        {"prompt": QUESTION, "completion": _assistant(BAD), "label": "false"},
        ([_user(QUESTION)], None, [_assistant(BAD)]),
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_is_read_and_encoded_through_the_run_data_path(form, tmp_path, tokenizer):
    record, (prompt, chosen, rejected) = FORMS[form]
    config = _config(tmp_path, [record])
    (task,) = load_taskset(config).trained.values()
    (read,) = task.train
    pair = preference_of(read, config.data)
    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, chosen, rejected)
    (example,) = kind_named("preference").encode(task.train, tokenizer, config.data, "decoder", None, True).examples
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        if answer is None:
            assert f"{side}_ids" not in example
            continue
        trained = [i for i, label in zip(example[f"{side}_ids"], example[f"{side}_labels"]) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == answer[0]["content"] + CLOSING  # the answer and its closing token
    assert example.get("desirable") == (None if chosen and rejected else [int(chosen is not None)])
    prompt_text = tokenizer.decode(example["prompt_ids"])
    assert prompt_text.endswith("<|im_start|>assistant\n") and QUESTION in prompt_text


TOOL_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": "{city:"}}],
}
BAD_RECORDS = {
    "empty answer": ({"prompt": QUESTION, "chosen": "  ", "rejected": BAD}, "chosen is empty"),
    "empty answer message": (
        {"prompt": QUESTION, "chosen": GOOD, "rejected": _assistant("")},
        "rejected: message 0 (assistant) has empty content",
    ),
    "empty unpaired answer": ({"prompt": QUESTION, "completion": "", "label": True}, "completion is empty"),
    "missing rejected": ({"prompt": QUESTION, "chosen": GOOD}, "no field 'rejected': a preference pair needs"),
    "missing chosen": ({"prompt": QUESTION, "rejected": BAD}, "no field 'chosen': a preference pair needs"),
    "prompt ending with an assistant turn": (
        {"prompt": [_user(QUESTION), _assistant(GOOD)], "chosen": GOOD, "rejected": BAD},
        "prompt: the prompt's last turn is the assistant's",
    ),
    "answer that is a user turn": (
        {"prompt": QUESTION, "chosen": GOOD, "rejected": [_user(BAD)]},
        "rejected: the answer is a user turn",
    ),
    "list of two answers": (
        {"prompt": QUESTION, "chosen": [_assistant(GOOD), _assistant(BAD)], "rejected": BAD},
        "chosen must be a string or one assistant message, not a list of 2 messages",
    ),
    "implicit pairs whose prompts differ": (
        {
            "chosen": [_user(QUESTION), _assistant(GOOD)],
            "rejected": [_user("Which star is nearest?"), _assistant(BAD)],
        },
        "the prompts of chosen and rejected differ",
    ),
    "bad unpaired label": (
        {"prompt": QUESTION, "completion": GOOD, "label": "maybe"},
        "field 'label' is 'maybe'; an unpaired example's label must be true",
    ),
    "unpaired answer without a prompt": ({"completion": GOOD, "label": True}, "no field 'prompt'"),
    "bad tool-call JSON in a prompt": (
        {
            "prompt": [
                _user("Weather in Paris?"),
                TOOL_CALL,
                {"role": "tool", "tool_call_id": "call_0", "content": "sun"},
            ],
            "chosen": "Sunny.",
            "rejected": "Snowing.",
        },
        "prompt: message 1: tool call 0: arguments are not valid JSON",
    ),
}


@pytest.mark.parametrize("fault", list(BAD_RECORDS))
def test_every_fault_is_named_by_file_line_and_field(fault, tmp_path, capsys):
    record, message = BAD_RECORDS[fault]
    rows = [FORMS["explicit prompt, string answers"][0], record]
    with pytest.raises(DataError) as refused:
        load_taskset(_config(tmp_path, rows))
    train = tmp_path / "train.jsonl"
    assert f"{train}:2: {message}" in str(refused.value)
    assert cli(f"data check {_config_file(tmp_path, rows)}") == 2  # the run config's data, as a user checks it
    assert f"{train}:2: {message}" in capsys.readouterr().err
    assert cli(f"data check {train} --kind preference model.name={MODEL}") == 2  # the file alone
    assert f"{train}:2: {message}" in capsys.readouterr().err


def test_skip_invalid_skips_the_faulty_records_and_counts_them(tmp_path, capsys):
    good = [FORMS[form][0] for form in ("explicit prompt, string answers", "implicit prompt", "unpaired, label true")]
    differing = BAD_RECORDS["implicit pairs whose prompts differ"][0]
    rows = [good[0], differing, good[1], BAD_RECORDS["list of two answers"][0], good[2]]
    config = _config(tmp_path, rows, skip_invalid=True)
    (task,) = load_taskset(config).trained.values()
    assert [record.where.rsplit(":", 1)[1] for record in task.train] == ["1", "3", "5"]
    shown = capsys.readouterr().out
    train = tmp_path / "train.jsonl"
    assert "warning: skipped 2 invalid record(s) in train data (data.skip_invalid=true)" in shown
    assert f"{train}:2: the prompts of chosen and rejected differ" in shown
    assert f"{train}:4: chosen must be a string or one assistant message" in shown


def _pair(prompt, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


SAME = "Both answers say exactly this."
KNOWN_PAIRS = [
    _pair("Is water wet?", "Yes, water makes things wet.", "No."),  # chosen longer
    _pair("Say something.", SAME, SAME),  # chosen equal to rejected
    _pair(
        [SYSTEM, _user("Name a colour."), _assistant("Red."), _user("Another one?")], "Blue.", "Green, as in grass."
    ),
    {"chosen": [_user("Hello?"), _assistant(SAME)], "rejected": [_user("Hello?"), _assistant(SAME)]},  # equal
    _pair("Capital of France?", "Paris is the capital of France.", "Rome."),  # chosen longer
    _pair("Primary colours?", "Red, yellow and blue.", "Pink."),  # chosen longer
]
"""Six pairs: chosen longer in lines 1, 5 and 6, shorter in line 3, equal to rejected in lines 2 and 4; prompts
of one turn, but three (system prompt not counted) in line 3."""


def _answer_tokens(tokenizer, text: str) -> int:
    """An answer's trained tokens counted independently of the encoding: its text, then the closing token."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1


def test_the_report_counts_pairs_equal_answers_and_length_bias(tmp_path, tokenizer, capsys):
    config = _config(tmp_path, KNOWN_PAIRS, max_target_length=64)
    report, _ = run_data_report(config)
    (found,) = report["tasks"].values()
    summary = found["lengths"]["preferences"]
    train = tmp_path / "train.jsonl"
    assert summary["pairs"] == 6 and (summary["unpaired"]["good"], summary["unpaired"]["bad"]) == (0, 0)
    assert summary["prompt_turns"] == {"min": 1, "median": 1, "max": 3}
    assert summary["equal"] == 2 and summary["equal_examples"] == [f"{train}:2", f"{train}:4"]
    bias = summary["length_bias"]
    assert (bias["pairs"], bias["chosen_longer"], bias["chosen_shorter"], bias["same_length"]) == (6, 3, 1, 2)
    assert bias["chosen_longer_share"] == 0.5
    (task,) = load_taskset(config).trained.values()
    answers = [preference_of(record, config.data) for record in task.train]
    chosen = [_answer_tokens(tokenizer, pair.chosen[0]["content"]) for pair in answers]
    rejected = [_answer_tokens(tokenizer, pair.rejected[0]["content"]) for pair in answers]
    assert (bias["chosen_mean"], bias["rejected_mean"]) == (round(fmean(chosen), 1), round(fmean(rejected), 1))
    assert (summary["answers_cut"], summary["prompts_cut"], found["lengths"]["truncated"]) == (0, 0, 0)
    assert found["held_out_lengths"]["test"]["preferences"]["pairs"] == 1

    equal_pairs = f"2 pair(s) ({train}:2, {train}:4): they carry no preference"
    (warned,) = [line for line in report["warnings"] if "carry no preference" in line]  # held-out splits: none
    assert f"chosen equal to rejected in {equal_pairs}" in warned
    assert cli(f"data check {_config_file(tmp_path, KNOWN_PAIRS, max_target_length=64)}") == 0
    shown = capsys.readouterr().out
    assert "- pairs: 6; unpaired examples: none" in shown
    assert "- prompt turns per example (system prompt not counted): min 1, median 1, max 3" in shown
    assert f"- chosen equal to rejected: {equal_pairs}" in shown
    assert "- length bias: chosen longer than rejected in 3 of 6 pair(s) (50.0%), shorter in 1, as long in 2" in shown
    assert "  - pairs: 1; unpaired examples: none" in shown  # each held-out split, under its lengths


def test_an_equal_pair_in_the_test_split_is_warned_about_under_its_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", HELD_OUT)
    test = write_jsonl(tmp_path / "equal-test.jsonl", [_pair("Say something.", SAME, SAME)])
    report, _ = run_data_report(build_config(_settings(tmp_path, train, _held_out(tmp_path)[0], test)))
    (name,) = report["tasks"]
    assert report["warnings"] == [
        f"{name} (test): chosen equal to rejected in 1 pair(s) ({test}:1): they carry no "
        "preference; drop them or fix one answer"
    ]


def test_unpaired_examples_are_counted_good_and_bad(tmp_path, tokenizer):
    rows = [
        {"prompt": "Is ice cold?", "completion": "Yes, ice is cold.", "label": True},
        {"prompt": "Is fire cold?", "completion": "Yes.", "label": False},
        {"prompt": [_user("Count to three.")], "completion": [_assistant("One, two, three.")], "label": True},
    ]
    config = _config(tmp_path, rows)
    report, _ = run_data_report(config)
    (found,) = report["tasks"].values()
    summary = found["lengths"]["preferences"]
    good = fmean([_answer_tokens(tokenizer, "Yes, ice is cold."), _answer_tokens(tokenizer, "One, two, three.")])
    assert summary["pairs"] == 0 and summary["length_bias"] is None and summary["equal"] == 0
    assert summary["unpaired"] == {
        "good": 2,
        "bad": 1,
        "good_mean": round(good, 1),
        "bad_mean": float(_answer_tokens(tokenizer, "Yes.")),
    }
    assert "- pairs: 0; unpaired examples: 2 good, 1 bad (mean answer tokens: good" in render_report(report)


def test_an_answer_judged_both_good_and_bad_is_a_conflict_not_a_duplicate(tmp_path):
    judged = {"prompt": "Is ice cold?", "completion": "Yes, ice is cold."}
    rows = [{**judged, "label": True}, {**judged, "label": False}, {**judged, "label": True}, HELD_OUT[0]]
    report, _ = run_data_report(_config(tmp_path, rows))
    (found,) = report["tasks"].values()
    assert (found["conflicts"]["inputs"], found["conflicts"]["records"]) == (1, 3)
    assert (found["exact_duplicates"]["groups"], found["exact_duplicates"]["extra"]) == (1, 1)  # lines 1 and 3
    (task,) = load_taskset(_config(tmp_path, rows, dedup="exact")).trained.values()
    assert [record.where.rsplit(":", 1)[1] for record in task.train] == ["1", "2", "4"]


def test_truncation_counts_are_what_training_cuts(tmp_path, tokenizer):
    config = _config(tmp_path, KNOWN_PAIRS)
    (task,) = load_taskset(config).trained.values()
    records = task.train
    closing = closing_text(tokenizer)
    uncut = [encoded_preference(r, tokenizer, config.data, closing)[0] for r in records]
    whole = sorted(len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in uncut)
    answers = sorted(max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in uncut)
    limits = {"max_length": whole[2], "max_target_length": answers[2]}  # cuts some prompts and answers, not all
    data = config.data.model_copy(update=limits)
    cut = [encoded_preference(r, tokenizer, data, closing) for r in records]
    prompts_cut = sum(len(c["prompt_ids"]) < len(u["prompt_ids"]) for (c, _), u in zip(cut, uncut))
    answers_cut = sum(
        any(len(c[f"{side}_ids"]) < len(u[f"{side}_ids"]) for side in ("chosen", "rejected"))
        for (c, _), u in zip(cut, uncut)
    )
    report, _ = run_data_report(_config(tmp_path, KNOWN_PAIRS, **limits))
    (found,) = report["tasks"].values()
    summary = found["lengths"]["preferences"]
    assert (summary["prompts_cut"], summary["answers_cut"]) == (prompts_cut, answers_cut)
    assert 0 < prompts_cut < len(records) and 0 < answers_cut < len(records)
    assert found["lengths"]["truncated"] == sum(was_cut for _, was_cut in cut)


LONG_PAIRS = [
    _pair(
        "How do rivers shape valleys?",
        "Flowing water carries sand and stones that grind the riverbed down, so over ages a V-shaped valley forms.",
        "Rivers do not change anything; valleys were always there before any water started to run through them.",
    ),
    _pair(
        "Why do mountains have snow on top?",
        "Air cools as it rises and thins, so high summits stay below freezing and snowfall there lasts all year.",
        "Snow is heavier than rock, which is why it slides up the slopes and collects at the highest points.",
    ),
    _pair(
        "What makes a desert a desert?",
        "Very little rain: most deserts get under 250 millimetres a year, whether they are hot or bitterly cold.",
        "A desert is any place with sand in it, so every beach in the world counts as a small desert too.",
    ),
    _pair(
        "How do forests help the air?",
        "Trees take in carbon dioxide while they grow and give off oxygen, and their leaves trap fine dust.",
        "Forests make the air worse, because leaves release smoke whenever the wind blows through branches.",
    ),
    _pair(
        "What is a glacier made of?",
        "Snow that piles up for centuries is pressed into dense blue ice, which then creeps slowly downhill.",
        "Glaciers are frozen seawater pushed onto land by storms, which is why their ice always tastes salty.",
    ),
    _pair(
        "Why do volcanoes erupt?",
        "Molten rock rises because it is lighter than the solid rock around it, and trapped gas drives it out.",
        "Volcanoes erupt on a fixed calendar, once every hundred years, no matter what happens underground.",
    ),
]
"""Six pairs on distinct subjects, their answers long enough that a copy with the answers swapped is still a
near-duplicate of the original."""
OTHER_PAIR = _pair(
    "How are islands formed?",
    "Some rise from undersea volcanoes, others are coral reefs built up over time, and some were cut off by seas.",
    "Islands float on the ocean like boats, drifting a few kilometres every year with the prevailing winds.",
)


def _swapped(pair: dict) -> dict:
    return {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}


def test_a_pair_copied_into_the_test_split_is_found(tmp_path):
    pairs = LONG_PAIRS
    train = write_jsonl(tmp_path / "train.jsonl", pairs)
    validation, _ = _held_out(tmp_path)
    clean_test = write_jsonl(tmp_path / "clean-test.jsonl", [OTHER_PAIR])
    report, _ = run_data_report(build_config(_settings(tmp_path, train, validation, clean_test)))
    (found,) = report["tasks"].values()
    assert found["overlap"]["test"]["overlapping"] == 0 and report["contamination"] == []
    assert found["exact_duplicates"]["groups"] == 0 and found["near_duplicates"]["groups"] == 0

    copied = write_jsonl(tmp_path / "copied.jsonl", [OTHER_PAIR, pairs[2], _swapped(pairs[4])])
    report, _ = run_data_report(build_config(_settings(tmp_path, train, validation, copied)))
    (found,) = report["tasks"].values()
    hit = found["overlap"]["test"]
    assert (hit["overlapping"], hit["exact"], hit["near"]) == (2, 1, 1)  # the swapped copy is a near one
    assert {(e["train"], e["other"]) for e in hit["examples"]} == {
        (f"{train}:3", f"{copied}:2"),
        (f"{train}:5", f"{copied}:3"),
    }
    assert len(report["contamination"]) == 1


def test_dedup_and_drop_overlap_clean_a_preference_run(tmp_path):
    pairs = LONG_PAIRS
    train = write_jsonl(tmp_path / "train.jsonl", [*pairs, pairs[0]])
    validation, _ = _held_out(tmp_path)
    test = write_jsonl(tmp_path / "test.jsonl", [OTHER_PAIR, pairs[3]])
    config = build_config(_settings(tmp_path, train, validation, test, dedup="exact", drop_overlap=True))
    tasks = load_taskset(config)
    (task,) = tasks.trained.values()
    assert [record.where for record in task.train] == [f"{train}:{line}" for line in (1, 2, 3, 5, 6)]
    assert [(r.record.where, r.reason, r.of) for r in tasks.removed] == [
        (f"{train}:4", "overlap", f"{test}:2"),
        (f"{train}:7", "duplicate", f"{train}:1"),
    ]


def test_data_clean_removes_duplicate_and_overlapping_pairs(tmp_path):
    pairs = LONG_PAIRS
    path = write_jsonl(tmp_path / "pairs.jsonl", [*pairs, pairs[1]])
    against = write_jsonl(tmp_path / "held-out.jsonl", [pairs[5]])
    output = tmp_path / "clean.jsonl"
    command = f"data clean {path} --kind preference --output {output} --against {against} model.name={MODEL}"
    assert cli(command) == 0
    assert [json.loads(line) for line in output.read_text().splitlines()] == pairs[:5]
    removed = [json.loads(line) for line in (tmp_path / "clean.removed.jsonl").read_text().splitlines()]
    assert [(r["where"], r["reason"], r["of"]) for r in removed] == [
        (f"{path}:6", "overlap", f"{against}:1"),
        (f"{path}:7", "duplicate", f"{path}:2"),
    ]


def _file_report(path: Path, tmp_path) -> dict:
    config = _config(tmp_path, HELD_OUT)
    records, labels = read_checked(config, str(path))
    report = report_data_file(config, str(path), records, labels, [], [])
    return report["tasks"][str(path)]


def test_preference_demo_holds_300_distinct_pairs(tmp_path):
    path = SHARED_DATA / "preference_demo" / "train.jsonl"
    found = _file_report(path, tmp_path)
    summary = found["lengths"]["preferences"]
    assert found["records"] == summary["pairs"] == 300 and summary["unpaired"]["good"] == 0
    assert summary["equal"] == 0  # MANIFEST.md: no pair's chosen equals its rejected
    assert summary["prompt_turns"]["min"] == 1 and summary["prompt_turns"]["max"] >= 3  # multi-turn prompts
    bias = summary["length_bias"]
    assert bias["chosen_longer"] + bias["chosen_shorter"] + bias["same_length"] == 300
    assert 0 < bias["chosen_longer_share"] < 1 and bias["chosen_mean"] > 10 and bias["rejected_mean"] > 10
    assert (found["exact_duplicates"]["groups"], found["exact_duplicates"]["extra"]) == (5, 5)  # lines 14 = 158, ...
    lengths = found["lengths"]  # answers over data.max_target_length (128): at most two per example cut
    assert lengths["answer"]["over"] / 2 <= summary["answers_cut"] <= lengths["answer"]["over"]
    assert summary["answers_cut"] <= lengths["truncated"] <= 300


def test_kto_demo_holds_150_good_and_150_bad_answers(tmp_path):
    found = _file_report(SHARED_DATA / "kto_demo" / "train.jsonl", tmp_path)
    summary = found["lengths"]["preferences"]
    assert (summary["pairs"], summary["unpaired"]["good"], summary["unpaired"]["bad"]) == (0, 150, 150)
    assert summary["length_bias"] is None and summary["unpaired"]["good_mean"] > 0


def test_the_builtin_preference_hh_task_reads_its_pairs():
    spec = load_task("preference_hh")
    assert (spec.kind, spec.metrics) == ("preference", ["preference_accuracy", "answer_words"])
    records = load_records(spec)  # every record checked as a preference example
    data = spec.data_config(spec.max_length)
    paired = sum(preference_of(record, data).paired for record in records)
    assert (len(records), paired) == (500, 500)
    assert len(load_records(spec, split=spec.train_split)) == 1799


def _readme_examples() -> list[dict]:
    """The JSON records of the README's Preferences section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Preferences") :]
    section = section[: section.index("\n### ", 1)]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_the_readme_examples_are_read_as_they_say(tmp_path):
    examples = _readme_examples()
    config = _config(tmp_path, HELD_OUT)
    read = [read_preference(example, config.data) for example in examples]
    assert len(read) >= 4 and [pair.paired for pair in read].count(False) >= 1
