"""What a user sees besides the answers: no warnings about tunelab's own calls, no report of a missing head
that the run's saved head replaces."""

from __future__ import annotations

import warnings

import torch

from tunelab.eval.generate import generate_texts
from tunelab.models.loading import load_base
from tunelab.train.trained import load_run


def test_a_trained_classifier_loads_without_a_missing_head_report(classifier_run, caplog):
    run = classifier_run("lora")
    caplog.clear()
    load_base(run.config(), ["negative", "positive"])  # a fresh head: the report is right to name it
    assert "LOAD REPORT" in caplog.text and "classifier.weight" in caplog.text
    caplog.clear()
    load_run(run)  # the run's trained head replaces the fresh one: nothing is missing
    assert "LOAD REPORT" not in caplog.text and "not sharded" not in caplog.text


def test_generation_raises_no_deprecation_warning_about_the_cache(tiny_decoder, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_decoder), AutoTokenizer.from_pretrained(tiny_decoder)
    prompts = [tokenizer("the film was great")["input_ids"], tokenizer("dull")["input_ids"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            answers = generate_texts(model, tokenizer, prompts, decoder_only=True, max_new_tokens=3)
    assert len(answers) == 2
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
