"""The tokenised-data cache: a hit returns exactly what `encode` would, anything that changes tokens is a miss,
and a bad or half-written file is never read as data."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tunelab.config import build_config
from tunelab.data import cache
from tunelab.data.cache import cache_key, encode_cached, read_entry
from tunelab.data.encode import encode
from tunelab.data.splits import load_task_data
from tunelab.models.family import task_type_of

CHAT_TEMPLATE = (
    "{% for m in messages %}<user> {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} <bot>{% endif %}"
)


def causal_setup(model_dir, data_file, **data):
    config = build_config(
        {
            "task": "causal_lm",
            "model": {"name": model_dir},
            "data": {
                "train": str(data_file),
                "prompt_template": "{question}",
                "response_field": "answer",
                "max_length": 48,
                "max_target_length": 8,
                **data,
            },
        }
    )
    return config, load_task_data(config)


def classification_setup(model_dir, data_file, **data):
    config = build_config(
        {
            "task": "classification",
            "model": {"name": model_dir},
            "data": {"train": str(data_file), "max_length": 32, **data},
        }
    )
    return config, load_task_data(config)


@pytest.fixture(params=["causal_lm", "classification"])
def setup(request, tiny_decoder, tiny_encoder, copy_task_file, sentiment_file):
    """A task's config, its train records, its labels and a fresh tokenizer (tests may change it), plus a
    `call(**changes)` that runs encode_cached with the task's arguments, each overridable."""
    if request.param == "causal_lm":
        model_dir, (config, data) = tiny_decoder, causal_setup(tiny_decoder, copy_task_file)
    else:
        model_dir, (config, data) = tiny_encoder, classification_setup(tiny_encoder, sentiment_file)
    args = {
        "task": task_type_of(config),
        "records": data.train,
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
        "data": config.data,
        "labels": data.labels,
        "with_target": True,
    }
    return SimpleNamespace(
        config=config,
        data=data,
        model_dir=model_dir,
        args=args,
        call=lambda cache_dir, **changes: encode_cached(**{**args, **changes}, cache_dir=cache_dir),
    )


@pytest.fixture
def count_tokenise(monkeypatch):
    """Counts calls to any tokenizer (patched on the base class: `tokenizer(...)` looks __call__ up on the type)."""
    calls = []
    original = PreTrainedTokenizerBase.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    return calls


@pytest.fixture(autouse=True)
def _cache_enabled(monkeypatch):
    """Tests decide for themselves whether the cache is off, whatever the calling shell has set."""
    monkeypatch.delenv("TUNELAB_NO_TOKEN_CACHE", raising=False)


@pytest.fixture
def folder(tmp_path):
    """The cache folder; apart from tmp_path, which also holds the data files."""
    return tmp_path / "tokens"


def entries(folder):
    return sorted(folder.iterdir()) if folder.exists() else []


def test_second_call_is_a_hit_that_does_not_tokenise(setup, folder, monkeypatch, count_tokenise):
    encode_calls = []
    monkeypatch.setattr(cache, "encode", lambda *a, **k: encode_calls.append(1) or encode(*a, **k))
    first, hit = setup.call(folder)
    assert not hit and len(encode_calls) == 1 and count_tokenise, "the miss tokenises"
    assert len(entries(folder)) == 1
    tokenised = len(count_tokenise)
    # a re-read data set and a re-loaded tokenizer are the same inputs: same key, so a hit
    reread = load_task_data(setup.config).train
    second, hit = setup.call(folder, records=reread, tokenizer=AutoTokenizer.from_pretrained(setup.model_dir))
    assert hit
    assert len(encode_calls) == 1 and len(count_tokenise) == tokenised, "a hit tokenises nothing"
    assert second.examples == first.examples and second.truncated == first.truncated
    # so is the tokenizer that did the encoding: using it (which resets its truncation state) does not change it
    assert setup.call(folder)[1]
    assert len(entries(folder)) == 1


@pytest.mark.parametrize("with_target", [True, False])
def test_cached_result_equals_a_fresh_encode(setup, folder, with_target):
    fresh = encode(**{**setup.args, "with_target": with_target})
    assert fresh.examples and len(fresh.examples) == len(setup.data.train)
    setup.call(folder, with_target=with_target)
    cached, hit = setup.call(folder, with_target=with_target)
    assert hit
    assert cached.examples == fresh.examples
    assert cached.truncated == fresh.truncated


def test_truncated_count_is_stored(tiny_decoder, copy_task_file, folder):
    config, data = causal_setup(tiny_decoder, copy_task_file, max_length=8, max_target_length=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder)
    fresh = encode("causal_lm", data.train, tokenizer, config.data)
    assert fresh.truncated > 0
    encode_cached("causal_lm", data.train, tokenizer, config.data, cache_dir=folder)
    cached, hit = encode_cached("causal_lm", data.train, tokenizer, config.data, cache_dir=folder)
    assert hit and cached.truncated == fresh.truncated and cached.examples == fresh.examples


def assert_miss_matching_fresh(setup, folder, **changes):
    """The changed call misses, returns what encode gives for the changed inputs, and adds its own entry."""
    before = len(entries(folder))
    result, hit = setup.call(folder, **changes)
    assert not hit
    fresh = encode(**{**setup.args, **changes})
    assert result.examples == fresh.examples and result.truncated == fresh.truncated
    assert len(entries(folder)) == before + 1


def test_changed_record_is_a_miss(setup, folder):
    setup.call(folder)
    records = list(setup.data.train)
    field = setup.config.data.text_field if setup.config.data.kind == "classification" else "question"
    records[3] = dataclasses.replace(
        records[3], fields={**records[3].fields, field: records[3].fields[field] + " again"}
    )
    assert_miss_matching_fresh(setup, folder, records=records)


def test_reordered_records_are_a_miss(setup, folder):
    setup.call(folder)
    records = list(setup.data.train)
    records[0], records[1] = records[1], records[0]
    assert_miss_matching_fresh(setup, folder, records=records)


def test_changed_data_config_is_a_miss(setup, folder):
    setup.call(folder)
    assert_miss_matching_fresh(setup, folder, data=setup.config.data.model_copy(update={"max_length": 9}))
    # a field today's encode does not read still changes the key
    assert cache_key(**setup.args) != cache_key(
        **{**setup.args, "data": setup.config.data.model_copy(update={"split_seed": 7})}
    )


def test_changed_labels_or_target_is_a_miss(setup, folder):
    setup.call(folder)
    if setup.config.data.kind == "classification":
        assert_miss_matching_fresh(setup, folder, labels=list(reversed(setup.data.labels)))
    assert_miss_matching_fresh(setup, folder, with_target=False)


def test_added_token_is_a_miss(setup, folder):
    setup.call(folder)
    tokenizer = setup.args["tokenizer"]
    tokenizer.add_tokens(["zzqx"])
    assert_miss_matching_fresh(setup, folder)


def test_changed_chat_template_is_a_miss(setup, folder):
    setup.call(folder)
    tokenizer = setup.args["tokenizer"]
    tokenizer.chat_template = CHAT_TEMPLATE
    assert_miss_matching_fresh(setup, folder)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<bot>", "<assistant>")
    assert_miss_matching_fresh(setup, folder)


def test_changed_special_token_is_a_miss(tiny_decoder, copy_task_file, folder):
    """The EOS appended to every causal target comes from the special-token map."""
    config, data = causal_setup(tiny_decoder, copy_task_file)
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder)
    encode_cached("causal_lm", data.train, tokenizer, config.data, cache_dir=folder)
    tokenizer.eos_token = "[CLS]"
    result, hit = encode_cached("causal_lm", data.train, tokenizer, config.data, cache_dir=folder)
    assert not hit
    assert result.examples[0]["input_ids"][-1] == tokenizer.convert_tokens_to_ids("[CLS]")


@pytest.mark.parametrize(
    "damage", ["cut in half", "garbage bytes", "empty", "valid JSON, wrong shape", "too few examples"]
)
def test_unreadable_file_is_a_miss_that_repairs_it(setup, folder, capsys, damage):
    good, _ = setup.call(folder)
    [path] = entries(folder)
    text = path.read_text(encoding="utf-8")
    stored = json.loads(text)
    damaged = {
        "cut in half": text[: len(text) // 2].encode(),
        "garbage bytes": b"\xff\xfe\x00not json at all",
        "empty": b"",
        "valid JSON, wrong shape": json.dumps({**stored, "examples": [[1, 2, 3]] * len(stored["examples"])}).encode(),
        "too few examples": json.dumps({**stored, "examples": stored["examples"][:-1]}).encode(),
    }[damage]
    path.write_bytes(damaged)
    capsys.readouterr()
    result, hit = setup.call(folder)
    assert not hit
    assert result.examples == good.examples and result.truncated == good.truncated
    message = capsys.readouterr().out
    assert message.count("\n") == 1 and str(path) in message and "unreadable" in message
    repaired = read_entry(path, len(setup.data.train))
    assert repaired.examples == good.examples
    assert setup.call(folder)[1], "the repaired file is a hit"


def test_failed_write_leaves_no_entry_and_no_temp_file(setup, folder, monkeypatch, capsys):
    """A write interrupted before the rename leaves nothing readable behind, and the run still gets its data."""

    def interrupted(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", interrupted)
    result, hit = setup.call(folder)
    assert not hit and result.examples == encode(**setup.args).examples
    assert entries(folder) == []
    assert "could not write" in capsys.readouterr().out


def test_disabled_cache_writes_nothing(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_NO_TOKEN_CACHE", "1")
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    for folder in (tmp_path / "explicit", None):
        for _ in range(2):
            result, hit = setup.call(folder)
            assert not hit and result.examples == encode(**setup.args).examples
    assert not (tmp_path / "explicit").exists() and not (tmp_path / "home").exists()


def test_default_location_is_under_tunelab_home(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELAB_NO_TOKEN_CACHE", "0")
    setup.call(None)
    [path] = entries(tmp_path / "home" / "cache" / "tokenized")
    assert path.name == f"{cache_key(**setup.args)}.json"
    assert setup.call(None)[1]
