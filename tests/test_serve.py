"""`tunelab serve` on tiny models, a real server on a loopback port: what it serves, that a batch answers each
request as it is answered alone, streaming, classification, and every limit and error in OpenAI's shape; that a
dropped stream stops generating, a 500 is logged and counted, and Schemathesis finds the server as its OpenAPI
schema says."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import socket
import threading
import time
import urllib.request

import pytest
import schemathesis
from schemathesis import GenerationMode
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelab import run_commands
from tunelab.runs import RunDir
from tunelab.serve.catalog import Catalog, load_catalog

from helpers import NEGATIVE, NOUNS, POSITIVE, session_home, write_jsonl
from serving import (
    call,
    conforming_statuses,
    in_process,
    running_server,
    schema_cases,
    served_schema,
    tiny_lora_run,
)

KEY = {"Authorization": "Bearer secret"}


@pytest.fixture(scope="module")
def runs(tiny_decoder, tiny_encoder, tmp_path_factory) -> dict[str, RunDir]:
    """Two LoRA runs of one tiny decoder (one base, two adapters) and a LoRA classifier."""
    folder = tmp_path_factory.mktemp("serve")
    rng = random.Random(0)
    words = POSITIVE + NEGATIVE + NOUNS
    copy = write_jsonl(
        folder / "copy.jsonl",
        [{"question": f"repeat the word {w}", "answer": w} for w in (rng.choice(words) for _ in range(48))],
    )
    sentiment = write_jsonl(
        folder / "sentiment.jsonl",
        [
            {
                "text": f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}",
                "label": "positive" if i % 2 else "negative",
            }
            for i in range(48)
        ],
    )
    generation = {"train": str(copy), "prompt_template": "{question}", "response_field": "answer", "max_length": 48}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return {
            "a": tiny_lora_run("copy-a", folder, tiny_decoder, generation, "causal_lm", 1),
            "b": tiny_lora_run("copy-b", folder, tiny_decoder, generation, "causal_lm", 2),
            "sentiment": tiny_lora_run(
                "sentiment", folder, tiny_encoder, {"train": str(sentiment), "max_length": 32}, "classification", 3
            ),
        }


@pytest.fixture(scope="module")
def server(runs):
    targets = [f"{name}={run.path}" for name, run in runs.items()]
    with running_server(
        targets,
        "--api-key",
        "secret",
        "--max-body-bytes",
        "4096",
        "--max-prompt-tokens",
        "64",
        "--max-tokens-cap",
        "16",
        "--batch-window-ms",
        "50",
    ) as url:
        yield url


def _chat(url: str, model: str, text: str, max_tokens: int = 6, **extra) -> tuple[int, dict, dict]:
    return call(
        url,
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, **extra},
        KEY,
    )


def test_every_run_is_a_model_and_the_shared_base_is_listed_once(server, runs, tiny_decoder):
    """The generators' shared base is listed; the LoRA classifier's is not, its head untrained with the adapter off."""
    status, body, _ = call(server, "/v1/models", headers=KEY)
    assert status == 200
    kinds = {model["id"]: model["kind"] for model in body["data"]}
    assert kinds == {tiny_decoder: "generate", "a": "generate", "b": "generate", "sentiment": "classify"}


def test_a_batch_answers_each_request_as_it_is_answered_alone(server):
    requests = [
        (model, f"repeat the word {word}", budget)
        for model, word, budget in zip("abab" * 3, POSITIVE + NEGATIVE, [6, 3, 6, 2, 5, 6] * 2)
    ]
    alone = [_chat(server, *request)[1]["choices"][0]["message"]["content"] for request in requests]
    together: list = [None] * len(requests)

    def ask(i: int) -> None:
        together[i] = _chat(server, *requests[i])[1]["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    assert len(set(alone)) > 1  # the adapters and prompts differ, so equal answers would not be a coincidence
    batches = _metric(server, "tunelab_batch_size_count")
    assert batches < 2 * len(requests)  # some requests shared a forward pass


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics") as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def test_a_record_is_answered_as_the_run_answers_it(server, runs, tmp_path):
    """A templated run called with its record's fields answers as `tunelab predict` does on that record."""
    record = {"question": "repeat the word film"}
    inputs = write_jsonl(tmp_path / "in.jsonl", [record])
    run_commands.predict_run(runs["b"], str(inputs), str(tmp_path / "out.jsonl"))
    expected = json.loads((tmp_path / "out.jsonl").read_text())["prediction"]
    status, body, _ = call(server, "/v1/chat/completions", {"model": "b", "record": record, "max_tokens": 6}, KEY)
    assert status == 200 and body["choices"][0]["message"]["content"] == expected


def test_streaming_sends_the_answer_piece_by_piece(server):
    answer = _chat(server, "b", "repeat the word moving", 8)[1]["choices"][0]["message"]["content"]
    request = urllib.request.Request(
        f"{server}/v1/chat/completions",
        method="POST",
        headers={"Content-Type": "application/json", **KEY},
        data=json.dumps(
            {
                "model": "b",
                "messages": [{"role": "user", "content": "repeat the word moving"}],
                "max_tokens": 8,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode(),
    )
    with urllib.request.urlopen(request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == answer
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in chunks[-1]


def test_classify_answers_as_predict_does(server, runs, tmp_path):
    texts = ["the film was great", "the ending was dull", "a wonderful cast"]
    inputs = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    run_commands.predict_run(runs["sentiment"], str(inputs), str(tmp_path / "out.jsonl"))
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    status, body, _ = call(server, "/v1/classify", {"model": "sentiment", "input": texts}, KEY)
    assert status == 200
    assert [(d["label"], d["scores"]) for d in body["data"]] == [(e["prediction"], e["scores"]) for e in expected]


CHAT = {"model": "a", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.mark.parametrize(
    "body, headers, status, param, code",
    [
        (CHAT, {}, 401, None, "missing_api_key"),
        (CHAT, {"Authorization": "Bearer wrong"}, 401, None, "invalid_api_key"),
        (b'{"model": "a", "messages": [', KEY, 400, None, "invalid_json"),
        ({**CHAT, "max_tokens": "many"}, KEY, 400, "max_tokens", "invalid_value"),
        ({**CHAT, "n": 2}, KEY, 400, "n", "invalid_value"),
        ({**CHAT, "logprobs": True}, KEY, 400, "logprobs", "unsupported_parameter"),
        ({**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, KEY, 400, "messages[0].role", "invalid_value"),
        ({**CHAT, "model": "c"}, KEY, 404, "model", "model_not_found"),
        ({**CHAT, "model": "sentiment"}, KEY, 400, "model", "wrong_endpoint"),
        ({**CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}, KEY, 413, None, "body_too_large"),
        (
            {**CHAT, "messages": [{"role": "user", "content": "word " * 200}]},
            KEY,
            400,
            "messages",
            "context_length_exceeded",
        ),
        ({**CHAT, "max_tokens": 17}, KEY, 400, "max_tokens", "max_tokens_exceeded"),
        ({"model": "a", "record": {"answer": "x"}}, KEY, 400, "record", None),
        ({**CHAT, "messages": []}, KEY, 400, "messages", None),
    ],
)
def test_bad_requests_get_the_openai_error_shape_and_the_server_stays_up(server, body, headers, status, param, code):
    answered, error, _ = call(server, "/v1/chat/completions", body, headers)
    assert answered == status, error
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["message"]
    assert error["error"]["param"] == param and error["error"]["code"] == code
    assert call(server, "/health")[0] == 200


def test_classify_names_what_an_input_lacks(server):
    status, error, _ = call(server, "/v1/classify", {"model": "sentiment", "input": [{"review": "great"}]}, KEY)
    assert status == 400 and error["error"]["param"] == "input[0]" and "text" in error["error"]["message"]


def test_metrics_count_requests_by_status_and_expose_queue_and_latency(server):
    _chat(server, "a", "repeat the word film")
    call(server, "/v1/chat/completions", {**CHAT, "model": "nope"}, KEY)
    with urllib.request.urlopen(f"{server}/metrics") as response:
        text = response.read().decode()
    assert 'tunelab_requests_total{endpoint="/v1/chat/completions",model="a",status="200"}' in text
    assert 'status="404"' in text and "tunelab_queue_depth " in text and "tunelab_request_seconds_bucket" in text
    assert "tunelab_generated_tokens_total" in text


def test_a_full_queue_is_429_with_retry_after_and_a_slow_request_504(runs):
    """Two requests share a forward pass and one may wait, so a burst overflows the queue; a lone request then
    waits a second for company, longer than its half-second timeout."""
    with running_server(
        [f"a={runs['a'].path}"],
        "--max-batch",
        "2",
        "--queue-size",
        "1",
        "--batch-window-ms",
        "1000",
        "--timeout",
        "0.5",
    ) as url:
        answers: list = []

        def ask() -> None:
            answers.append(call(url, "/v1/completions", {"model": "a", "prompt": "repeat", "max_tokens": 8}))

        threads = [threading.Thread(target=ask) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = [status for status, _, _ in answers]
        assert 429 in statuses and set(statuses) <= {200, 429, 504}, statuses
        full = next(body for status, body, _ in answers if status == 429)
        assert full["error"]["code"] == "queue_full" and "--queue-size" in full["error"]["message"]
        assert next(headers for status, _, headers in answers if status == 429)["retry-after"] == "1"
        time.sleep(2.5)  # what the burst left in the queue is drained (each wait for company lasts 1 s)
        status, slow, _ = call(url, "/v1/completions", {"model": "a", "prompt": "repeat", "max_tokens": 8})
        assert status == 504 and slow["error"]["code"] == "request_timeout" and "--timeout" in slow["error"]["message"]
        assert call(url, "/health")[0] == 200


LOCAL = {"api_key": "secret", "max_body_bytes": 4096, "max_prompt_tokens": 64, "max_tokens_cap": 4}
"""A server whose --max-tokens-cap (4) is below the --default-max-tokens (128)."""


@pytest.fixture(scope="module")
def catalog(runs) -> Catalog:
    """A LoRA generator (its base listed too) and a LoRA classifier, loaded once for the in-process servers."""
    return load_catalog([f"a={runs['a'].path}", f"sentiment={runs['sentiment'].path}"])


@pytest.fixture(scope="module")
def local(catalog):
    with in_process(catalog, **LOCAL) as url:
        yield url


SERVED = {"/v1/chat/completions": "a", "/v1/completions": "a", "/v1/classify": "sentiment"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_the_server_as_its_openapi_schema_says(local, mode):
    """Requests generated from `/openapi.json`, valid ones and invalid ones: every answer, 200s and errors, has
    the published status, content type, headers and body schema; nothing is a 5xx; an invalid request is refused,
    and one without the key is a 401. (A valid request may still be a 400 the schema cannot foresee: a prompt over
    the token limit, a record without the template's fields; so schemathesis' positive_data_acceptance is off.)"""
    answered = conforming_statuses(schema_cases(served_schema(local), mode, SERVED), 120, KEY)
    assert answered[200] and answered[400], answered


CHATTED = {"model": "a", "messages": [{"role": "user", "content": "repeat the word film"}]}
COMPLETED = {"model": "a", "prompt": "repeat the word film", "max_tokens": 3}
ANSWERED = [
    ("/v1/chat/completions", CHATTED),
    ("/v1/chat/completions", {**CHATTED, "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/completions", COMPLETED),
    ("/v1/completions", {**COMPLETED, "stream": True}),
    ("/v1/classify", {"model": "sentiment", "input": ["a great film", "a dull film"]}),
]


@pytest.mark.parametrize("path, body", ANSWERED)
def test_every_answer_is_what_the_schema_publishes(local, path, body):
    """The 200 of each endpoint, its JSON body or each event of its stream, checked by Schemathesis against the
    schema (random requests seldom hold a prompt the model can answer)."""
    operation = schemathesis.openapi.from_url(f"{local}/openapi.json")[path]["POST"]
    assert operation.Case(body=body).call_and_validate(headers=KEY).status_code == 200


def test_the_schema_publishes_every_answer_and_no_422(local):
    schema = call(local, "/openapi.json")[1]
    assert "422" not in json.dumps(schema["paths"])
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/classify"):
        responses = schema["paths"][path]["post"]["responses"]
        assert sorted(responses) == ["200", "400", "401", "404", "413", "429", "504"], path
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"] != {}
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in schema["paths"][path]["post"]["responses"]["200"]["content"]
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert schema["components"]["schemas"]["ChatRequest"]["properties"]["model"]["examples"][-1] == "a"
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/nowhere", None, 404, "not_found"),
        ("/v1/chat/completions", None, 405, "method_not_allowed"),  # a GET
        ("/v1/completions", b'{"model": "a", "prompt": "caf\xe9"}', 400, "invalid_json"),  # Latin-1, not UTF-8
    ],
)
def test_the_routers_own_errors_are_in_openai_shape(local, path, body, status, code):
    answered, error, _ = call(local, path, body, KEY)
    assert answered == status and set(error) == {"error"}, error
    assert error["error"]["code"] == code and error["error"]["message"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/classify", {"model": "sentiment", "input": []}, "input"),
        ("/v1/completions", {"model": "a", "prompt": "hi", "temperature": 1, "seed": 2**70}, "seed"),
        ("/v1/completions", {"model": "a", "prompt": "hi", "temperature": 1, "seed": -1}, "seed"),
    ],
)
def test_requests_that_were_500s_are_400s_naming_the_field(local, path, body, param):
    status, error, _ = call(local, path, body, KEY)
    assert status == 400 and error["error"]["param"] == param, error


def test_every_seed_torch_takes_is_served_and_a_tiny_temperature_is_greedy(local):
    """2**64 - 1 is the largest seed torch's generator takes; a temperature of 1e-300 is 0 in float32, which
    once left torch no distribution to sample."""
    asked = {"model": "a", "prompt": "repeat the word film", "max_tokens": 4}
    status, sampled, _ = call(local, "/v1/completions", {**asked, "temperature": 1, "seed": 2**64 - 1}, KEY)
    assert status == 200, sampled
    greedy = call(local, "/v1/completions", asked, KEY)[1]["choices"][0]["text"]
    status, tiny, _ = call(local, "/v1/completions", {**asked, "temperature": 1e-300}, KEY)
    assert status == 200 and tiny["choices"][0]["text"] == greedy


def test_a_request_without_max_tokens_gets_the_default_up_to_the_cap(local):
    """--default-max-tokens (128) above --max-tokens-cap (4) once refused every request that gave no max_tokens."""
    status, body, _ = call(local, "/v1/completions", {"model": "a", "prompt": "repeat the word film"}, KEY)
    assert status == 200 and body["usage"]["completion_tokens"] <= LOCAL["max_tokens_cap"], body


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics") as response:
        return response.read().decode()


def _sample(text: str, series: str) -> float:
    """The value of one series in a /metrics page (0 when it is not there yet)."""
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series + " "))


def test_unknown_models_and_paths_share_one_metrics_label_each(local):
    unknown = 'tunelab_requests_total{endpoint="/v1/chat/completions",model="unknown",status="404"}'
    unrouted = 'tunelab_requests_total{endpoint="unrouted",model="-",status="404"}'
    before = _metrics(local)
    for name in ("nope-1", "nope-2"):
        assert call(local, "/v1/chat/completions", {**CHAT, "model": name}, KEY)[0] == 404
    assert call(local, "/v1/unrouted-path-1", headers=KEY)[0] == 404
    after = _metrics(local)
    assert _sample(after, unknown) == _sample(before, unknown) + 2
    assert _sample(after, unrouted) == _sample(before, unrouted) + 1
    assert "nope-1" not in after and "unrouted-path-1" not in after


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_request_the_server_fails_on_is_a_500_logged_and_counted(catalog, caplog, batching):
    """A model that fails while answering (on the static path through its `answering` context, on the continuous
    one when its lane sets it up for a step) answers that request with a 500, logged and counted."""

    def failing(*args, **options):
        raise RuntimeError("the model is gone")

    entry = catalog.models["a"]
    broken = Catalog()
    broken.models = {
        "broken": dataclasses.replace(
            entry, id="broken", answering=failing, lane=dataclasses.replace(entry.lane, setting=failing)
        )
    }
    caplog.set_level(logging.INFO, logger="tunelab.serve")
    with in_process(broken, batching=batching) as url:
        status, error, _ = call(url, "/v1/chat/completions", {**CHAT, "model": "broken"})
        text = _metrics(url)
    assert (
        status == 500 and error["error"]["type"] == "server_error" and "the model is gone" in error["error"]["message"]
    )
    assert _sample(text, 'tunelab_requests_total{endpoint="/v1/chat/completions",model="broken",status="500"}') == 1
    assert any('"POST /v1/chat/completions" 500 model=broken' in line for line in caplog.messages), caplog.messages


def test_a_dropped_stream_stops_generating(catalog, tiny_decoder):
    """The client reads the first piece of a 2000-token stream and hangs up: the server counts the stream as
    abandoned and has generated a small part of the answer, not all of it. (The untrained base never ends on
    EOS, so without the cancel its row would run to its budget.)"""
    budget = 2000
    with in_process(catalog, max_tokens_cap=budget) as url:
        body = json.dumps(
            {"model": tiny_decoder, "prompt": "repeat the word film", "max_tokens": budget, "stream": True}
        ).encode()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
            client.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            received = b""
            while received.count(b"data: ") < 2:  # the role chunk, then the first piece of text
                received += client.recv(4096)
        generated = f'tunelab_generated_tokens_total{{model="{tiny_decoder}"}}'
        for _ in range(600):  # the worker reaches the next token and ends the row; give it up to a minute
            text = _metrics(url)
            if generated in text:
                break
            time.sleep(0.1)
    assert _sample(text, f'tunelab_abandoned_streams_total{{model="{tiny_decoder}"}}') == 1
    assert 1 <= _sample(text, generated) < budget / 10, text


@pytest.fixture(scope="module")
def word_model(tmp_path_factory) -> str:
    """A tiny decoder whose word-level tokenizer adds no special tokens, so an empty prompt has no tokens at all
    (as with SmolLM2's)."""
    words = ["[PAD]", "[UNK]", "</s>", *POSITIVE, *NEGATIVE, *NOUNS]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("word-model")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    ).save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        pad_token_id=0,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_prompt_is_a_400_before_any_stream_starts(word_model, stream):
    with in_process(load_catalog([f"words={word_model}"])) as url:
        status, error, headers = call(url, "/v1/completions", {"model": "words", "prompt": "", "stream": stream})
        assert call(url, "/v1/completions", {"model": "words", "prompt": "great film", "max_tokens": 2})[0] == 200
    assert status == 400 and error["error"]["param"] == "prompt", error
    assert headers["content-type"] == "application/json"
