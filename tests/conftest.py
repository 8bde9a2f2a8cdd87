"""Shared fixtures: tiny randomly initialised models (seconds to train) with the installed MiniLM tokenizer.

Each tiny model is saved as a local model directory, so tests exercise the same
`from_pretrained` path a user's local model or hub id takes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from tunelab import pipeline
from tunelab.models.registry import REGISTRY, native_dir

from helpers import (
    NEGATIVE,
    NOUNS,
    POSITIVE,
    SHARED_DATA,
    TINY_SHAPE,
    chat_config,
    copy_rows,
    method_config,
    mixture_config,
    preference_config,
    preference_rows,
    sentiment_rows,
    session_home,
    write_jsonl,
)


def _share_the_cores_between_workers() -> None:
    """Give each pytest-xdist worker, and every process it starts (servers, CLI runs), its share of the cores.

    PyTorch starts one OpenMP thread per core in every process; two workers plus a server they started then run
    several threads per core, and spinning OpenMP threads make small models several times slower than the share
    alone would (serve_real's load test: 15 s alone, 130 s beside another worker, past the server's timeout).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # PyTorch's own count: the cores this process may use, which os.cpu_count() can overstate
        share = max(1, torch.get_num_threads() // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


_share_the_cores_between_workers()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep registry caches out of the user's home, but share them across the session's tests (and workers)."""
    monkeypatch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return native_dir(REGISTRY["minilm-l6"])


def _seeded(build):
    """Build a tiny model from a fixed seed: every test session trains the same weights, so results are reproducible."""
    torch.manual_seed(0)
    return build()


def _save(model, tokenizer, path: Path, **special) -> str:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    for name, value in special.items():
        setattr(tokenizer, name, value)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, tokenizer_dir) -> str:
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return _save(_seeded(lambda: BertModel(config)), tokenizer_dir, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory, tokenizer_dir) -> str:
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=102,
        bos_token_id=101,
    )
    return _save(
        _seeded(lambda: LlamaForCausalLM(config)),
        tokenizer_dir,
        tmp_path_factory.mktemp("tiny-llama"),
        eos_token="[SEP]",
    )


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory, tokenizer_dir) -> str:
    config = T5Config(
        vocab_size=30522,
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=102,
        decoder_start_token_id=0,
    )
    return _save(
        _seeded(lambda: T5ForConditionalGeneration(config)),
        tokenizer_dir,
        tmp_path_factory.mktemp("tiny-t5"),
        eos_token="[SEP]",
    )


@pytest.fixture(scope="session")
def sentiment_file(tmp_path_factory) -> Path:
    """A trivially separable sentiment set (`sentiment_rows`); one file for the session, so runs trained on it can
    be shared (see `trained_run`)."""
    return write_jsonl(tmp_path_factory.mktemp("sentiment") / "sentiment.jsonl", sentiment_rows())


@pytest.fixture(scope="session")
def copy_task_file(tmp_path_factory) -> Path:
    """Prompt -> completion pairs where the completion repeats the prompt's last word (`copy_rows`)."""
    rng = random.Random(0)
    words = POSITIVE + NEGATIVE + NOUNS
    rows = copy_rows([rng.choice(words) for _ in range(64)])
    return write_jsonl(tmp_path_factory.mktemp("copy") / "copy.jsonl", rows)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`trained_run(build, *args, **settings)`: the run `pipeline.train(build(*args, out=..., **settings))` trains,
    trained once per session (per pytest-xdist worker) and shared by every test that asks with the same arguments.

    For tests that need a trained model, not a test of training: a whole run (scoring before and after included)
    costs seconds each time. The tests only read a shared run; one that writes into it works on `copied_run`.
    """
    runs = {}

    def train_once(build, *args, **settings):
        key = (build.__qualname__, args, repr(sorted(settings.items())))
        if key not in runs:
            runs[key] = pipeline.train(build(*args, out=tmp_path_factory.mktemp("shared-run"), **settings))
        return runs[key]

    return train_once


@pytest.fixture(scope="session")
def classifier_run(trained_run, tiny_encoder, sentiment_file):
    """`classifier_run(method)`: a tiny classifier tuned with `method` for 4 steps (`method_config`), shared."""
    return lambda method: trained_run(
        method_config, "classification", tiny_encoder, sentiment_file, method=method, max_steps=4
    )


@pytest.fixture(scope="session")
def decoder_run(trained_run, tiny_decoder, copy_task_file):
    """`decoder_run(method)`: a tiny decoder tuned with `method` on the copy task, 4 steps at 1e-2, shared."""
    return lambda method: trained_run(
        method_config, "causal_lm", tiny_decoder, copy_task_file, method=method, max_steps=4, learning_rate=1e-2
    )


@pytest.fixture(scope="session")
def multi_head_run(trained_run, tiny_encoder):
    """A tiny encoder with one head per task on the SST-2 + RTE mixture (`mixture_config`), fully tuned, shared.
    Reads the built-in tasks from ../shared/data: only for tests that need it."""
    return trained_run(mixture_config, tiny_encoder, objective="multi_head", method="full")


@pytest.fixture(scope="session")
def chat_decoder(tmp_path_factory) -> str:
    """A tiny Llama with random weights and smollm2-135m-instruct's tokenizer (its ChatML template, <|im_end|>
    closing a turn): a chat run of it trains in seconds. The tokenizer comes from the registry model, prepared
    once into the session's TUNELAB_HOME."""
    from tunelab.models.loading import prepare

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        smollm2 = prepare("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = LlamaConfig(
        **{**TINY_SHAPE, "vocab_size": len(tokenizer), "max_position_embeddings": 512},
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return _save(_seeded(lambda: LlamaForCausalLM(config)), smollm2, tmp_path_factory.mktemp("tiny-chat-llama"))


@pytest.fixture(scope="session")
def chat_run(trained_run, chat_decoder):
    """`chat_run(method, data="chat", **data)`: a tiny chat run (`chat_config`) on ../shared/data/DATA, shared."""
    return lambda method, data="chat", **settings: trained_run(
        chat_config, chat_decoder, SHARED_DATA / data, method=method, **settings
    )


@pytest.fixture(scope="session")
def preference_file(tmp_path_factory) -> Path:
    """80 preference pairs on one learnable pattern (`preference_rows`)."""
    return write_jsonl(tmp_path_factory.mktemp("preferences") / "pairs.jsonl", preference_rows())


@pytest.fixture(scope="session")
def preference_run(trained_run, chat_decoder, preference_file):
    """`preference_run(method="lora", **evaluation)`: a tiny DPO run of the tiny chat decoder (`preference_config`),
    scored before and after on its 8 held-out pairs, shared."""
    return lambda method="lora", **evaluation: trained_run(
        preference_config, chat_decoder, preference_file, method=method, **evaluation
    )
