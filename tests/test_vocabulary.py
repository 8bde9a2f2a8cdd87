"""One vocabulary (issue 30, item 3): a `data:` run declares its kind of example (`data.kind`), a run may choose
its objective (`objective:`), and configs written before in the old words still load, each old key with one note
that names the new one."""

from __future__ import annotations

import pytest
import yaml

from tunelab.config import ConfigError, build_config, config_to_yaml, load_config
from tunelab.kinds import KINDS, kind_of_run, register_kind
from tunelab.kinds.classification import Classification
from tunelab.resolve import check_config
from tunelab.train.objectives import objective_of

MIXTURE = {"tasks": [{"task": "sst2"}]}


@pytest.mark.parametrize(
    ("old", "new_key", "kind", "objective"),
    [
        ({"task_type": "classification"}, "data.kind: classification", "classification", "classifier"),
        (
            {"task_type": "causal_lm", "data": {"prompt_field": "q"}},
            "data.kind: generation",
            "generation",
            "text_to_text",
        ),
        (
            {"task_type": "seq2seq", "data": {"prompt_field": "q"}},
            "data.kind: generation",
            "generation",
            "text_to_text",
        ),
        ({"task": "causal_lm", "data": {"prompt_field": "q"}}, "data.kind: generation", "generation", "text_to_text"),
        ({"task_type": "language_modeling"}, "data.kind: language_modeling", "language_modeling", "language_model"),
        (
            {"method": {"name": "full"}, "mixture": {**MIXTURE, "architecture": "multi_head"}},
            "objective: multi_head",
            "classification",
            "multi_head",
        ),
    ],
)
def test_each_old_spelling_loads_with_one_note_naming_the_new_key(old, new_key, kind, objective, capsys):
    config = build_config(old)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and new_key in notes[0]
    assert config.data.kind == kind and objective_of(config).name == objective
    check_config(config)


def test_the_new_spelling_loads_without_a_note(capsys):
    config = build_config({"data": {"kind": "generation", "prompt_field": "q"}, "objective": "text_to_text"})
    assert "note:" not in capsys.readouterr().out
    saved = yaml.safe_load(config_to_yaml(config))
    assert saved["data"]["kind"] == "generation" and saved["objective"] == "text_to_text" and "task_type" not in saved
    assert build_config({}).objective is None  # derived: a data: run's kind, a mixture's text_to_text


@pytest.mark.parametrize(
    ("both", "named"),
    [
        ({"task_type": "causal_lm", "data": {"kind": "generation"}}, "task_type is the old spelling of data.kind"),
        ({"task": "causal_lm", "task_type": "causal_lm"}, "task and task_type are both old spellings of data.kind"),
        (
            {"objective": "multi_head", "mixture": {**MIXTURE, "architecture": "multi_head"}},
            "mixture.architecture is the old spelling of objective",
        ),
    ],
)
def test_old_and_new_spelling_at_once_is_an_error_naming_both(both, named):
    with pytest.raises(ConfigError, match=named):
        build_config(both)


def test_an_unknown_kind_or_objective_gets_a_did_you_mean_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="Did you mean 'generation'.*Kinds: classification, generation, tagging"):
        check_config(build_config({"data": {"kind": "generaton"}}))
    with pytest.raises(ConfigError, match="Did you mean 'multi_head'.*Objectives: classifier, text_to_text, multi_"):
        check_config(build_config({"objective": "multihead"}))


def test_a_misspelt_old_task_type_names_the_key_and_the_closest(capsys):
    with pytest.raises(ConfigError, match=r"task_type: not a task type \(got 'causal'\)\. Did you mean 'causal_lm'"):
        build_config({"task_type": "causal"})


def test_a_run_directorys_own_saved_config_loads_quietly(tmp_path, capsys):
    """A run written before keeps loading (serve, predict, eval read its config.yaml): its old task_type is read
    without a note, since the saved config is the run's record, not a file the user edits."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"task_type": "causal_lm", "data": {"prompt_field": "q"}}), encoding="utf-8")
    assert load_config(path, quiet=True).data.kind == "generation"
    assert "note:" not in capsys.readouterr().out
    assert load_config(path).data.kind == "generation"
    assert capsys.readouterr().out.count("note:") == 1


def test_the_objective_rules_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="set objective: text_to_text"):
        check_config(build_config({"objective": "classifier", "mixture": MIXTURE}))
    with pytest.raises(ConfigError, match="trains a mixture of tasks"):
        check_config(build_config({"objective": "multi_head", "method": {"name": "full"}}))
    with pytest.raises(ConfigError, match="drop few_shot from eval.baselines"):
        check_config(build_config({"eval": {"baselines": ["few_shot"]}}))


class Echo(Classification):
    """A toy kind defined here: classification under another name."""

    name = "echo"


def test_a_registered_toy_kind_is_accepted_as_data_kind(monkeypatch):
    monkeypatch.setattr("tunelab.kinds.KINDS", dict(KINDS))
    register_kind(Echo)
    config = build_config({"data": {"kind": "echo"}})
    check_config(config)
    assert kind_of_run(config).name == "echo" and objective_of(config).name == "classifier"
