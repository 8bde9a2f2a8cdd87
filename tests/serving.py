"""Starting `tunelab serve` for tests and the serving benchmark: a real server in a subprocess, on a free loopback
port, stopped afterwards; the short real runs (smollm2 LoRA, minilm classifier) that the serving, export and
portability tests and benchmarks use; and one target of every kind the server takes, built on the tiny models."""

from __future__ import annotations

import collections
import functools
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
README = Path(__file__).resolve().parents[1] / "README.md"
README_PORT = "127.0.0.1:8000"
"""The address the README's serving examples call: `tunelab serve`'s default, which a test replaces by a free port."""


CHAT_PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Say hello in French.",
    "What is 2 + 2?",
    "Name an animal that can fly.",
    "Summarise: the meeting moved to Friday.",
    "Give a synonym for happy.",
    "What do bees make?",
]
"""Short chat prompts for the serving and export benchmarks."""


def short_sentiment_run(output_dir: Path, sst2: Path, name: str = "sentiment"):
    """A 4-step minilm-l6 LoRA classifier on 64 SST-2 sentences. Returns its RunDir."""
    from tunelab.config import load_config
    from tunelab.pipeline import train

    overrides = [
        f"name={name}",
        f"output_dir={output_dir}",
        f"data.train={sst2 / 'train.jsonl'}",
        f"data.validation={sst2 / 'validation.jsonl'}",
        f"data.test={sst2 / 'test.jsonl'}",
        "data.max_train_examples=64",
        "data.max_eval_examples=16",
        "training.max_steps=4",
        "eval.baselines=[]",
    ]
    return train(load_config(CONFIGS / "sentiment-minilm-lora.yaml", overrides))


def short_lora_run(output_dir: Path, dialogsum: Path, seed: int, name: str):
    """A 3-step smollm2-135m-instruct LoRA run on 8 DialogSum records: seconds on a CPU, and each seed gives a
    different adapter over the same base. Returns its RunDir."""
    from tunelab.config import load_config
    from tunelab.pipeline import train

    overrides = [
        f"name={name}",
        f"output_dir={output_dir}",
        f"data.train={dialogsum / 'validation.jsonl'}",
        f"data.test={dialogsum / 'test.jsonl'}",
        "data.max_train_examples=8",
        "data.max_eval_examples=2",
        "data.max_length=192",
        "data.max_target_length=32",
        "training.max_steps=3",
        "training.batch_size=4",
        "training.precision=fp32",
        f"training.seed={seed}",
        "eval.baselines=[]",
        "eval.max_new_tokens=8",
        "training.learning_rate=1e-2",
    ]
    return train(load_config(CONFIGS / "dialogsum-smollm2-lora.yaml", overrides))


def tiny_lora_run(name: str, folder: Path, model: str, data: dict, task_type: str | None, seed: int):
    """Six LoRA steps of a tiny model (conftest's tiny_decoder or tiny_encoder) at 1e-2 into `folder`/runs, no
    baseline scored: each seed gives a different adapter over the same base, in seconds. `task_type` None: the kind
    is `data.kind`. Returns its RunDir."""
    from tunelab.config import build_config
    from tunelab.pipeline import train

    return train(
        build_config(
            {
                "name": name,
                **({"task_type": task_type} if task_type else {}),
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


def _tiny_run(folder: Path, name: str, model: str, method: str, task_type: str, data: dict, mixture=None):
    """Two training steps of a tiny model (conftest's tiny_encoder or tiny_decoder), no baseline scored: a run
    directory of the kind that `method` and `mixture` make, in seconds. The learning rate is small enough that a
    full fine-tune does not collapse onto the end-of-text token, so every generator still says something.
    Returns its RunDir."""
    from tunelab.config import build_config
    from tunelab.pipeline import train

    config = {
        "name": name,
        "task_type": task_type,
        "output_dir": str(folder / "runs"),
        "model": {"name": model},
        "method": {"name": method},
        "data": data,
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"},
        "eval": {"max_new_tokens": 4, "baselines": []},
    }
    return train(build_config({**config, "mixture": mixture} if mixture else config))


def _tiny_data(folder: Path) -> tuple[dict, dict]:
    """The data sections of a tiny classifier (sentiment words) and a tiny generator (repeat a word)."""
    from helpers import NEGATIVE, NOUNS, POSITIVE, write_jsonl

    sentiment = [
        {
            "text": f"the {NOUNS[i % 6]} was {(POSITIVE if i % 2 else NEGATIVE)[i % 6]}",
            "label": ("negative", "positive")[i % 2],
        }
        for i in range(16)
    ]
    copy = [{"question": f"repeat the word {word}", "answer": word} for word in POSITIVE + NEGATIVE]
    return (
        {"train": str(write_jsonl(folder / "sentiment.jsonl", sentiment)), "max_length": 32},
        {
            "train": str(write_jsonl(folder / "copy.jsonl", copy)),
            "prompt_template": "{question}",
            "response_field": "answer",
            "max_length": 48,
        },
    )


TINY_MIXTURE = {
    "tasks": [{"task": "sst2", "max_examples": 8}, {"task": "rte", "max_examples": 8}],
    "eval_examples": 2,
    "validation_examples": 2,
}
"""The two built-in tasks (from ../shared/data) the tiny mixture runs learn; their served ids end in :sst2, :rte."""


def tiny_targets(folder: Path, encoder: str, decoder: str) -> dict[str, str]:
    """One TARGET of every kind `tunelab serve` takes but a registry name, on the tiny models: a model folder, a
    full and a LoRA fine-tune of the decoder, classifiers tuned with full, head and LoRA, a multi-head and a
    task-adapters mixture, and the LoRA run merged into a model folder. Returns {kind: TARGET}."""
    from tunelab.run_commands import merge_run

    classifier, generator = _tiny_data(folder)
    runs = {
        "full run": _tiny_run(folder, "full", decoder, "full", "causal_lm", generator),
        "lora run": _tiny_run(folder, "lora", decoder, "lora", "causal_lm", generator),
        **{
            f"classifier {method}": _tiny_run(
                folder, f"classifier-{method}", encoder, method, "classification", classifier
            )
            for method in ("full", "head", "lora")
        },
        "multi-head mixture": _tiny_run(
            folder,
            "multi-head",
            encoder,
            "full",
            "classification",
            {"max_length": 64},
            {**TINY_MIXTURE, "architecture": "multi_head"},
        ),
        "task-adapters mixture": _tiny_run(
            folder,
            "task-adapters",
            decoder,
            "lora",
            "causal_lm",
            {"max_length": 96},
            {**TINY_MIXTURE, "architecture": "task_adapters"},
        ),
    }
    merged = merge_run(runs["lora run"], folder / "merged")
    return {
        "model folder": decoder,
        **{kind: str(run.path) for kind, run in runs.items()},
        "merged model": str(merged),
    }


ENDPOINTS = {
    "/v1/chat/completions": "generate",
    "/v1/completions": "generate",
    "/v1/classify": "classify",
    "/v1/score": "score",
}
"""Each endpoint and the kind of model id it answers."""

ANY_RECORD = {"text": "the film was great", "sentence1": "A cat sleeps.", "sentence2": "An animal sleeps."}
"""One classify input for every classifier served here: its fields are the tiny sentiment runs' and SST-2's
(text) and RTE's (sentence1, sentence2); a classifier reads its own and ignores the rest."""


def _request(endpoint: str, model: str) -> dict:
    if endpoint == "/v1/classify":
        return {"model": model, "input": [ANY_RECORD]}
    if endpoint == "/v1/score":
        answered = [{"role": "user", "content": "repeat the word film"}, {"role": "assistant", "content": "film"}]
        return {"model": model, "messages": answered}
    if endpoint == "/v1/completions":
        return {"model": model, "prompt": "repeat the word film", "max_tokens": 6}
    return {"model": model, "messages": [{"role": "user", "content": "repeat the word film"}], "max_tokens": 6}


def _answer(endpoint: str, body: dict) -> str:
    if endpoint == "/v1/score":
        (scored,) = body["data"]
        return str(scored["score"])
    if endpoint == "/v1/classify":
        (prediction,) = body["data"]
        return prediction["label"] if sum(prediction["scores"].values()) > 0.999 else ""
    choice = body["choices"][0]
    return choice["text"] if endpoint == "/v1/completions" else choice["message"]["content"]


def endpoint_outcomes(ask, models: dict[str, str]) -> dict[tuple[str, str], str]:
    """What every endpoint does for every model id ({id: 'generate' | 'classify' | 'score'}): 'answered' (a 200 with a
    non-empty answer), 'refused' (OpenAI's 400 for the wrong endpoint), or the status and body seen otherwise.
    `ask(endpoint, body)` sends one request and returns (status, JSON body): a server, or the UI's test client."""
    outcomes = {}
    for model in models:
        for endpoint in ENDPOINTS:
            status, body = ask(endpoint, _request(endpoint, model))
            error = (body or {}).get("error") if isinstance(body, dict) else None
            if status == 200 and _answer(endpoint, body):
                outcomes[model, endpoint] = "answered"
            elif status == 400 and error and set(error) == {"message", "type", "param", "code"}:
                outcomes[model, endpoint] = "refused" if error["code"] == "wrong_endpoint" else f"400: {error}"
            else:
                outcomes[model, endpoint] = f"{status}: {body}"
    return outcomes


def expected_outcomes(models: dict[str, str]) -> dict[tuple[str, str], str]:
    """`endpoint_outcomes` of a server that answers every id on the endpoints of its kind and refuses the rest."""
    return {
        (model, endpoint): "answered" if kind == answers else "refused"
        for model, kind in models.items()
        for endpoint, answers in ENDPOINTS.items()
    }


SCHEMA_REJECTIONS = {
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "404", "409", "413", "429", "503"]}}
}
"""How `tunelab serve` refuses an invalid request, as Schemathesis config: a 400 naming the field, or before reading
it, a 413 when the body is over --max-body-bytes (long generated strings often are; schemathesis' own list has no
413); an adapter unload's 409 (in flight) and a load's 503 (every adapter busy) too."""


def served_schema(url: str):
    """The Schemathesis schema a server publishes at /openapi.json, with SCHEMA_REJECTIONS."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig

    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=SchemathesisConfig.from_dict(SCHEMA_REJECTIONS))


def _served_model(case, use: bool, served: dict[str, str]):
    """Half the generated requests name a served model (the schema's `model` examples), so that the fuzzing reaches
    the model and its 200s, not only the 404 of a random name. A request without `model`, or with a `model` that is
    not a string, keeps it: an invalid request must stay invalid (the larger Schemathesis bench once had an array
    `model`, the only invalid part of its request, replaced, and then counted the valid request's 200 as a failure)."""
    if use and isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and case.path in served:
        case.body["model"] = served[case.path]
    return case


def schema_cases(schema, mode, served: dict[str, str]):
    """A Hypothesis strategy of the requests Schemathesis generates from `schema` (a whole schema or one
    operation) in `mode` (positive or negative), half of them naming the model `served` gives for their path."""
    from hypothesis import strategies

    return strategies.builds(
        functools.partial(_served_model, served=served),
        schema.as_strategy(generation_mode=mode),
        strategies.booleans(),
    )


def call_and_check(case, headers: dict):
    """Send a generated request and check its answer against the schema: status, content type, headers, body, no
    5xx, an invalid request refused, one without the key a 401. A valid request may still be a 400 the schema cannot
    foresee (a prompt over the token limit, a record without the template's fields), so schemathesis'
    positive_data_acceptance is off. Returns (response, None), or (response, schemathesis' FailureGroup of the
    failed checks, its message a report with the request as a curl command): a test raises it, a bench counts it."""
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.core.failures import FailureGroup

    response = case.call(headers=headers)
    try:
        case.validate_response(
            response,
            headers=headers,
            excluded_checks=[positive_data_acceptance],
            transport_kwargs={"headers": headers},
        )
    except FailureGroup as failed:
        return response, failed
    return response, None


def conforming_statuses(cases, max_examples: int, headers: dict) -> collections.Counter:
    """Send `max_examples` of the generated requests `cases` (a Hypothesis strategy, e.g. `schema_cases`) with
    `headers`, each answer checked by `call_and_check`; the first failure is raised. Returns how often each status
    came back, for the test to assert what was reached."""
    from hypothesis import given

    answered: collections.Counter = collections.Counter()

    @given(case=cases)
    @fuzz_settings(max_examples=max_examples)
    def conforms(case):
        response, failed = call_and_check(case, headers)
        answered[response.status_code] += 1
        if failed:
            raise failed

    conforms()
    return answered


def fuzz_settings(max_examples: int):
    """Hypothesis settings of a Schemathesis run against a server: `max_examples`, no deadline (a generation takes
    its time), no health check (a server is slow by Hypothesis' measure), nothing remembered between runs and the
    same examples every run."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def readme_serving_blocks() -> list[str]:
    """The code blocks of the README's Serving section, in order, each with its continuation lines (a trailing
    backslash) joined, as a shell reads them."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Serving (`tunelab serve`)") :]
    section = section[: section.index("\n### ")]
    return [block.replace("\\\n", "") for block in re.findall(r"```[a-z]*\n(.*?)```", section, re.S)]


def readme_curl(command: str, url: str) -> dict:
    """One of the README's curl commands, run through bash as written but calling `url` (a test server) in place of
    README_PORT; its JSON answer."""
    return json.loads(readme_curl_text(command, url))


def readme_curl_text(command: str, url: str) -> str:
    """`readme_curl`'s answer as the text it is (a load or unload answers a line of text)."""
    assert command.startswith("curl ") and f"http://{README_PORT}/" in command, command
    answered = subprocess.run(
        ["bash", "-c", command.replace(f"http://{README_PORT}", url)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return answered.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(targets: list[str], *options: str, startup_seconds: float = 300, port: int | None = None):
    """`tunelab serve TARGETS OPTIONS` on 127.0.0.1 (a free port unless given); yields its base URL once /health
    answers, and stops it. Its output is read as it comes (the last lines kept for an error): a pipe nobody
    reads fills up after some 64 KB of access log, and the server then blocks on its next log line."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "serve", *targets, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: collections.deque[str] = collections.deque(maxlen=200)
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_seconds
    try:
        while True:
            if process.poll() is not None:
                reader.join(timeout=10)
                raise RuntimeError(f"the server exited with {process.returncode}:\n{''.join(output)[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /health in time")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def in_process(catalog, **options):
    """The app serving `catalog` (a `tunelab.serve.catalog.Catalog`, `ServeSettings` from `options`) on a loopback
    port in this process's own thread, so a test can read its log, serve entries built in the test, and serve
    methods or kinds registered in the test; yields the base URL."""
    import uvicorn

    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(catalog, ServeSettings(**options)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the in-process server stopped while starting"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def call(
    url: str, path: str, body: bytes | dict | None = None, headers: dict | None = None, timeout: float = 120
) -> tuple[int, dict, dict]:
    """A raw HTTP request: (status, JSON body, response headers with lower-case names), whatever the status."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path,
        data=data,
        method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), _lower(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), _lower(error.headers)


def _lower(headers) -> dict:
    return {name.lower(): value for name, value in headers.items()}
