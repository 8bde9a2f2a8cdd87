"""The kinds of example: one registry, one line to register a kind, and old task kinds read with one note."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tunelab.config import DataConfig
from tunelab.kinds import KINDS, KindError, kind_named, register_kind
from tunelab.kinds.base import Kind
from tunelab.kinds.classification import Classification
from tunelab.tasks import TaskSpec, builtin_tasks, load_task


class Echo(Classification):
    """A toy kind defined here, in the test file: classification whose label is the record's text."""

    name = "echo"

    def target(self, spec, record):
        return str(record.fields[spec.input_fields[0]])


def test_a_kind_defined_in_a_test_registers_in_one_line_and_a_task_uses_it(monkeypatch):
    monkeypatch.setattr("tunelab.kinds.KINDS", dict(KINDS))
    from tunelab import kinds

    register_kind(Echo)
    assert kind_named("echo") is kinds.KINDS["echo"]
    spec = TaskSpec(name="t", kind="echo", source="x", input_fields=["text"], label_words={"a": ["a"]})
    assert spec.handler is kinds.KINDS["echo"] and spec.metrics == ["accuracy"]


def test_a_name_taken_twice_is_refused(monkeypatch):
    monkeypatch.setattr("tunelab.kinds.KINDS", dict(KINDS))
    with pytest.raises(KindError, match="'classification' is already registered"):
        register_kind(Classification)


def test_a_kind_missing_a_method_or_not_a_kind_is_refused(monkeypatch):
    monkeypatch.setattr("tunelab.kinds.KINDS", dict(KINDS))

    class Half(Kind):
        name, needs, primary_metric, inline_metrics = "half", (), "accuracy", ("accuracy",)

        def parse(self, spec, outputs, records):
            return outputs

    with pytest.raises(KindError, match="kind Half is incomplete: it must supply answer_field, collator") as refused:
        register_kind(Half)
    assert "parse" not in str(refused.value)
    with pytest.raises(KindError, match="not a kind of example"):
        register_kind(SimpleNamespace(name="x"))
    assert "half" not in KINDS


def test_an_unknown_kind_names_the_closest():
    with pytest.raises(KindError, match="Did you mean 'tagging'"):
        kind_named("taging")


def test_a_task_of_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown kind of example 'clasification'. Did you mean 'classification'"):
        TaskSpec(name="t", kind="clasification", source="x")


@pytest.mark.parametrize(
    ("old", "kind", "metric"),
    [
        ("summarisation", "generation", "rougeL"),
        ("translation", "generation", "bleu"),
        ("qa", "generation", "squad_f1"),
    ],
)
def test_old_kind_names_load_as_their_kind_with_their_old_metric_and_one_note(old, kind, metric, capsys):
    spec = TaskSpec(name="t", kind=old, source="x", templates=["{q}"], input_fields=["q"], reference_field="a")
    assert (spec.kind, spec.metrics) == (kind, [metric])
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and note.startswith("note:") and f"kind: {kind}" in note


def test_ner_loads_as_tagging_and_metrics_a_file_names_are_kept(capsys):
    spec = TaskSpec(name="t", kind="ner", source="x", templates=["{tokens}"], metrics=["entity_recall"])
    assert (spec.kind, spec.metrics) == ("tagging", ["entity_recall"])
    assert "kind: tagging" in capsys.readouterr().out


def test_builtin_tasks_use_the_kind_names_and_print_no_note(capsys):
    kinds = {load_task(name).kind for name in builtin_tasks()}
    assert kinds == set(KINDS) and capsys.readouterr().out == ""


def test_learning_rate_picks_the_with_head_rate_for_classification_and_the_generative_for_the_others():
    rates = SimpleNamespace(with_head=2e-3, generative=2e-4)
    assert {name: kind.learning_rate(rates) for name, kind in KINDS.items()} == {
        "classification": 2e-3,
        "generation": 2e-4,
        "tagging": 2e-4,
        "language_modeling": 2e-4,
        "chat": 2e-4,
        "preference": 2e-5,  # a tenth of the generative rate: DPO moves a policy that is tuned already
        "reward": 2e-3,  # a new scalar head
    }


def test_language_modelling_encodes_blocks_not_examples():
    with pytest.raises(KindError, match="blocks"):
        KINDS["language_modeling"].encode([], None, DataConfig(), "decoder", None, True)
