"""Run configuration: defaults, overrides, and error messages that say what to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tunelab.config import ConfigError, RunConfig, build_config, config_to_yaml, load_config, parse_overrides
from tunelab.resolve import check_config

ROOT = Path(__file__).resolve().parents[1]


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    return str(info.value)


# --- defaults and overrides -------------------------------------------------------------------------


def test_defaults_validate():
    config = load_config(None)
    assert isinstance(config, RunConfig)
    assert config == build_config({})
    assert config.data.kind == "classification" and config.objective is None
    # every default is itself valid when fed back through validation
    assert build_config(config.model_dump()) == config


def test_overrides_set_nested_keys_with_yaml_types():
    config = load_config(
        None,
        [
            "training.epochs=1.5",
            "training.batch_size=4",
            "training.learning_rate=3e-4",
            "method.lora.r=4",
            "method.lora.target_modules=[q_proj, v_proj]",
            "data.labels=[neg, pos]",
            "data.skip_invalid=true",
            "name=my-run",
        ],
    )
    assert config.training.epochs == 1.5 and isinstance(config.training.epochs, float)
    assert config.training.batch_size == 4 and isinstance(config.training.batch_size, int)
    assert config.training.learning_rate == pytest.approx(3e-4)
    assert config.method.lora.r == 4
    assert config.method.lora.target_modules == ["q_proj", "v_proj"]
    assert config.data.labels == ["neg", "pos"]
    assert config.data.skip_invalid is True
    assert config.name == "my-run"
    # untouched siblings keep their defaults
    assert config.method.lora.alpha == RunConfig().method.lora.alpha


def test_overrides_merge_into_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  epochs: 3\n  batch_size: 8\nmethod:\n  lora:\n    r: 16\n", encoding="utf-8")
    config = load_config(path, ["training.epochs=1", "method.lora.alpha=64"])
    assert config.training.epochs == 1
    assert config.training.batch_size == 8  # from the file, not replaced by the override of a sibling
    assert config.method.lora.r == 16
    assert config.method.lora.alpha == 64


def test_numeric_labels_are_read_as_strings():
    # data labels are compared as strings, so `labels: [0, 1]` must match integer labels in the data
    assert load_config(None, ["data.labels=[0, 1]"]).data.labels == ["0", "1"]


def test_parse_overrides_builds_nested_dict():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]", "f="]) == {
        "a": {"b": {"c": 1, "d": "x"}},
        "e": [1, 2],
        "f": "",
    }


@pytest.mark.parametrize("item", ["training.epochs", "=3", ""])
def test_malformed_override_rejected(item):
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert f"override '{item}' is not of the form key.sub=value" in str(info.value)


def test_override_value_that_is_not_yaml_rejected():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.labels=[a, b"])
    message = str(info.value)
    assert "override 'data.labels=[a, b'" in message
    assert "not valid YAML" in message


def test_quoted_override_value_stays_a_string():
    config = load_config(None, ['data.prompt_template="Q: {question}"', "task=causal_lm"])
    assert config.data.prompt_template == "Q: {question}"


def test_override_inside_a_scalar_rejected():
    with pytest.raises(ConfigError, match="sets a key inside 'training', which is not a section"):
        load_config(None, ["training=3", "training.epochs=1"])


# --- unknown keys and bad values ---------------------------------------------------------------------


def test_unknown_top_level_key_suggests_close_match():
    message = config_error({"trainig": {"epochs": 1}})
    assert "unknown key 'trainig'" in message
    assert "Did you mean 'training'?" in message


def test_unknown_nested_key_names_full_key_and_suggests():
    message = config_error({"training": {"epoch": 1}})
    assert "unknown key 'training.epoch'" in message
    assert "Did you mean 'training.epochs'?" in message


def test_unknown_deeply_nested_key_via_override():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["method.lora.dropuot=0.1"])
    message = str(info.value)
    assert "unknown key 'method.lora.dropuot'" in message
    assert "Did you mean 'method.lora.dropout'?" in message
    assert "method.lora.dropuot=0.1" in message  # the source names the override


def test_unknown_key_without_close_match_lists_known_keys():
    message = config_error({"eval": {"zzzz": 1}})
    assert "unknown key 'eval.zzzz'" in message
    assert "Did you mean" not in message
    assert "Known keys here:" in message and "max_new_tokens" in message


@pytest.mark.parametrize(
    "data, key, bad, guess",
    [
        ({"task": "clasification"}, "task", "clasification", "classification"),
        ({"training": {"precision": "bf61"}}, "training.precision", "bf61", "bf16"),
        ({"training": {"scheduler": "cosin"}}, "training.scheduler", "cosin", "cosine"),
        ({"method": {"name": "lroa"}}, "method.name", "lroa", "lora"),
    ],
)
def test_bad_choice_names_key_value_and_suggests(data, key, bad, guess):
    message = config_error(data)
    assert f"{key}:" in message
    assert f"(got '{bad}')" in message
    assert f"Did you mean '{guess}'?" in message


def test_bad_choice_in_union_field_names_the_field():
    message = config_error({"method": {"lora": {"target_modules": "all-linar"}}})
    assert "method.lora.target_modules: Input should be 'attention' or 'all-linear'" in message
    assert "Did you mean 'all-linear'?" in message
    assert "list[str]" not in message  # pydantic's union-member tag is not part of the key


@pytest.mark.parametrize(
    "data, key, bad",
    [
        ({"training": {"batch_size": 0}}, "training.batch_size", "0"),
        ({"training": {"epochs": -1}}, "training.epochs", "-1"),
        ({"training": {"warmup_ratio": 1.0}}, "training.warmup_ratio", "1.0"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate", "0"),
        ({"data": {"validation_fraction": 1.5}}, "data.validation_fraction", "1.5"),
        ({"data": {"test_fraction": 0}}, "data.test_fraction", "0"),
        ({"data": {"max_length": 4}}, "data.max_length", "4"),
        ({"method": {"lora": {"r": 0}}}, "method.lora.r", "0"),
        ({"method": {"lora": {"dropout": 1}}}, "method.lora.dropout", "1"),
    ],
)
def test_out_of_range_numbers_rejected(data, key, bad):
    message = config_error(data)
    assert f"{key}: Input should be" in message
    assert f"(got {bad})" in message


def test_wrong_type_rejected():
    message = config_error({"training": {"epochs": "many"}})
    assert "training.epochs:" in message and "(got 'many')" in message


def test_all_problems_reported_together():
    message = config_error({"training": {"batch_size": 0, "epoch": 1}, "eval": {"num_beams": 0}})
    assert "training.batch_size" in message
    assert "training.epoch'" in message
    assert "eval.num_beams:" in message


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_generation_task_needs_prompt(task):
    with pytest.raises(ConfigError) as info:
        check_config(build_config({"task": task}))
    message = str(info.value)
    assert "data.kind 'generation' needs data.prompt_template" in message
    assert "data.prompt_field" in message


@pytest.mark.parametrize("data", [{"prompt_template": "Q: {question}"}, {"prompt_field": "question"}])
def test_generation_task_with_prompt_accepted(data):
    for config in (
        build_config({"task": "causal_lm", "data": data}),  # `task` is task_type's old name
        build_config({"task_type": "causal_lm", "data": data}),
        build_config({"data": {"kind": "generation", **data}}),
    ):
        assert config.data.kind == "generation"
        check_config(config)


# --- YAML files ---------------------------------------------------------------------------------------


def test_yaml_file_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "must hold a mapping" in str(info.value)
    assert "got list" in str(info.value)


def test_yaml_file_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("training:\n  epochs: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path} is not valid YAML" in str(info.value)


def test_yaml_file_missing(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"config file {path} does not exist" in str(info.value)


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path) == RunConfig()


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  epoch: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path} is invalid" in str(info.value)
    assert "unknown key 'training.epoch'" in str(info.value)


def test_config_to_yaml_round_trips(tmp_path):
    config = load_config(
        None,
        [
            "task=causal_lm",
            'data.prompt_template="Summarise:\\n{dialogue}"',
            "data.labels=[a, b]",
            "method.name=full",
            "method.lora.target_modules=all-linear",
            "training.epochs=0.5",
            "training.max_steps=7",
            "training.learning_rate=1e-5",
            "eval.baselines=[]",
        ],
    )
    text = config_to_yaml(config)
    assert isinstance(yaml.safe_load(text), dict)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_config(path)
    assert loaded == config
    assert loaded.data.prompt_template == "Summarise:\n{dialogue}"
    assert loaded != RunConfig()


# --- derived values -----------------------------------------------------------------------------------


def learning_rate(config: RunConfig) -> float:
    from tunelab.train.objectives import objective_of

    return objective_of(config).learning_rate(config)


def test_default_learning_rates_depend_on_method_and_task():
    full_cls = learning_rate(build_config({"method": {"name": "full"}}))
    full_gen = learning_rate(
        build_config({"method": {"name": "full"}, "data": {"kind": "generation", "prompt_field": "q"}})
    )
    lora_cls = learning_rate(build_config({"method": {"name": "lora"}}))
    lora_gen = learning_rate(
        build_config({"method": {"name": "lora"}, "data": {"kind": "generation", "prompt_field": "q"}})
    )
    assert full_cls == full_gen  # full fine-tuning uses one default for every task
    assert lora_cls > lora_gen > 0  # LoRA classifiers train a fresh head and take a larger step
    assert lora_cls > full_cls and lora_gen > full_cls  # low-rank updates need larger steps than full tuning
    assert len({full_cls, lora_cls, lora_gen}) == 3


def test_configured_learning_rate_wins():
    for method in ("full", "lora"):
        assert learning_rate(build_config({"method": {"name": method}, "training": {"learning_rate": 0.123}})) == 0.123


def test_best_metric_default_and_override():
    from tunelab.train.objectives import objective_of

    def best_metric(config):
        return objective_of(config).best_metric(config)

    assert best_metric(build_config({})) != best_metric(
        build_config({"task": "seq2seq", "data": {"prompt_field": "q"}})
    )
    assert best_metric(build_config({"training": {"metric_for_best": "f1"}})) == "f1"


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=.inf", "training.epochs: Input should be a finite number"),
        ("data.prompt_template='{0}'", "must name a record field"),
        ("data.prompt_template='{x:d}'", "data.prompt_template"),
        ("a..b=1", "not of the form key.sub=value"),
    ],
)
def test_settings_that_could_never_run_are_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override, "task=causal_lm", "data.prompt_field=p"])


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").exists(), reason="the configs read ../shared/data")
@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_reads_its_data_and_plans_its_run(path, monkeypatch):
    """The configs in configs/ (older ones say `task:`) validate, read their tasks and plan their order."""
    from tunelab.data.plan import plan_training
    from tunelab.data.taskset import load_taskset
    from tunelab.train.objectives import objective_of

    monkeypatch.chdir(ROOT)
    config = load_config(path)
    plan = plan_training(config, load_taskset(config), one_task_per_batch=objective_of(config).one_task_per_batch)
    assert plan.steps > 0 and len(plan.order) == plan.steps * plan.global_batch


# --- data paths in a config file ------------------------------------------------------------------------


def _config_in(folder: Path, train: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": train}}))
    return path


def test_config_data_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    """A config's relative data path is read from the config file's folder, whatever the working directory."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    config_path = _config_in(tmp_path / "project" / "configs", "../data/train.jsonl")
    monkeypatch.chdir(tmp_path)
    assert load_config(config_path).data.train == str(tmp_path / "project" / "data" / "train.jsonl")


def test_config_data_path_found_only_under_the_working_directory_is_read_with_a_note(tmp_path, monkeypatch, capsys):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    config_path = _config_in(tmp_path / "configs", "train.jsonl")
    monkeypatch.chdir(tmp_path)
    assert load_config(config_path).data.train == str(tmp_path / "train.jsonl")
    note = capsys.readouterr().out
    assert "not in the config's folder" in note and str(tmp_path / "configs" / "train.jsonl") in note


def test_config_data_path_found_nowhere_names_every_absolute_path_tried(tmp_path, monkeypatch):
    from tunelab.data.splits import load_task_data
    from tunelab.records import DataError

    config_path = _config_in(tmp_path / "configs", "../absent/train.jsonl")
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    with pytest.raises(DataError) as info:
        load_task_data(load_config(config_path))
    message = str(info.value)
    assert f"{tmp_path / 'absent' / 'train.jsonl'} (the config's folder)" in message
    assert f"{tmp_path / 'elsewhere' / 'absent' / 'train.jsonl'} (the working directory)" in message


def test_override_data_paths_stay_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.jsonl").write_text('{"text": "a", "label": "x"}\n')
    config_path = _config_in(tmp_path / "configs", "mine.jsonl")
    monkeypatch.chdir(tmp_path)
    assert load_config(config_path, ["data.train=mine.jsonl"]).data.train == "mine.jsonl"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").exists(), reason="the configs read ../shared/data")
def test_shipped_configs_find_their_data_from_any_folder(tmp_path, monkeypatch, capsys):
    for folder in (ROOT, tmp_path):
        monkeypatch.chdir(folder)
        config = load_config(ROOT / "configs" / "sentiment-minilm-lora.yaml")
        assert all(Path(getattr(config.data, key)).is_file() for key in ("train", "validation", "test"))
    assert "note:" not in capsys.readouterr().out
