"""Continuous batching in `tunelab serve` (issue 33): requests join the decoding batch at the next step and leave
when they end; classifications are answered between steps; LoRA rows of one base (and the base) share a batch,
an adapter folded into the weights while it is alone. Tiny runs of conftest's tiny decoder and encoder."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from tunelab.eval.generate import Row
from tunelab.records import Record
from tunelab.serve.batcher import Batcher, Job
from tunelab.serve.catalog import Catalog, load_catalog
from tunelab.serve.decoding import PrefixCache
from tunelab.serve.folding import BASE

from helpers import method_config
from serving import call, in_process

LONG = 1500
"""Tokens of a long answer: the untrained base never ends on EOS, so it runs to this budget (seconds)."""


def copy_run(trained_run, tiny_decoder, copy_task_file, seed: int, method: str = "lora"):
    """The tiny decoder tuned with `method` on the copy task (4 steps at 1e-2), shared per session; each seed a
    different adapter on the same base."""
    return trained_run(
        method_config,
        "causal_lm",
        tiny_decoder,
        copy_task_file,
        method=method,
        max_steps=4,
        learning_rate=1e-2,
        seed=seed,
    )


@pytest.fixture(scope="module")
def catalog(trained_run, tiny_decoder, copy_task_file, classifier_run):
    """Three LoRA runs of the tiny decoder (one base, three adapters, the base served too) and a LoRA classifier."""
    adapters = {
        name: copy_run(trained_run, tiny_decoder, copy_task_file, seed, "lora")
        for name, seed in (("a", 1), ("b", 2), ("c", 3))
    }
    targets = [f"{name}={run.path}" for name, run in adapters.items()]
    return load_catalog([*targets, f"sentiment={classifier_run('lora').path}"])


def prompt(catalog, model: str, text: str) -> list[int]:
    return catalog.models[model].tokenizer(text)["input_ids"]


def generation(catalog, model: str, text: str, budget: int, sampling=None, on_text=None) -> Job:
    return Job(catalog.models[model], Row(prompt(catalog, model, text), budget, [], on_text), sampling)


def started(job: Job) -> threading.Event:
    """An event set once the job's row has streamed its first text, i.e. it is decoding."""
    event = threading.Event()
    job.row.on_text = lambda text: event.set()
    return event


def base_id(catalog) -> str:
    return next(model for model, entry in catalog.models.items() if entry.lane and entry.lane.adapter == BASE)


def long_decoding(catalog, batcher: Batcher) -> Job:
    """A long generation submitted to `batcher`, returned once it is decoding."""
    long = generation(catalog, base_id(catalog), "repeat the word film", LONG)
    decoding = started(long)
    batcher.submit(long)
    assert decoding.wait(60)
    return long


def test_a_short_request_returns_while_a_long_one_decodes_and_cancelling_the_long_one_frees_its_slot(catalog):
    batcher = Batcher(max_batch=2)
    long = long_decoding(catalog, batcher)
    short = batcher.submit(generation(catalog, "a", "repeat the word good", 2))
    assert short.result(timeout=60).tokens <= 2
    assert not long.future.done(), "the short request waited for the long one"
    long.cancel()
    cut = long.future.result(timeout=60)
    assert cut.tokens < LONG


def test_a_cancelled_row_gives_its_slot_to_a_waiting_request(catalog):
    """With one slot, a second request waits while the first decodes, and is answered once the first is
    cancelled (as when its client disconnects); a third, cancelled while it waits, is dropped, never run."""
    batcher = Batcher(max_batch=1)
    long = long_decoding(catalog, batcher)
    waiting = batcher.submit(generation(catalog, "a", "repeat the word good", 2))
    gone = generation(catalog, "b", "repeat the word bad", 2)
    batcher.submit(gone)
    time.sleep(0.3)
    assert not waiting.done() and batcher.depth() == 2, "the requests did not wait for the slot"
    gone.cancel()  # its client went away while it waited
    long.cancel()
    assert waiting.result(timeout=60).tokens <= 2
    assert long.future.result(timeout=60).tokens < LONG
    assert gone.future.cancelled() and batcher.depth() == 0


def test_a_classification_is_answered_between_decoding_steps(catalog):
    batcher = Batcher()
    long = long_decoding(catalog, batcher)
    entry = catalog.models["sentiment"]
    spec = entry.task(None)
    classified = batcher.submit(
        Job(entry, records=[Record({spec.input_fields[0]: "the film was good"}, "input 0")], spec=spec)
    )
    assert classified.result(timeout=60)[0]["label"] in ("positive", "negative")
    assert not long.future.done(), "the classification waited for the generation"
    long.cancel()
    long.future.result(timeout=60)


REQUEST_WORDS = ["good", "bad", "film", "plot", "great", "dull", "actor", "song"]
REQUESTS = [
    (model, f"repeat the word {word}", budget)
    for model, word, budget in zip(
        ["a", "b", "c", "base", "a", "b", "c", "a"] * 2,
        REQUEST_WORDS * 2,
        [6, 3, 12, 9, 2, 8, 5, 12, 4, 7, 10, 3, 12, 6, 1, 9],
    )
]


def recording_lanes(catalog, seen: list[set[str]]):
    """The catalog with every lane's setting wrapped to record the adapters of each forward pass."""
    recorded = Catalog()
    for model, entry in catalog.models.items():
        if entry.lane is None:
            recorded.models[model] = entry
            continue

        def setting(adapters, decoding=True, original=entry.lane.setting):
            seen.append(set(adapters))
            return original(adapters, decoding)

        recorded.models[model] = dataclasses.replace(entry, lane=dataclasses.replace(entry.lane, setting=setting))
    return recorded


def test_greedy_answers_under_mixed_adapter_load_equal_the_answers_alone(catalog):
    """Sixteen requests over three adapters and the base, arriving while others decode (so rows join and leave a
    running batch, of several adapters at once): each answer is the one the request gets alone."""
    named = {**catalog.models, "base": catalog.models[base_id(catalog)]}
    batcher = Batcher(max_batch=6)
    alone = []
    for model, text, budget in REQUESTS:
        alone.append(
            batcher.submit(Job(named[model], Row(named[model].tokenizer(text)["input_ids"], budget))).result(60)
        )
    seen: list[set[str]] = []
    recorded = recording_lanes(catalog, seen)
    named = {**recorded.models, "base": recorded.models[base_id(catalog)]}
    futures = []
    for i, (model, text, budget) in enumerate(REQUESTS):
        futures.append(batcher.submit(Job(named[model], Row(named[model].tokenizer(text)["input_ids"], budget))))
        if i % 4 == 3:
            time.sleep(0.05)  # the next ones arrive while these decode
    together = [future.result(timeout=120) for future in futures]
    assert [answer.text for answer in together] == [answer.text for answer in alone]
    assert [answer.tokens for answer in together] == [answer.tokens for answer in alone]
    assert any(len(adapters) >= 3 for adapters in seen), "no decoding step mixed adapters"


def test_a_seeded_sample_reproduces_alone_and_in_a_batch(catalog):
    batcher = Batcher()
    sampling = {"temperature": 1.5, "top_p": 0.95, "seed": 7}

    def sample() -> Job:
        return generation(catalog, "a", "repeat the word good", 12, sampling=sampling)

    first = batcher.submit(sample()).result(60).text
    second = batcher.submit(sample()).result(60).text
    others = [batcher.submit(generation(catalog, model, "repeat the word bad", 12)) for model in "bc"]
    in_batch = batcher.submit(sample()).result(60).text
    for other in others:
        other.result(60)
    unseeded = {
        batcher.submit(generation(catalog, "a", "repeat the word good", 12, {"temperature": 1.5})).result(60).text
        for _ in range(4)
    }
    assert first == second == in_batch
    assert len(unseeded) > 1, "unseeded samples should differ"


def test_folding_an_adapter_writes_its_delta_and_unfolding_gives_the_base_back_exactly(catalog):
    """An adapter alone in `STEADY` decoding steps is folded into the weights (answering as it does per row), and
    unfolding gives the base its weights back bit for bit."""
    lane = catalog.models["a"].lane
    model = lane.model
    folding = lane.setting.__self__
    ids = torch.tensor([prompt(catalog, "a", "repeat the word good")])
    folding.unfold()  # an earlier test's last batch may have left an adapter folded
    with torch.inference_mode():
        base_weights = {name: weight.clone() for name, weight in model.named_parameters() if "base_layer" in name}
        with folding.using({"a", "b"}) as per_row:
            assert per_row
            unfolded = model(input_ids=ids, adapter_names=["a"]).logits
        for _ in range(folding.STEADY - 1):  # one adapter alone: PEFT's active adapter until the batch is steady
            with folding.using({"a"}) as per_row:
                assert not per_row and folding.folded is None and model.active_adapter == "a"
                assert torch.allclose(model(input_ids=ids).logits, unfolded, atol=1e-5)
        with folding.using({"b"}, decoding=False) as per_row:  # a prefill neither folds nor resets the count
            assert not per_row and folding.folded is None and model.active_adapter == "b"
        with folding.using({"a"}) as per_row:
            assert not per_row and folding.folded == "a"
            folded = model(input_ids=ids).logits
        with folding.using({BASE}) as per_row:
            assert not per_row and folding.folded is None
            base = model(input_ids=ids).logits
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base, folded, atol=1e-4), "the adapter changes nothing: the test proves nothing"
    for name, weight in model.named_parameters():
        if "base_layer" in name:
            assert torch.equal(weight, base_weights[name]), f"{name} drifted after fold and unfold"


def test_classify_and_a_short_chat_return_before_a_long_generation_over_http(catalog):
    """The issue's head-of-line case, over HTTP: a long generation starts, then a classification and a 2-token
    chat are sent; both are answered while the long one still decodes."""
    finished = {}
    with in_process(catalog, max_tokens_cap=LONG) as url:

        def long_request():
            call(
                url,
                "/v1/completions",
                {"model": base_id(catalog), "prompt": "repeat the word film", "max_tokens": LONG},
            )
            finished["long"] = time.monotonic()

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.5)
        status, body, _ = call(url, "/v1/classify", {"model": "sentiment", "input": ["the film was good"]})
        finished["classify"] = time.monotonic()
        assert status == 200 and body["data"][0]["label"] in ("positive", "negative")
        status, body, _ = call(
            url,
            "/v1/chat/completions",
            {"model": "a", "messages": [{"role": "user", "content": "repeat the word good"}], "max_tokens": 2},
        )
        finished["chat"] = time.monotonic()
        assert status == 200 and body["usage"]["completion_tokens"] <= 2
        assert thread.is_alive(), "the long generation ended first: make it longer"
        thread.join(120)
    assert finished["classify"] < finished["long"] and finished["chat"] < finished["long"]


@pytest.mark.parametrize(
    "methods, batching",
    [
        (("dora", "dora"), "a batch per adapter"),
        (("ia3", "ia3"), "a batch per adapter"),
        (("prefix", "prefix"), "static, per adapter"),
        (("lora", "dora"), "a batch per adapter"),
    ],
)
def test_every_adapter_type_on_a_shared_base_answers_as_alone(
    trained_run, tiny_decoder, copy_task_file, methods, batching
):
    """Two runs of each other PEFT method on one base: PEFT runs neither DoRA nor IA3 adapters per row, so each
    adapter decodes in a batch of its own; prefix tuning (virtual tokens in the cache) goes through `generate`,
    a batch per adapter. A LoRA and a DoRA adapter on one base take turns: the LoRA one folded into the weights,
    which are unfolded before the DoRA batch's step. In every case answers under load equal answers alone."""
    runs = [copy_run(trained_run, tiny_decoder, copy_task_file, seed, method) for seed, method in zip((1, 2), methods)]
    served = load_catalog([f"x={runs[0].path}", f"y={runs[1].path}"]).models
    lanes = [served[name].lane for name in "xy"]
    if batching == "a batch per adapter":
        assert lanes[0].batch != lanes[1].batch
    else:
        assert lanes == [None, None]
    requests = [
        (name, f"repeat the word {word}", budget)
        for name, word, budget in zip("xyxyxy", REQUEST_WORDS, [5, 2, 7, 3, 6, 4])
    ]
    batcher = Batcher()

    def job(name, text, budget) -> Job:
        return Job(served[name], Row(served[name].tokenizer(text)["input_ids"], budget))

    alone = [batcher.submit(job(*request)).result(60).text for request in requests]
    futures = [batcher.submit(job(*request)) for request in requests]
    assert [future.result(60).text for future in futures] == alone


def test_prompts_opening_alike_reuse_the_cached_beginning_and_answer_as_without_it(catalog):
    """Prompts sharing a long opening (a system prompt): the first ones cache its states, later ones are prefilled
    from them, several at once; every answer equals the one a server without a prefix cache gives."""
    opening = "you are a careful assistant and you always repeat the word you are given. " * 2
    requests = [
        (model, f"{opening}repeat the word {word}", budget)
        for model, word, budget in zip("abcab", REQUEST_WORDS, [6, 3, 8, 5, 7])
    ]
    requests += [("base", f"{opening}repeat the word {word}", 6) for word in REQUEST_WORDS[:2]]
    named = {**catalog.models, "base": catalog.models[base_id(catalog)]}

    def answers(batcher: Batcher, together: bool) -> list[str]:
        jobs = [Job(named[m], Row(named[m].tokenizer(text)["input_ids"], budget)) for m, text, budget in requests]
        if together:
            return [future.result(60).text for future in [batcher.submit(job) for job in jobs]]
        return [batcher.submit(job).result(60).text for job in jobs]

    uncached = answers(Batcher(prefix_cache_tokens=0), together=False)
    cached = Batcher()
    first = answers(cached, together=False)  # caches the opening, then reuses it one prompt at a time
    (prefixes,) = cached.prefixes.values()
    ids = named["a"].tokenizer(requests[0][1])["input_ids"]
    assert prefixes.longest("a", ids)[0] >= len(named["a"].tokenizer(opening)["input_ids"]) - PrefixCache.BLOCK
    assert first == uncached
    assert answers(cached, together=True) == uncached  # several prompts prefilled from the cache in one pass


def test_the_prefix_cache_keeps_to_its_capacity_and_forgets_an_unloaded_adapter():
    cache = PrefixCache(capacity=40)
    states = [(torch.zeros(1, 2, 30, 4), torch.zeros(1, 2, 30, 4))]
    cache.keep("a", list(range(30)), states)  # beginnings of 8, 16 and 24 tokens
    assert cache.longest("a", list(range(20)))[0] == 16 and cache.longest("b", list(range(20)))[0] == 0
    cache.keep("b", list(range(100, 130)), states)
    assert cache.tokens <= 40 and cache.longest("b", list(range(100, 125)))[0] == 24
    cache.forget("b")
    assert cache.longest("b", list(range(100, 125)))[0] == 0 and cache.tokens >= 0


def test_a_server_told_not_to_fold_runs_a_lone_adapter_unmerged(trained_run, tiny_decoder, copy_task_file):
    run = copy_run(trained_run, tiny_decoder, copy_task_file, 1, "lora")
    folding = load_catalog([f"a={run.path}"], fold_adapters=False).models["a"].lane.setting.__self__
    for _ in range(folding.STEADY + 1):
        with folding.using({"a"}) as per_row:
            assert not per_row and folding.folded is None
    assert folding.kept_bytes() == 0
