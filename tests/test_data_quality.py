"""The data checks and cleaning on constructed files whose duplicates, conflicts and overlaps are known: exact counts
for exact duplicates, near-duplicates at one-word edits of long sentences and never between unrelated ones,
leakage, contamination against a suite built here, cleaning that removes exactly what it reports, `data clean`
end to end, and a tiny training run that saves its report and says in its card that it is contaminated."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import yaml

from tunelab import pipeline
from tunelab.config import ConfigError, DataConfig, build_config
from tunelab.data.cleaning import clean
from tunelab.data.encode import encode
from tunelab.data.lengths import token_lengths
from tunelab.data.quality import (
    Fields,
    Sketched,
    conflicts,
    exact_duplicates,
    examples_of,
    near_duplicates,
    overlap,
    run_fields,
)
from tunelab.data.readers import read_file
from tunelab.data.report import file_references, file_report
from tunelab.data.splits import load_task_data
from tunelab.models.loading import load_tokenizer
from tunelab.records import Record

from helpers import classification_config, cli, generation_config, write_jsonl

FIELDS = Fields(("text",), "label")


def sentences(count: int, seed: int, words: int = 25) -> list[str]:
    """Unrelated sentences of random words, 25 words (about 170 characters) each: no two share a phrase."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [" ".join("".join(rng.choice(letters) for _ in range(6)) for _ in range(words)) for _ in range(count)]


def one_word_edit(sentence: str, position: int = 12) -> str:
    """The sentence with one word (the middle one) replaced by another of the same length."""
    words = sentence.split()
    words[position] = "zzqqxx"
    return " ".join(words)


def as_records(texts: list[str], labels: list[str] | None = None, name: str = "f.jsonl") -> list[Record]:
    labels = labels or ["pos"] * len(texts)
    return [Record({"text": t, "label": label}, f"{name}:{i + 1}") for i, (t, label) in enumerate(zip(texts, labels))]


# --- detectors ----------------------------------------------------------------------------------------------


def test_exact_duplicates_are_counted_exactly_after_normalisation():
    base = sentences(20, seed=1)
    texts = base + [
        base[0].upper(),  # case
        "  " + base[0].replace(" ", "\t  ", 3) + " ",  # whitespace
        base[1].replace("a", "\uff41"),  # full-width 'a', folded by NFKC
        base[2],
    ]
    examples = examples_of(as_records(texts), FIELDS)
    groups = exact_duplicates(examples)
    assert sorted(groups) == [[0, 20, 21], [1, 22], [2, 23]]
    assert sum(len(group) - 1 for group in groups) == 4


def test_the_same_input_with_another_answer_is_a_conflict_not_a_duplicate():
    base = sentences(10, seed=2)
    texts = base + [base[3], base[3].title(), base[5]]
    labels = ["pos"] * 10 + ["neg", "pos", "neg"]
    examples = examples_of(as_records(texts, labels), FIELDS)
    assert exact_duplicates(examples) == [[3, 11]]
    assert sorted(conflicts(examples)) == [[3, 10, 11], [5, 12]]


def test_near_duplicates_are_one_word_edits_of_long_sentences_and_never_unrelated_sentences():
    base = sentences(40, seed=3)
    edited = [one_word_edit(base[i]) for i in (4, 9, 17, 28, 33)]
    examples = examples_of(as_records(base + edited), FIELDS)
    groups = near_duplicates(Sketched(examples))
    assert groups == [[4, 40], [9, 41], [17, 42], [28, 43], [33, 44]]
    assert exact_duplicates(examples) == []


def test_near_duplicate_groups_join_transitively_and_include_exact_copies():
    (sentence,) = sentences(1, seed=4)
    chain = [sentence, one_word_edit(sentence, 5), one_word_edit(one_word_edit(sentence, 5), 20), sentence]
    examples = examples_of(as_records(chain + sentences(5, seed=5)), FIELDS)
    assert near_duplicates(Sketched(examples)) == [[0, 1, 2, 3]]


def test_overlap_finds_exact_and_near_copies_of_training_inputs_in_a_test_set():
    train_texts = sentences(30, seed=6)
    test_texts = [train_texts[2].upper(), train_texts[7], one_word_edit(train_texts[11])] + sentences(10, seed=7)
    train = Sketched(examples_of(as_records(train_texts), FIELDS))
    test = Sketched(examples_of(as_records(test_texts, name="test.jsonl"), FIELDS))
    found = {(m.index, m.other): m.similarity for m in overlap(train, test)}
    assert set(found) == {(2, 0), (7, 1), (11, 2)}
    assert found[2, 0] == found[7, 1] == 1.0 and 0.8 <= found[11, 2] < 1.0


def test_language_modelling_compares_text_alone():
    fields = run_fields(DataConfig(kind="language_modeling", text_field="body"))
    assert fields == Fields(("body",), None)
    records = [Record({"body": text}, f"t:{i}") for i, text in enumerate(["same text", "Same  text", "other"])]
    examples = examples_of(records, fields)
    assert exact_duplicates(examples) == [[0, 1]] and conflicts(examples) == []


def test_run_fields_follow_the_kind():
    data = DataConfig(text_field="premise", text_pair_field="hypothesis", prompt_template="Q: {question}\n{context}")
    assert run_fields(data) == Fields(("premise", "hypothesis"), "label")
    generation = data.model_copy(update={"kind": "generation"})
    assert run_fields(generation) == Fields(("question", "context"), "response")
    assert run_fields(DataConfig(kind="generation", prompt_field="src", response_field="tgt")) == Fields(
        ("src",), "tgt"
    )


def test_a_text_pair_is_not_the_same_input_as_its_words_split_elsewhere():
    records = [Record({"a": "one two", "b": "three"}, "x:1"), Record({"a": "one", "b": "two three"}, "x:2")]
    assert exact_duplicates(examples_of(records, Fields(("a", "b"), None))) == []


@pytest.mark.parametrize(("kind", "family"), [("classification", "encoder"), ("generation", "decoder")])
def test_token_lengths_count_the_examples_training_truncates(kind, family, tokenizer_dir):
    tokenizer = load_tokenizer(str(tokenizer_dir))
    rng = random.Random(0)
    records = [
        Record(
            {"text": " ".join(["word"] * rng.randint(2, 40)), "label": "pos", "answer": "yes " * rng.randint(1, 9)},
            f"r:{i}",
        )
        for i in range(40)
    ]
    data = DataConfig(prompt_field="text", response_field="answer", max_length=24, max_target_length=6)
    lengths = token_lengths(kind, family, records, tokenizer, data)
    cut = [encode(kind, family, [record], tokenizer, data, ["pos"]).truncated > 0 for record in records]
    assert 0 < lengths["truncated"] == sum(cut) < len(records)
    if kind == "classification":
        assert lengths["input"]["over"] == sum(cut)
    assert lengths["input"]["min"] <= lengths["input"]["median"] <= lengths["input"]["p95"] <= lengths["input"]["max"]


# --- reports and cleaning on files -----------------------------------------------------------------------


@pytest.fixture
def known_files(tmp_path) -> dict:
    """train.jsonl with 3 exact extra copies (2 groups), 2 one-word edits, 1 conflict; test.jsonl with 2 exact and 1
    near copy of training inputs; a suite of one task whose test split holds 2 training inputs."""
    base = sentences(30, seed=8)
    train = [{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(base)]
    train += [
        {"text": base[0].upper(), "label": "neg"},  # line 31: exact copy of line 1
        {"text": base[0], "label": "neg"},  # line 32: exact copy of line 1
        {"text": base[5], "label": "pos"},  # line 33: exact copy of line 6
        {"text": base[6], "label": "pos"},  # line 34: conflict with line 7 (neg)
        {"text": one_word_edit(base[10]), "label": "neg"},  # line 35: near line 11
        {"text": one_word_edit(base[20]), "label": "neg"},  # line 36: near line 21
    ]
    unrelated = sentences(8, seed=9)
    test = [{"text": t, "label": "pos"} for t in [base[2], base[3].title(), one_word_edit(base[4]), *unrelated]]
    task_data = tmp_path / "tinytask"
    task_data.mkdir()
    write_jsonl(task_data / "test.jsonl", [{"text": t, "label": "pos"} for t in [base[12], base[13], *unrelated[:3]]])
    task = {
        "name": "tinytask",
        "kind": "classification",
        "source": str(task_data),
        "templates": ["{text}"],
        "input_fields": ["text"],
        "label_words": {"positive": ["positive"], "negative": ["negative"], "pos": ["pos"], "neg": ["neg"]},
    }
    (tmp_path / "tinytask.yaml").write_text(yaml.safe_dump(task))
    suite = {"name": "tinysuite", "tasks": [{"task": str(tmp_path / "tinytask.yaml"), "limit": 2}]}
    (tmp_path / "tinysuite.yaml").write_text(yaml.safe_dump(suite))
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", train),
        "test": write_jsonl(tmp_path / "test.jsonl", test),
        "suite": tmp_path / "tinysuite.yaml",
    }


def _report(files: dict, tokenizer=None) -> dict:
    records = read_file(files["train"])
    references = file_references({"test": read_file(files["test"])}, [str(files["suite"])], FIELDS)
    return file_report(str(files["train"]), records, "encoder", DataConfig(), references, tokenizer)


def test_the_report_on_a_file_with_known_problems_counts_each(known_files, tokenizer_dir):
    report = _report(known_files, load_tokenizer(str(tokenizer_dir)))
    (found,) = report["tasks"].values()
    where = f"{known_files['train']}:"
    assert found["records"] == 36
    assert found["exact_duplicates"]["groups"] == 2 and found["exact_duplicates"]["extra"] == 3
    assert [where + "1", where + "31", where + "32"] in found["exact_duplicates"]["examples"]
    assert (
        found["near_duplicates"]["groups"] == 5 and found["near_duplicates"]["extra"] == 6
    )  # 2 edits, 3 copies, 1 conflict
    assert found["conflicts"]["inputs"] == 1 and found["conflicts"]["records"] == 2
    assert found["labels"]["counts"] == {"neg": 19, "pos": 17} and found["labels"]["imbalance"] == 19 / 17
    assert found["labels"]["absent"] == {"test": ["neg"]}  # the test file has positive reviews only
    assert found["lengths"]["input"]["limit"] == 256 and found["lengths"]["truncated"] == 0
    test = found["overlap"]["test"]
    assert (test["overlapping"], test["exact"], test["near"], test["records_hit"]) == (3, 2, 1, 3)
    suite = found["overlap"]["tinysuite: tinytask"]
    assert suite["kind"] == "suite" and suite["records"] == 5  # the whole evaluated split, not the limit's draw
    assert (suite["overlapping"], suite["exact"], suite["near"]) == (2, 2, 0)
    assert report["contamination"] == report["warnings"][1:]
    assert len(report["contamination"]) == 2 and "tinysuite: tinytask" in report["contamination"][1]
    assert "label(s) 'neg' never appear in test" in report["warnings"][0]


@pytest.mark.parametrize("dedup", ["exact", "near"])
def test_cleaning_removes_exactly_what_the_report_counts(dedup, known_files):
    records = read_file(known_files["train"])
    (found,) = _report(known_files)["tasks"].values()
    cleaned = clean(records, FIELDS, dedup)
    counted = found["exact_duplicates" if dedup == "exact" else "near_duplicates"]["extra"]
    assert len(cleaned.removed) == counted and len(cleaned.kept) == len(records) - counted
    lines = {int(r.record.where.rsplit(":", 1)[1]) for r in cleaned.removed}
    assert lines == ({31, 32, 33} if dedup == "exact" else {31, 32, 33, 34, 35, 36})
    of = {r.record.where.rsplit(":", 1)[1]: (r.reason, r.of.rsplit(":", 1)[1]) for r in cleaned.removed}
    assert of["31"] == ("duplicate", "1") and of["33"] == ("duplicate", "6")
    if dedup == "near":
        assert of["35"] == ("near_duplicate", "11") and of["34"] == ("near_duplicate", "7")
        assert all(
            0.8 <= r.similarity < 1
            for r in cleaned.removed
            if r.reason == "near_duplicate" and r.record.where.endswith(("35", "36"))
        )


def test_overlapping_records_are_removed_first_and_named_by_the_set_they_overlap(known_files):
    records = read_file(known_files["train"])
    test = examples_of(read_file(known_files["test"]), FIELDS)
    cleaned = clean(records, FIELDS, "exact", {"test": test})
    overlapping = [r for r in cleaned.removed if r.reason == "overlap"]
    assert [r.record.where.rsplit(":", 1)[1] for r in overlapping] == ["3", "4", "5"]
    assert {r.against for r in overlapping} == {"test"}
    assert overlapping[0].of == f"{known_files['test']}:1"
    assert cleaned.notes == ["3 record(s) removed that overlap test", "3 exact duplicate(s) removed"]


def test_load_task_data_cleans_before_capping_and_notes_what_it_removed(known_files, tmp_path):
    config = build_config(
        {
            "data": {
                "train": str(known_files["train"]),
                "test": str(known_files["test"]),
                "validation": str(known_files["test"]),
                "dedup": "exact",
                "drop_overlap": True,
                "max_train_examples": 30,
            },
            "eval": {"retention_suite": str(known_files["suite"])},
        }
    )
    data = load_task_data(config)
    reasons = [(r.reason, r.against) for r in data.removed]
    assert reasons.count(("duplicate", None)) == 3
    assert {against for reason, against in reasons if reason == "overlap"} == {"validation", "tinysuite: tinytask"}
    assert len(data.removed) == 3 + 3 + 2  # duplicates, test/validation overlap (found in validation first), suite
    assert len(data.train) == 28  # 36 - 8 removed, below the cap of 30
    assert any("3 exact duplicate(s) removed" in note for note in data.notes)
    assert any("2 record(s) removed that overlap tinysuite: tinytask" in note for note in data.notes)


def test_data_check_prints_the_report_after_the_validation_line(known_files, capsys):
    status = cli(f"data check {known_files['train']} --against {known_files['test']} --suite {known_files['suite']}")
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith(f"{known_files['train']}: 36 valid records")
    assert "exact duplicates: 2 group(s), 3 extra record(s)" in out
    assert "conflicting answers: 1 input(s) over 2 record(s)" in out
    assert "labels: neg 19 (52.8%), pos 17 (47.2%); majority/minority 1.12" in out
    assert f"| {known_files['test']} | file | 11 | 3 | 2 | 1 | 3 |" in out
    assert "**Warning:**" in out and "tinysuite: tinytask" in out


def test_data_clean_writes_a_cleaned_copy_its_report_and_the_removed_records(known_files, tmp_path, capsys):
    output = tmp_path / "out" / "clean.jsonl"
    before = known_files["train"].read_bytes()
    status = cli(
        f"data clean {known_files['train']} --output {output} --dedup near --against {known_files['test']} "
        f"--suite {known_files['suite']}"
    )
    assert status == 0, capsys.readouterr().err
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    removed = [json.loads(line) for line in (tmp_path / "out" / "clean.removed.jsonl").read_text().splitlines()]
    assert len(kept) + len(removed) == 36 and len(removed) == 3 + 2 + 6
    original = [json.loads(line) for line in before.decode().splitlines()]
    assert [r["record"] for r in removed] == [original[int(r["where"].rsplit(":", 1)[1]) - 1] for r in removed]
    assert kept == [
        row for i, row in enumerate(original) if f"{known_files['train']}:{i + 1}" not in {r["where"] for r in removed}
    ]
    report = json.loads((tmp_path / "out" / "clean.report.json").read_text())
    assert report["cleaning"]["kept"] == len(kept) and report["cleaning"]["removed"] == len(removed)
    assert (tmp_path / "out" / "clean.report.md").read_text().startswith("# Data report")
    assert known_files["train"].read_bytes() == before
    assert f"wrote {output} ({len(kept)} records)" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["train", "test"])
def test_data_clean_refuses_to_overwrite_an_input(target, known_files, capsys):
    before = known_files[target].read_bytes()
    status = cli(f"data clean {known_files['train']} --output {known_files[target]} --against {known_files['test']}")
    assert status == 2
    assert "is an input" in capsys.readouterr().err
    assert known_files[target].read_bytes() == before


# --- training runs -------------------------------------------------------------------------------------------


def test_a_run_saves_its_data_report_and_its_card_names_the_contaminated_retention_suite(
    tiny_encoder, known_files, tmp_path, capsys
):
    config = classification_config(tiny_encoder, known_files["train"], tmp_path / "runs", epochs=1)
    config.data.test, config.data.validation = str(known_files["test"]), str(known_files["test"])
    config.eval.retention_suite = str(known_files["suite"])
    run = pipeline.train(config)
    assert "# Data report" in capsys.readouterr().out
    report = json.loads((run.path / "data" / "report.json").read_text())
    (found,) = report["tasks"].values()
    assert found["overlap"]["tinysuite: tinytask"]["overlapping"] == 2 and found["overlap"]["test"]["overlapping"] == 3
    assert found["lengths"]["input"]["limit"] == 32
    assert (run.path / "data" / "report.md").exists() and not (run.path / "data" / "removed.jsonl").exists()
    card = run.card_path.read_text()
    assert "## Contamination" in card
    assert "overlap 2 of the 5 records of tinysuite: tinytask" in card and "records of test;" in card


def test_a_cleaning_run_writes_what_it_removed_and_its_card_has_no_contamination(tiny_decoder, known_files, tmp_path):
    qa = {
        split: write_jsonl(
            tmp_path / f"qa-{split}.jsonl",
            [{"question": r.fields["text"], "answer": r.fields["label"]} for r in read_file(known_files[split])],
        )
        for split in ("train", "test")
    }
    config = generation_config(tiny_decoder, qa["train"], tmp_path / "runs", max_steps=2)
    config.data.test, config.data.validation = str(qa["test"]), str(qa["test"])
    config.data.dedup, config.data.drop_overlap = "near", True
    config.eval.retention_suite, config.eval.retention_limit = str(known_files["suite"]), 2
    run = pipeline.train(config)
    removed = [json.loads(line) for line in (run.path / "data" / "removed.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in removed) == {"overlap": 3 + 2, "duplicate": 3, "near_duplicate": 3}
    report = json.loads((run.path / "data" / "report.json").read_text())
    assert report["warnings"] == [] and report["cleaning"]["removed"] == len(removed)
    (found,) = report["tasks"].values()
    assert found["near_duplicates"]["groups"] == 0
    card = run.card_path.read_text()
    assert "## Contamination" not in card and "near-duplicate(s) removed" in card


def test_a_language_modelling_run_dedups_its_raw_texts_before_packing_them(tiny_decoder, tmp_path):
    bodies = sentences(30, seed=10)
    train = write_jsonl(
        tmp_path / "domain.jsonl", [{"body": t} for t in [*bodies, bodies[3], bodies[3].upper(), bodies[9]]]
    )
    config = build_config(
        {
            "task_type": "language_modeling",
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": tiny_decoder},
            "data": {"train": str(train), "text_field": "body", "max_length": 32, "dedup": "exact"},
            "method": {"name": "full"},
            "training": {"max_steps": 2, "batch_size": 8, "precision": "fp32"},
        }
    )
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"body": t} for t in sentences(4, seed=12)])
    config.data.validation, config.data.test = str(held_out), str(held_out)
    run = pipeline.train(config)
    removed = [json.loads(line) for line in (run.path / "data" / "removed.jsonl").read_text().splitlines()]
    assert [(r["where"].rsplit(":", 1)[1], r["reason"], r["of"].rsplit(":", 1)[1]) for r in removed] == [
        ("31", "duplicate", "4"),
        ("32", "duplicate", "4"),
        ("33", "duplicate", "10"),
    ]
    report = json.loads((run.path / "data" / "report.json").read_text())
    (found,) = report["tasks"].values()
    assert found["exact_duplicates"]["groups"] == 0 and found["labels"] is None and found["conflicts"]["inputs"] == 0
    assert found["lengths"]["truncated"] is None and found["lengths"]["input"]["limit"] == 32
    assert "packed into blocks, nothing truncated" in (run.path / "data" / "report.md").read_text()


def test_data_check_reads_raw_text_for_language_modelling(tmp_path, capsys):
    bodies = sentences(5, seed=11)
    path = write_jsonl(tmp_path / "raw.jsonl", [{"body": t} for t in [*bodies, bodies[0].title()]])
    assert cli(f"data check {path} --kind language_modeling data.text_field=body") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: 6 valid records for data.kind language_modeling")
    assert "exact duplicates: 1 group(s), 1 extra record(s)" in out and "labels:" not in out


@pytest.mark.parametrize("setting", [{"dedup": "near"}, {"drop_overlap": True}])
def test_a_mixture_refuses_the_cleaning_it_would_not_apply(setting):
    mixture = {"task_type": "causal_lm", "mixture": {"tasks": [{"task": "sst2"}]}}
    build_config(mixture)  # the same mixture without the setting is valid
    with pytest.raises(ConfigError, match="tunelab data clean"):
        build_config({**mixture, "data": setting})


# --- label mistakes: every distinct label is a class ------------------------------------------------------------


def _typo_labels(tmp_path) -> dict:
    """20 positive and 20 negative reviews, one 'Positive' and one 'neutral' (two typos that become classes), and a
    test file with positive and negative reviews only."""
    train = [
        {"text": f"review {i} " + sentences(1, i, 8)[0], "label": ("positive", "negative")[i % 2]} for i in range(40)
    ]
    train += [{"text": "a fine film", "label": "Positive"}, {"text": "an average film", "label": "neutral"}]
    test = [{"text": f"test review {i}", "label": ("positive", "negative")[i % 2]} for i in range(6)]
    return {"train": write_jsonl(tmp_path / "train.jsonl", train), "test": write_jsonl(tmp_path / "test.jsonl", test)}


def test_data_check_warns_about_labels_differing_in_case_rare_and_absent_from_the_test_file(tmp_path, capsys):
    files = _typo_labels(tmp_path)
    assert cli(f"data check {files['train']} --against {files['test']}") == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("**Warning:**")]
    name = str(files["train"])
    assert f"**Warning:** {name}: labels 'positive', 'Positive' differ only in case or spacing" in warnings[0]
    assert f"{name}: label 'Positive' has only 1 training record(s)" in warnings[1]
    assert f"{name}: label 'neutral' has only 1 training record(s)" in warnings[2]
    assert f"{name}: label(s) 'neutral' never appear in {files['test']}" in warnings[3]
    assert "pin the label set, e.g. data.labels='[negative, positive]'" in warnings[3]
    assert len(warnings) == 4


def test_pinned_labels_make_a_typo_an_error_and_an_unused_pinned_label_a_warning(tmp_path, capsys):
    files = _typo_labels(tmp_path)
    assert cli(f"data check {files['train']} data.labels='[negative, positive]'") == 2
    assert f"{files['train']}:41: field 'label': label 'Positive' is not in the label set" in capsys.readouterr().err
    assert cli(f"data check {files['test']} data.labels='[negative, positive, neutral]'") == 0
    assert "data.labels lists 'neutral', which no training record has" in capsys.readouterr().out


def test_a_run_records_its_label_warnings_at_the_start_and_its_card_keeps_contamination_apart(tiny_encoder, tmp_path):
    files = _typo_labels(tmp_path)
    config = classification_config(tiny_encoder, files["train"], tmp_path / "runs", max_steps=1)
    config.data.test = str(files["test"])
    config.eval.baselines = []
    run = pipeline.train(config)
    warnings = run.state()["data_warnings"]
    assert any("labels 'positive', 'Positive' differ only in case" in warning for warning in warnings)
    assert run.state()["contamination"] == [] and "## Contamination" not in run.card_path.read_text()
