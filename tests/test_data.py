"""Data reading, validation, splitting and the `data check` command: errors name file, line and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.config import build_config
from tunelab.data.readers import find_split_files, read_file, read_source
from tunelab.data.splits import load_task_data
from tunelab.data.validate import SHOWN_PROBLEMS, check_records, enforce
from tunelab.kinds import kind_named, kind_of_run
from tunelab.records import DataError
from tunelab.render import template_fields

LABELS = ("neg", "pos")


def rows(count: int, start: int = 0) -> list[dict]:
    return [{"text": f"review number {i}", "label": LABELS[i % 2]} for i in range(start, start + count)]


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON value per line; a str item is written as it is (for malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def config(task: str = "classification", **data):
    return build_config({"task": task, "data": data})


def problems_in(path: Path, labels=LABELS, task: str = "classification", **data) -> list[str]:
    cfg = config(task, **data)
    return check_records(read_file(path), kind_of_run(cfg), cfg.data, list(labels) if labels else None).problems


def only_problem(path: Path, **kwargs) -> str:
    found = problems_in(path, **kwargs)
    assert len(found) == 1, found
    return found[0]


def split_files(tmp_path: Path, train: list, validation: list | None = None, test: list | None = None) -> dict:
    """Write train/validation/test JSONL files; returns data.* settings naming them."""
    data = {"train": str(write_jsonl(tmp_path / "train.jsonl", train))}
    data["validation"] = str(
        write_jsonl(tmp_path / "valid.jsonl", validation if validation is not None else rows(4, 1000))
    )
    data["test"] = str(write_jsonl(tmp_path / "test.jsonl", test if test is not None else rows(4, 2000)))
    return data


# --- every invalid record is reported with file, line and field ---------------------------------------


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [rows(1)[0], '{"text": "unfinished", "label": ', rows(1)[0]])
    problem = only_problem(path)
    assert problem.startswith(f"{path}:2: ")
    assert "malformed JSON" in problem


def test_json_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*rows(2), '["review", "pos"]'])
    problem = only_problem(path)
    assert problem.startswith(f"{path}:3: ")
    assert "expected a JSON object, got list" in problem


def test_non_utf8_bytes_in_jsonl_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b'{"text": "fine", "label": "pos"}\n{"text": "caf\xff", "label": "neg"}\n{"text": "ok", "label": "neg"}\n'
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}:2: ")
    assert "not valid UTF-8 (byte 0xff" in problem


def test_utf8_bom_at_start_of_jsonl_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows(2)).encode("utf-8"))
    records = read_file(path)
    assert [r.problem for r in records] == [None, None]
    assert records[0].fields == rows(2)[0]


def test_blank_lines_are_not_records_but_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rows(1)[0]) + "\n\n   \n" + json.dumps({"label": "pos"}) + "\n\n", encoding="utf-8")
    assert len(read_file(path)) == 2
    assert only_problem(path).startswith(f"{path}:4: ")


def test_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*rows(3), {"label": "pos", "body": "wrong field name"}])
    problem = only_problem(path)
    assert problem.startswith(f"{path}:4: ")
    assert "field 'text' is missing" in problem
    assert "fields present: body, label" in problem


def test_a_column_no_record_has_is_one_error_naming_the_columns_and_the_override(tmp_path):
    """200 records without the label column: one message with the file's columns and the setting to change."""
    path = write_csv(tmp_path / "d.csv", [{"text": f"review {i}", "sentiment": LABELS[i % 2]} for i in range(200)])
    with pytest.raises(DataError) as info:
        problems_in(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no record has field 'label' (data.label_field; all 200 records checked)")
    assert "the file's columns are: sentiment, text" in message and "e.g. data.label_field=sentiment" in message
    assert ":2:" not in message


def test_null_field_counts_as_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a review", "label": None}, *rows(2)])
    problem = only_problem(path)
    assert problem.startswith(f"{path}:1: ")
    assert "field 'label' is missing" in problem


def test_empty_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [rows(1)[0], {"text": "  \t ", "label": "pos"}])
    problem = only_problem(path)
    assert problem.startswith(f"{path}:2: ")
    assert "field 'text' is empty" in problem


def test_custom_field_names_are_checked(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"premise": "p", "hypothesis": "h", "y": "pos"}, {"premise": "p", "y": "neg"}]
    )
    problem = only_problem(path, text_field="premise", text_pair_field="hypothesis", label_field="y")
    assert problem.startswith(f"{path}:2: ")
    assert "field 'hypothesis' is missing" in problem


def test_label_outside_configured_label_set(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*rows(2), {"text": "so-so", "label": "neutral"}])
    problem = only_problem(path)
    assert problem.startswith(f"{path}:3: ")
    assert "field 'label'" in problem
    assert "label 'neutral' is not in the label set" in problem


def test_label_outside_configured_set_fails_the_run(tmp_path):
    data = split_files(tmp_path, [*rows(10), {"text": "so-so", "label": "neutral"}])
    with pytest.raises(DataError) as info:
        load_task_data(build_config({"data": {**data, "labels": list(LABELS)}}))
    message = str(info.value)
    assert "1 invalid record(s) in train data" in message
    assert f"{data['train']}:11: field 'label': label 'neutral'" in message


def test_validation_label_not_seen_in_train(tmp_path):
    validation = [*rows(2, 100), {"text": "meh", "label": "neutral"}]
    data = split_files(tmp_path, rows(10), validation=validation)
    with pytest.raises(DataError) as info:
        load_task_data(build_config({"data": data}))
    message = str(info.value)
    assert "1 invalid record(s) in validation data" in message
    assert f"{data['validation']}:3: field 'label': label 'neutral' is not in the label set" in message


def test_generation_template_fields_are_required(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, {"query": "q", "answer": "a"}])
    problem = only_problem(
        path, labels=None, task="causal_lm", prompt_template="Q: {question}", response_field="answer"
    )
    assert problem.startswith(f"{path}:2: ")
    assert "field 'question' is missing" in problem


def test_required_fields_for_prediction_leave_out_the_target():
    data = config("seq2seq", prompt_template="{context} {question}").data
    assert kind_named("generation").run_fields(data, with_target=True) == [
        "context",
        "question",
        data.response_field,
    ]
    assert kind_named("generation").run_fields(data, with_target=False) == ["context", "question"]
    assert data.label_field not in kind_named("classification").run_fields(config().data, with_target=False)


def test_csv_row_with_more_columns_than_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood film,pos\nbad, film,neg\nfine,pos\n", encoding="utf-8")
    problem = only_problem(path)
    assert problem.startswith(f"{path}:3: ")
    assert "more columns than the header's 2" in problem


def test_csv_line_numbers_count_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",pos\n\n"after a blank",neg\nbad,row,extra\n', encoding="utf-8")
    records = read_file(path)
    assert [r.where for r in records] == [f"{path}:2", f"{path}:5", f"{path}:6"]
    assert records[0].fields["text"] == "two\nlines"
    assert only_problem(path).startswith(f"{path}:6: ")


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ngood,pos\ncaf\xe9 latte,neg\n")
    with pytest.raises(DataError) as info:
        read_file(path)
    assert str(info.value).startswith(f"{path}:3: not valid UTF-8 (byte 0xe9)")


# --- nothing is silently dropped ----------------------------------------------------------------------


def mixed_train(tmp_path) -> tuple[dict, int]:
    """12 valid records with 3 invalid ones at lines 3, 7 and 11."""
    train = rows(12)
    train.insert(2, {"label": "pos"})
    train.insert(6, "{not json")
    train.insert(10, {"text": " ", "label": "neg"})
    return split_files(tmp_path, train), 12


def test_invalid_records_fail_by_default(tmp_path):
    data, _ = mixed_train(tmp_path)
    with pytest.raises(DataError) as info:
        load_task_data(build_config({"data": data}))
    message = str(info.value)
    assert "3 invalid record(s) in train data" in message
    for line, what in ((3, "field 'text' is missing"), (7, "malformed JSON"), (11, "field 'text' is empty")):
        assert f"{data['train']}:{line}: {what}" in message
    assert "data.skip_invalid=true" in message


def test_skip_invalid_skips_and_reports(tmp_path, capsys):
    data, valid = mixed_train(tmp_path)
    task = load_task_data(build_config({"data": {**data, "skip_invalid": True}}))
    assert len(task.train) == valid
    assert [r.fields for r in task.train] == rows(12)
    assert all(r.problem is None for r in task.train)
    out = capsys.readouterr().out
    assert "skipped 3 invalid record(s) in train data" in out
    for line in (3, 7, 11):
        assert f"{data['train']}:{line}:" in out


def test_many_invalid_records_are_counted_beyond_the_listing(tmp_path, capsys):
    bad = SHOWN_PROBLEMS + 3
    path = write_jsonl(tmp_path / "d.jsonl", [*rows(4), *[{"text": "", "label": "pos"}] * bad])
    checked = check_records(read_file(path), kind_named("classification"), config().data, list(LABELS))
    with pytest.raises(DataError) as info:
        enforce(checked, "train data", skip_invalid=False)
    assert f"{bad} invalid record(s) in train data" in str(info.value)
    assert f"... and {bad - SHOWN_PROBLEMS} more" in str(info.value)
    assert f"{path}:5:" in str(info.value)  # the first invalid line is listed
    assert len(enforce(checked, "train data", skip_invalid=True)) == 4
    out = capsys.readouterr().out
    assert f"skipped {bad} invalid record(s)" in out and f"{path}:5:" in out


def test_skipped_records_do_not_add_inferred_labels(tmp_path, capsys):
    train = [*rows(10), {"text": "", "label": "neutral"}, {"label": "neutral"}]
    task = load_task_data(build_config({"data": {**split_files(tmp_path, train), "skip_invalid": True}}))
    assert task.labels == sorted(LABELS)
    assert "skipped 2 invalid record(s) in train data" in capsys.readouterr().out


def test_classifier_needs_two_labels(tmp_path):
    data = split_files(tmp_path, [{"text": f"t{i}", "label": "pos"} for i in range(5)])
    with pytest.raises(DataError) as info:
        load_task_data(build_config({"data": data}))
    assert f"{data['train']}: field 'label' has 1 distinct label(s)" in str(info.value)


# --- readers ------------------------------------------------------------------------------------------


def test_jsonl_csv_and_parquet_read_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [*rows(5), {"text": 'quotes " and, commas', "label": "pos"}, {"text": "ünïcödé ✓", "label": "neg"}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", data)
    csv_path = write_csv(tmp_path / "d.csv", data)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(data), parquet)
    by_format = {p.suffix: read_file(p) for p in (jsonl, csv_path, parquet)}
    for suffix, records in by_format.items():
        assert [r.fields for r in records] == data, suffix
        assert all(r.problem is None for r in records)
    assert by_format[".jsonl"][0].where == f"{jsonl}:1"
    assert by_format[".csv"][0].where == f"{csv_path}:2"  # line 1 is the header
    assert [r.where for r in by_format[".parquet"][:2]] == [f"{parquet}:row 1", f"{parquet}:row 2"]


def test_directory_of_split_files(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows(10))
    write_jsonl(folder / "dev.jsonl", rows(3, 100))
    write_csv(folder / "test.csv", rows(4, 200))
    assert set(find_split_files(folder)) == {"train", "validation", "test"}
    task = load_task_data(build_config({"data": {"train": str(folder)}}))
    assert [r.fields for r in task.train] == rows(10)
    assert [r.fields for r in task.validation] == rows(3, 100)
    assert [r.fields for r in task.test] == rows(4, 200)
    assert task.validation[0].where == f"{folder / 'dev.jsonl'}:1"
    assert task.test[0].where == f"{folder / 'test.csv'}:2"
    assert not any("split from train" in note for note in task.notes)


def test_directory_with_only_train_carves_the_rest(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows(20))
    task = load_task_data(build_config({"data": {"train": str(folder)}}))
    assert len(task.train) + len(task.validation) + len(task.test) == 20
    assert any(note.startswith("validation:") and "split from train" in note for note in task.notes)
    assert any(note.startswith("test:") and "split from train" in note for note in task.notes)


def test_directory_without_split_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_source(str(tmp_path))
    assert f"directory {tmp_path} holds no split files" in str(info.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError) as info:
        read_file(tmp_path / "absent.jsonl")
    assert f"data file {tmp_path / 'absent.jsonl'} does not exist" in str(info.value)
    odd = tmp_path / "data.txt"
    odd.write_text("x", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_file(odd)
    assert f"{odd}: unsupported file type '.txt'" in str(info.value)


def test_missing_train_setting():
    with pytest.raises(DataError, match="data.train is not set"):
        load_task_data(build_config({}))


# --- deterministic splits -----------------------------------------------------------------------------


def carved(tmp_path, count: int = 100, **data):
    train = write_jsonl(tmp_path / "all.jsonl", rows(count))
    return load_task_data(build_config({"data": {"train": str(train), **data}}))


def texts(records) -> list[str]:
    """The text of each record (a Record or a plain dict row)."""
    return [(r if isinstance(r, dict) else r.fields)["text"] for r in records]


def test_same_seed_gives_identical_splits(tmp_path):
    first, second = carved(tmp_path, split_seed=7), carved(tmp_path, split_seed=7)
    for split in ("train", "validation", "test"):
        assert texts(getattr(first, split)) == texts(getattr(second, split))


def test_different_seed_gives_different_splits(tmp_path):
    first, second = carved(tmp_path, split_seed=0), carved(tmp_path, split_seed=1)
    assert set(texts(first.validation)) != set(texts(second.validation))
    assert set(texts(first.test)) != set(texts(second.test))


def test_splits_partition_the_valid_records(tmp_path):
    task = carved(tmp_path)
    parts = [set(texts(task.train)), set(texts(task.validation)), set(texts(task.test))]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert parts[0] | parts[1] | parts[2] == set(texts(rows(100)))
    assert sum(map(len, parts)) == 100
    # the kept train records stay in file order
    assert texts(task.train) == [t for t in texts(rows(100)) if t in parts[0]]


@pytest.mark.parametrize(
    "count, validation_fraction, test_fraction", [(100, 0.2, 0.1), (100, 0.1, 0.1), (37, 0.15, 0.25)]
)
def test_split_fractions_respected(tmp_path, count, validation_fraction, test_fraction):
    task = carved(tmp_path, count, validation_fraction=validation_fraction, test_fraction=test_fraction)
    assert len(task.validation) == round(count * validation_fraction)
    assert len(task.test) == round(count * test_fraction)
    assert len(task.train) == count - len(task.validation) - len(task.test)
    assert f"validation: {len(task.validation)} records split from train" in " ".join(task.notes)


def test_given_validation_only_carves_test(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows(50))
    validation = write_jsonl(tmp_path / "valid.jsonl", rows(5, 500))
    task = load_task_data(
        build_config({"data": {"train": str(train), "validation": str(validation), "test_fraction": 0.2}})
    )
    assert texts(task.validation) == texts(rows(5, 500))
    assert len(task.test) == 10 and len(task.train) == 40
    assert not any(note.startswith("validation:") for note in task.notes)


# --- caps ---------------------------------------------------------------------------------------------


def test_example_caps_applied_and_noted(tmp_path):
    data = split_files(tmp_path, rows(30), validation=rows(12, 100), test=rows(9, 200))
    task = load_task_data(build_config({"data": {**data, "max_train_examples": 5, "max_eval_examples": 4}}))
    assert texts(task.train) == texts(rows(5))  # the first N, in order
    assert texts(task.validation) == texts(rows(4, 100))
    assert texts(task.test) == texts(rows(4, 200))
    notes = "\n".join(task.notes)
    assert "train: first 5 of 30 records used" in notes
    assert "validation: first 4 of 12 records used" in notes
    assert "test: first 4 of 9 records used" in notes


def test_caps_larger_than_data_change_nothing(tmp_path):
    data = split_files(tmp_path, rows(6))
    task = load_task_data(build_config({"data": {**data, "max_train_examples": 100, "max_eval_examples": 100}}))
    assert len(task.train) == 6 and len(task.validation) == 4 and len(task.test) == 4
    assert task.notes == []


# --- templates ----------------------------------------------------------------------------------------


def test_template_fields_in_order_of_first_use():
    assert template_fields("{a} and {b} {a}") == ["a", "b"]
    assert template_fields("Summarise:\n{dialogue}\n{{literal braces}} {topic!r:>10}") == ["dialogue", "topic"]
    assert template_fields("no fields here") == []


@pytest.mark.parametrize("template", ["{} and {}", "Q: {0}", "{a.b}"])
def test_template_placeholder_must_name_a_field(template):
    with pytest.raises(ValueError, match="must name a record field"):
        template_fields(template)


# --- `tunelab data check` -----------------------------------------------------------------------------


def test_data_check_valid_file(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", rows(7))
    assert main(["data", "check", str(path), "--task", "classification"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 7 valid records" in out
    assert "'neg', 'pos'" in out


def test_data_check_invalid_file(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [*rows(4), {"label": "pos"}, rows(1)[0]])
    assert main(["data", "check", str(path), "--task", "classification"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:5: field 'text' is missing" in err
    assert "1 invalid record(s)" in err


def test_data_check_field_mapping_override(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": f"s{i}", "label": LABELS[i % 2]} for i in range(4)])
    assert main(["data", "check", str(path), "--task", "classification"]) == 2
    assert "e.g. data.text_field=sentence" in capsys.readouterr().err
    assert main(["data", "check", str(path), "--task", "classification", "data.text_field=sentence"]) == 0
    assert f"{path}: 4 valid records" in capsys.readouterr().out


def test_data_check_non_utf8_csv(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ngood,pos\nbad\xff,neg\n")
    assert main(["data", "check", str(path), "--task", "classification"]) == 2
    assert f"{path}:3: not valid UTF-8" in capsys.readouterr().err


# --- inputs that once crashed or misled (found by tests/test_input_properties.py and the report) ----


@pytest.mark.parametrize(
    "name, content, why",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.jsonl", b"\n\n  \n", "only blank lines"),
        ("header.csv", b"text,label\n", "a header"),
        ("empty.json", b"[]", "an empty list"),
    ],
)
def test_a_file_without_records_says_so(name, content, why, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path} holds no records .*{why}"):
        read_file(path)
    assert main(["data", "check", str(path)]) == 2
    assert f"{path} holds no records" in capsys.readouterr().err


def test_a_repeated_csv_column_is_an_error_not_a_lost_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\na,pos,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:1: .*'text' more than once"):
        read_file(path)


def test_a_long_csv_field_is_a_record(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"text": "word " * 40_000, "label": "pos"}])  # past csv's 128 KiB default
    assert len(read_file(path)[0].fields["text"]) == 200_000


def test_deeply_nested_json_is_a_problem_not_a_crash(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "label": "pos"}, deep])
    assert read_file(path)[1].problem == "JSON nested too deeply to read"
    array = tmp_path / "d.json"
    array.write_text(deep)
    with pytest.raises(DataError, match="nested too deeply"):
        read_file(array)


def test_a_file_that_is_not_parquet_names_the_file(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=f"{path}: not a readable Parquet file"):
        read_file(path)


@pytest.mark.parametrize(
    "value, problem",
    [
        (["a", "b"], "holds a list, not text"),
        ({"a": 1}, "holds a dict, not text"),
        ("caf\ud800", "is not valid text (a lone surrogate '\\ud800' at character 4)"),
    ],
)
def test_fields_that_are_not_text_are_named(value, problem, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": value, "label": "positive"}) + "\n", encoding="utf-8")
    assert only_problem(path) == f"{path}:1: field 'text' {problem}"


@pytest.mark.parametrize("template", ["{x:d}", "{x!z}"])
def test_a_template_text_cannot_fill_is_refused(template):
    with pytest.raises(ValueError):
        template_fields(template)


# --- predict reads its input as a run reads its data ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_encoder, tmp_path_factory):
    from tunelab import pipeline

    folder = tmp_path_factory.mktemp("predict-inputs")
    config = build_config(
        {
            "name": "tiny-predict",
            "output_dir": str(folder / "runs"),
            "model": {"name": tiny_encoder},
            "data": {"train": str(write_jsonl(folder / "train.jsonl", rows(24))), "max_length": 32},
            "training": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
            "eval": {"baselines": []},
        }
    )
    return pipeline.train(config).path


def test_predict_takes_data_overrides_for_another_column_and_skipping_invalid_records(tiny_run, tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "a fine film"}, {"sentence": "  "}, {"sentence": "dull"}])
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(tiny_run), "--input", str(path), "--output", str(out)]) == 2
    assert "e.g. data.text_field=sentence" in capsys.readouterr().err
    assert (
        main(["predict", str(tiny_run), "--input", str(path), "--output", str(out), "data.text_field=sentence"]) == 2
    )
    assert f"{path}:2: field 'text' is empty" in capsys.readouterr().err
    command = ["predict", str(tiny_run), "data.text_field=sentence", "--input", str(path), "--output", str(out)]
    assert main([*command, "data.skip_invalid=true"]) == 0
    assert f"skipped 1 invalid record(s) in {path}" in capsys.readouterr().out
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["sentence"] for row in written] == ["a fine film", "dull"]
    assert all(row["prediction"] in LABELS for row in written)


def test_predict_reads_a_text_file_one_text_per_line(tiny_run, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("a fine film\n\nrather dull\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(tiny_run), "--input", str(path), "--output", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in written] == ["a fine film", "rather dull"]


def test_predict_refuses_overrides_that_do_not_read_input(tiny_run, tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", rows(2))
    command = ["predict", str(tiny_run), "--input", str(path), "--output", str(tmp_path / "o.jsonl")]
    assert main([*command, "training.epochs=2"]) == 2
    assert "predict takes the overrides data.text_field" in capsys.readouterr().err
