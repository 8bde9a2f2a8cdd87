"""Continued pre-training (`task_type: language_modeling`): raw text packed into blocks, the loss on every token,
perplexity on held-out texts before and after, on a tiny decoder."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab import pipeline
from tunelab.config import ConfigError, build_config
from tunelab.data.blocks import BLOCK_FIELD, pack_blocks
from tunelab.methods import MethodError
from tunelab.models.reference import pretrained_root
from tunelab.records import DataError, Record
from tunelab.resolve import check_config
from tunelab.runs import RunError
from tunelab.train.trained import load_run

from helpers import lm_config, only_task, texts, value, write_jsonl


@pytest.fixture
def tokenizer(tokenizer_dir):
    """The tiny models' tokenizer: MiniLM's, ending texts with [SEP] as the tiny decoder does."""
    return AutoTokenizer.from_pretrained(tokenizer_dir, eos_token="[SEP]")


@pytest.fixture
def text_file(tmp_path):
    return write_jsonl(tmp_path / "domain.jsonl", [{"body": text} for text in texts(120)])


def test_blocks_keep_every_token_in_order_with_an_eos_after_each_text(tokenizer):
    records = [Record({"text": text}, f"f.jsonl:{i + 1}") for i, text in enumerate(texts(7))]
    expected = []
    for record in records:
        expected += tokenizer(record.fields["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = pack_blocks(records, tokenizer, "text", 16)
    ids = [block.fields[BLOCK_FIELD] for block in blocks]
    assert [token for block in ids for token in block] == expected
    assert all(len(block) == 16 for block in ids[:-1]) and 0 < len(ids[-1]) <= 16
    assert blocks[0].where.startswith("f.jsonl:1")
    assert blocks[-1].where.endswith("f.jsonl:7")


def test_a_block_names_the_records_it_spans(tokenizer):
    short = [Record({"text": "the film"}, f"f.jsonl:{i}") for i in (1, 2, 3)]  # 3 tokens each with the EOS
    first, second = pack_blocks(short, tokenizer, "text", 6)
    assert first.where == "f.jsonl:1 to f.jsonl:2"
    assert second.where == "f.jsonl:3"
    assert len(first.fields[BLOCK_FIELD]) == 6 and len(second.fields[BLOCK_FIELD]) == 3


def test_a_tokenizer_without_eos_is_refused(tokenizer):
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="EOS"):
        pack_blocks([Record({"text": "the film"}, "f:1")], tokenizer, "text", 8)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"data": {"train": "x.jsonl", "prompt_template": "{text}"}}, "drop data.prompt_template"),
        ({"method": {"name": "head"}}, "classification head"),
        ({"eval": {"baselines": ["zero_shot", "few_shot"]}}, "has no prompt"),
        ({"mixture": {"tasks": [{"task": "sst2"}]}}, "not on a mixture"),
    ],
)
def test_settings_that_read_prompts_or_answers_are_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        check_config(build_config({"task_type": "language_modeling", **setting}))


def test_continued_pretraining_lowers_held_out_perplexity(tiny_decoder, text_file, tmp_path):
    run = pipeline.train(lm_config(tiny_decoder, text_file, tmp_path, epochs=8, learning_rate=1e-2))
    state = json.loads(run.state_path.read_text())
    assert state["state"] == "complete"
    assert any("packed into" in note for note in state["data_notes"])
    task = only_task(json.loads(run.eval_path.read_text()))
    assert task["kind"] == "language_modeling" and task["metric"] == "perplexity"
    before, after = value(task["base"], "perplexity"), value(task["tuned"], "perplexity")
    assert after < before / 100  # a random 30k-vocabulary decoder against one that learned the grammar
    card = run.card_path.read_text()
    assert f"({state['examples']['train']} token blocks)" in card and "same held-out texts" in card


ALL_LINEAR = {"lora": {"target_modules": "all-linear", "r": 16}}


def test_a_lora_language_model_reloads_with_what_it_learned(tiny_decoder, text_file, tmp_path):
    run = pipeline.train(
        lm_config(
            tiny_decoder, text_file, tmp_path, method="lora", epochs=8, learning_rate=3e-2, method_settings=ALL_LINEAR
        )
    )
    loaded = load_run(run)
    held_out = [Record({"body": text}, f"new:{i}") for i, text in enumerate(texts(4, seed=9))]
    ids = torch.tensor([pack_blocks(held_out, loaded.tokenizer, "body", 32)[0].fields[BLOCK_FIELD]])
    with torch.no_grad():
        tuned = loaded.model(input_ids=ids, labels=ids).loss
        with loaded.model.disable_adapter():
            base = loaded.model(input_ids=ids, labels=ids).loss
    assert tuned < base - 0.25  # the saved adapter carries what training learned (0.44 nats here)


def stage_two_config(stage_one, copy_task_file, out, method="lora"):
    """Instruction tuning (prompt -> answer) from an earlier run's model: the second stage of a recipe."""
    return build_config(
        {
            "name": "tiny-stage-two",
            "task_type": "causal_lm",
            "output_dir": str(out),
            "model": {"name": str(stage_one.path)},
            "data": {"train": str(copy_task_file), "prompt_template": "{question}", "response_field": "answer"},
            "method": {"name": method},
            "training": {"max_steps": 4, "batch_size": 8, "precision": "fp32"},
            "eval": {"max_new_tokens": 4},
        }
    )


def test_a_full_stage_one_is_the_base_of_stage_two_and_the_card_shows_the_chain(
    tiny_decoder, text_file, copy_task_file, tmp_path
):
    stage_one = pipeline.train(lm_config(tiny_decoder, text_file, tmp_path / "one", max_steps=3))
    stage_two = pipeline.train(stage_two_config(stage_one, copy_task_file, tmp_path / "two"))
    assert not (stage_one.path / "merged").exists()  # full fine-tuning saved a whole model, read as it is
    (step,) = json.loads(stage_two.state_path.read_text())["chain"]
    assert step["run"] == str(stage_one.path.resolve()) and (step["kind"], step["objective"]) == (
        "language_modeling",
        "language_model",
    )
    assert step["base_model"] == tiny_decoder and step["scores"]["domain"]["metric"] == "perplexity"
    card = stage_two.card_path.read_text()
    assert (
        "## Chain of runs" in card
        and f"1. `{tiny_decoder}`" in card
        and "3. this run: generation, text_to_text" in card
    )
    assert pretrained_root(str(stage_two.path)) == tiny_decoder  # what GGUF export takes its metadata from
    tuned = load_run(stage_one).model.state_dict()
    pretrained = AutoModelForCausalLM.from_pretrained(tiny_decoder).state_dict()
    under_lora = (
        load_run(stage_two).model.get_base_model().state_dict()
    )  # stage two's LoRA sits on stage one's weights
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"):  # weights LoRA leaves alone
        assert torch.equal(under_lora[name], tuned[name]) and not torch.equal(tuned[name], pretrained[name]), name


def test_a_lora_stage_one_is_merged_into_the_base_of_stage_two(tiny_decoder, text_file, copy_task_file, tmp_path):
    stage_one = pipeline.train(
        lm_config(tiny_decoder, text_file, tmp_path / "one", method="lora", max_steps=3, learning_rate=3e-2)
    )
    stage_two = pipeline.train(stage_two_config(stage_one, copy_task_file, tmp_path / "two", method="full"))
    assert (stage_one.path / "merged" / "config.json").is_file()
    ids = torch.tensor([[101, 1996, 2143, 2001, 2307, 1012]])
    with torch.no_grad():
        adapted = load_run(stage_one).model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(stage_one.path / "merged")(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert json.loads(stage_two.state_path.read_text())["chain"][0]["method"] == "lora"


def test_a_stage_one_that_cannot_be_merged_or_is_unfinished_or_a_classifier_is_refused(
    tiny_decoder, tiny_encoder, text_file, copy_task_file, sentiment_file, tmp_path
):
    prefix = pipeline.train(lm_config(tiny_decoder, text_file, tmp_path / "prefix", method="prefix", max_steps=2))
    with pytest.raises(MethodError, match="cannot be the base of another run: .*prefix"):
        pipeline.train(stage_two_config(prefix, copy_task_file, tmp_path / "two"))
    state = json.loads(prefix.state_path.read_text())
    prefix.state_path.write_text(json.dumps({**state, "state": "running"}))
    with pytest.raises(RunError, match="not complete"):
        pipeline.train(stage_two_config(prefix, copy_task_file, tmp_path / "two"))
    classifier = pipeline.train(
        build_config(
            {
                "output_dir": str(tmp_path / "cls"),
                "model": {"name": tiny_encoder},
                "data": {"train": str(sentiment_file)},
                "method": {"name": "full"},
                "training": {"max_steps": 2, "precision": "fp32"},
            }
        )
    )
    with pytest.raises(ConfigError, match="classification run"):
        pipeline.train(stage_two_config(classifier, copy_task_file, tmp_path / "two"))
