"""The Ollama Modelfile's template, read off chat templates of the common families (tiny tokenizer, no model),
and rendered by Go's own text/template against the tokenizer's Jinja rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunelab.chat_templates import chat_template_text
from tunelab.config import DataConfig, build_config
from tunelab.export.modelfile import (
    PROBES,
    derive_chat_format,
    ollama_template,
    render_modelfile,
)
from tunelab.kinds.chat import Chat

CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA_IT = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
GO = Path(sys.executable).parent / "go"


@pytest.fixture
def tokenizer(tokenizer_dir):
    def with_template(template: str):
        loaded = AutoTokenizer.from_pretrained(tokenizer_dir)
        loaded.chat_template = template
        return loaded

    return with_template


def chat_config(**evaluation):
    data = {"train": "train.jsonl", "prompt_template": "Summarise:\n{dialogue}", "response_field": "summary"}
    return build_config(
        {
            "name": "chat",
            "task_type": "causal_lm",
            "model": {"name": "smollm2-135m-instruct"},
            "data": data,
            "eval": evaluation,
        }
    )


def go_render(template: str, conversations: list[list[dict]], system: str | None) -> list[str]:
    """Render as Ollama does: its SYSTEM is prepended to a conversation that has no system message."""
    cases = [
        {"Messages": ([] if c[0]["role"] == "system" or system is None else [{"Role": "system", "Content": system}])
         + [{"Role": m["role"], "Content": m["content"]} for m in c]}
        for c in conversations
    ]  # fmt: skip
    done = subprocess.run(
        [str(GO), "run", str(Path(__file__).parent / "ollama" / "render.go")],
        input=json.dumps({"template": template, "cases": cases}), capture_output=True, text=True, check=True,
        timeout=600,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_chatml_with_a_default_system_prompt_is_read_as_prefixes_suffixes_and_a_system_line(tokenizer):
    chat = derive_chat_format(tokenizer(CHATML_WITH_DEFAULT_SYSTEM))
    assert chat.start == ""
    assert chat.wraps["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert chat.generation_prompt == "<|im_start|>assistant\n"
    assert chat.default_system == "You are a helpful assistant."


def test_llama3_and_chatml_templates_render_in_go_as_in_jinja(tokenizer):
    conversations = [*PROBES, [{"role": "user", "content": 'Quotes ", braces {{ x }} and a\nnewline'}]]
    for template in (LLAMA3, CHATML_WITH_DEFAULT_SYSTEM):
        jinja = tokenizer(template)
        chat = derive_chat_format(jinja)
        expected = [
            jinja.apply_chat_template(c, tokenize=False, add_generation_prompt=c[-1]["role"] != "assistant")
            for c in conversations
        ]
        assert go_render(ollama_template(chat), conversations, chat.default_system) == expected


def test_a_template_that_folds_the_system_prompt_into_the_first_turn_renders_in_go_as_in_jinja(tokenizer):
    conversations = [*PROBES, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    for template in (GEMMA_IT, chat_template_text("gemma")):
        jinja = tokenizer(template)
        chat = derive_chat_format(jinja)
        assert chat.folded_system and chat.wraps["system"] == ("<start_of_turn>user\n", "\n\n")
        expected = [
            jinja.apply_chat_template(c, tokenize=False, add_generation_prompt=c[-1]["role"] != "assistant")
            for c in conversations
        ]
        assert go_render(ollama_template(chat), conversations, chat.default_system) == expected


def test_a_gemma_style_chat_run_keeps_its_template_and_stops_at_the_closing_token(tokenizer):
    """A base model given `data.chat_template: gemma` (the chat kind sets it and makes <end_of_turn> the EOS):
    its Modelfile has the template and stops at <end_of_turn>."""
    run_tokenizer = tokenizer("")
    run_tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    Chat().prepare_tokenizer(run_tokenizer, DataConfig(kind="chat", train="t.jsonl", chat_template="gemma"))
    assert run_tokenizer.eos_token == "<end_of_turn>"
    modelfile = render_modelfile("chat-f16.gguf", run_tokenizer, chat_config(), [run_tokenizer.eos_token_id])
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == ollama_template(derive_chat_format(run_tokenizer))
    stops = [json.loads(line.split(" ", 2)[2]) for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ["<end_of_turn>"]


def test_the_modelfile_names_every_end_token_once(tokenizer):
    chatml = tokenizer(CHATML_WITH_DEFAULT_SYSTEM)
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    eos_id = chatml.convert_tokens_to_ids("<|im_end|>")
    modelfile = render_modelfile("chat-f16.gguf", chatml, chat_config(), [eos_id, chatml.sep_token_id])
    stops = [json.loads(line.split(" ", 2)[2]) for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ["<|im_end|>", "[SEP]"]
    assert 'SYSTEM """You are a helpful assistant."""' in modelfile


@pytest.mark.parametrize("beams", [1, 4])
def test_the_modelfile_decodes_as_the_run_does_not_at_ollamas_defaults(tokenizer, beams):
    """Ollama samples at temperature 0.8 with a 1.1 repetition penalty unless told otherwise; the run's answers
    are greedy, unpenalised and at most eval.max_new_tokens long."""
    chatml = tokenizer(CHATML_WITH_DEFAULT_SYSTEM)
    modelfile = render_modelfile("chat-f16.gguf", chatml, chat_config(max_new_tokens=24, num_beams=beams), [])
    parameters = dict(
        line.split()[1:] for line in modelfile.splitlines() if line.startswith("PARAMETER ") and "stop" not in line
    )
    assert parameters == {"temperature": "0", "repeat_penalty": "1", "num_predict": "24"}
    assert ("eval.num_beams=4" in modelfile) == (beams == 4)
