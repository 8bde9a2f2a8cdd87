"""`tunelab serve` on tiny models, a real server on a loopback port: what it serves, that a batch answers each
request as it is answered alone, streaming, classification, and every limit and error in OpenAI's shape."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tunelab import pipeline
from tunelab.config import build_config
from tunelab.runs import RunDir

from conftest import NEGATIVE, NOUNS, POSITIVE, write_jsonl
from helpers import session_home
from serving import call, running_server

KEY = {"Authorization": "Bearer secret"}


def _train(name: str, folder: Path, model: str, data: dict, task_type: str, seed: int) -> RunDir:
    return pipeline.train(
        build_config(
            {
                "name": name,
                "task_type": task_type,
                "output_dir": str(folder / "runs"),
                "model": {"name": model},
                "data": data,
                "method": {"name": "lora"},
                "eval": {"max_new_tokens": 6, "baselines": []},
                "training": {
                    "max_steps": 6,
                    "batch_size": 8,
                    "learning_rate": 1e-2,
                    "seed": seed,
                    "precision": "fp32",
                },
            }
        )
    )


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
            "a": _train("copy-a", folder, tiny_decoder, generation, "causal_lm", 1),
            "b": _train("copy-b", folder, tiny_decoder, generation, "causal_lm", 2),
            "sentiment": _train(
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


def test_every_run_is_a_model_and_the_shared_base_is_listed_once(server, runs, tiny_decoder, tiny_encoder):
    status, body, _ = call(server, "/v1/models", headers=KEY)
    assert status == 200
    kinds = {model["id"]: model["kind"] for model in body["data"]}
    assert kinds == {
        tiny_decoder: "generate",
        "a": "generate",
        "b": "generate",
        tiny_encoder: "classify",
        "sentiment": "classify",
    }


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
    pipeline.predict_run(runs["b"], str(inputs), str(tmp_path / "out.jsonl"))
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
    pipeline.predict_run(runs["sentiment"], str(inputs), str(tmp_path / "out.jsonl"))
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
        ({**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, KEY, 400, "messages.0.role", "invalid_value"),
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
    assert status == 400 and error["error"]["param"] == "input.0" and "text" in error["error"]["message"]


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
