"""`tunelab serve` with the real models: two LoRA runs of smollm2-135m-instruct on one base and a minilm-l6
classifier, driven by the official `openai` client and raw HTTP, and a bounded load test over both adapters."""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI

from tunelab.run_commands import predict_run

from helpers import SHARED_DATA, session_home
from serving import (
    README_PORT,
    call,
    readme_curl,
    readme_serving_blocks,
    running_server,
    short_lora_run,
    short_sentiment_run,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
    ),
]
PROMPTS = [
    "What is the capital of France?",
    "Name a colour.",
    "Say hello in French.",
    "What is 2 + 2?",
    "Name an animal that can fly.",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short LoRA runs of smollm2 (different seeds: different adapters, one base) and a minilm classifier."""
    folder = tmp_path_factory.mktemp("serve-real")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        dialogsum = SHARED_DATA / "dialogsum"
        summarise = [short_lora_run(folder, dialogsum, seed, f"summarise-{seed}") for seed in (1, 2)]
        sentiment = short_sentiment_run(folder, SHARED_DATA / "sst2")
    return {"one": summarise[0], "two": summarise[1], "sentiment": sentiment}


@pytest.fixture(scope="module")
def server(runs):
    targets = [f"{name}={run.path}" for name, run in runs.items()]
    with running_server(targets, "--api-key", "k3y", "--max-tokens-cap", "32") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="k3y", max_retries=0)


def test_the_openai_client_lists_the_runs_and_their_one_base(client):
    """The LoRA runs' base is listed, not the classifier's: with its adapter off, its head is untrained."""
    assert {model.id for model in client.models.list()} == {"smollm2-135m-instruct", "one", "two", "sentiment"}


def test_chat_applies_the_chat_template_and_streams(client):
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        max_tokens=12,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "Paris" in reply.choices[0].message.content and reply.usage.completion_tokens > 0
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="one", max_tokens=12, stream=True, messages=[{"role": "user", "content": PROMPTS[0]}]
        )
        if chunk.choices
    ]
    whole = client.chat.completions.create(
        model="one", max_tokens=12, messages=[{"role": "user", "content": PROMPTS[0]}]
    )
    assert len(pieces) > 2 and "".join(pieces) == whole.choices[0].message.content


def test_completions_and_a_record_through_the_runs_template(client, runs):
    text = client.completions.create(model="two", prompt="The weather today is", max_tokens=8).choices[0].text
    assert isinstance(text, str) and text
    dialogue = "#Person1#: Shall we meet at noon?\n#Person2#: Yes, at the station."
    templated = client.chat.completions.create(
        model="two", max_tokens=16, messages=[], extra_body={"record": {"dialogue": dialogue}}
    )
    assert templated.choices[0].finish_reason in ("stop", "length") and templated.choices[0].message.content


def test_classify_answers_as_predict_and_raw_http_errors(server, runs, tmp_path):
    key = {"Authorization": "Bearer k3y"}
    texts = ["A moving, beautiful film.", "Dull and far too long."]
    inputs = tmp_path / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    predict_run(runs["sentiment"], str(inputs), str(tmp_path / "out.jsonl"))
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    status, body, _ = call(server, "/v1/classify", {"model": "sentiment", "input": texts}, key)
    assert status == 200 and [(d["label"], d["scores"]) for d in body["data"]] == [
        (e["prediction"], e["scores"]) for e in expected
    ]
    assert call(server, "/v1/classify", {"model": "sentiment", "input": "fine"})[0] == 401
    assert call(server, "/v1/chat/completions", {"model": "one", "messages": "hi"}, key)[0] == 400
    over_cap = {"model": "one", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    assert call(server, "/v1/chat/completions", over_cap, key)[0] == 400


def test_a_bounded_load_over_two_adapters_answers_every_request_as_alone(client, server):
    """8 concurrent clients x 5 requests, alternating adapters: no failure, every answer its solo answer."""
    requests = [(("one", "two")[i % 2], PROMPTS[i % len(PROMPTS)]) for i in range(40)]

    def ask(request):
        model, prompt = request
        reply = client.chat.completions.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": prompt}]
        )
        return reply.choices[0].message.content

    alone = {request: ask(request) for request in set(requests)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(ask, requests))
    assert together == [alone[request] for request in requests]
    assert (
        alone[("one", PROMPTS[0])] != alone[("two", PROMPTS[0])]
        or alone[("one", PROMPTS[1])] != alone[("two", PROMPTS[1])]
    )
    status, health, _ = call(server, "/health")
    assert status == 200 and health["queue_depth"] == 0


def test_the_readmes_examples_over_runs_answer_as_written(runs):
    """The README's serving examples over runs (the first, a registry model, is test_serve_readme.py's): its
    `tunelab serve` command with these runs in place of runs/<runN>, its curl commands through bash and its
    Python client snippet, all as written but for a free port in place of 8000."""
    serve, asks, python = readme_serving_blocks()[1:4]
    for placeholder, run in zip(("runs/<run1>", "runs/<run2>", "runs/<run3>"), ("one", "two", "sentiment")):
        assert placeholder in serve, serve
        serve = serve.replace(placeholder, str(runs[run].path))
    arguments = shlex.split(serve, comments=True)
    assert arguments[:2] == ["tunelab", "serve"] and "--port" not in arguments
    with running_server(arguments[2:]) as url:
        for ask in asks.strip().splitlines():
            reply = readme_curl(ask, url)
            assert "error" not in reply and (reply.get("choices") or reply.get("data")), reply
        assert f"http://{README_PORT}/v1" in python
        namespace: dict = {}
        exec(compile(python.replace(f"http://{README_PORT}", url), "README.md", "exec"), namespace)
        # What a 3-step adapter says may be nothing at all: that it answered, and streamed to the end, is the point.
        assert namespace["reply"].choices[0].finish_reason in ("stop", "length")
