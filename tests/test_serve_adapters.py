"""Adapters loaded and unloaded while `tunelab serve` runs (vLLM's `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter`), on tiny LoRA runs: a loaded adapter is listed at once and answers as it does when
served from the start; an unloaded one is gone; every refusal names its field; `--max-adapters` unloads the least
recently used adapter with no request in flight, and refuses while every one is busy."""

from __future__ import annotations

import json
import random
import shlex
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from schemathesis import GenerationMode

from tunelab import cli
from tunelab.config import ConfigError
from tunelab.eval.generate import Row
from tunelab.runs import RunDir
from tunelab.serve.app import create_app
from tunelab.serve.batcher import Batcher, Job
from tunelab.serve.catalog import CatalogError, load_catalog
from tunelab.serve.settings import ServeSettings

from helpers import NEGATIVE, NOUNS, POSITIVE, session_home, write_jsonl
from serving import (
    call,
    conforming_statuses,
    in_process,
    readme_curl_text,
    readme_serving_blocks,
    running_server,
    served_schema,
    tiny_lora_run,
)

KEY = {"Authorization": "Bearer secret"}
PROMPTS = ["repeat the word film", "repeat the word dull", "repeat the word cast"]
LONG = 2000
"""A budget the base (and an adapter with no delta) does not finish within the test: it never ends on EOS."""


def _silenced(run: RunDir, folder: Path) -> Path:
    """A copy of `run` whose LoRA adapter adds nothing (every lora_B zero): it answers as the base does, which
    generates to its budget, so a request for it stays in flight as long as a test needs."""
    shutil.copytree(run.path, folder)
    weights = folder / "model" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({name: t.zero_() if "lora_B" in name else t for name, t in tensors.items()}, weights)
    return folder


@pytest.fixture(scope="module")
def root(tiny_decoder, tiny_encoder, tmp_path_factory) -> Path:
    """The --adapter-root: LoRA runs of the tiny decoder (a, b, and adapters with no delta: quiet, hush), a LoRA
    sentiment classifier, and the runs a server must refuse: one of another base, a reward model of the encoder
    (another task type), a classifier with other labels, an incomplete run, a folder that is no run, and a link to a run
    outside the root."""
    folder = tmp_path_factory.mktemp("adapters")
    root = folder / "root"
    rng = random.Random(0)
    words = POSITIVE + NEGATIVE + NOUNS
    copy = write_jsonl(
        folder / "copy.jsonl",
        [{"question": f"repeat the word {w}", "answer": w} for w in (rng.choice(words) for _ in range(48))],
    )
    reviews = [f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}" for i in range(48)]
    sentiment = write_jsonl(
        folder / "sentiment.jsonl",
        [{"text": text, "label": "positive" if i % 2 else "negative"} for i, text in enumerate(reviews)],
    )
    ratings = write_jsonl(
        folder / "ratings.jsonl",
        [{"text": text, "label": ("bad", "fine", "good")[i % 3]} for i, text in enumerate(reviews)],
    )
    pairs = [
        {
            "chosen": [{"role": "user", "content": "review the film"}, {"role": "assistant", "content": good}],
            "rejected": [{"role": "user", "content": "review the film"}, {"role": "assistant", "content": bad}],
        }
        for good, bad in zip(reviews[1::2], reviews[::2])
    ]
    judged = {"train": str(write_jsonl(folder / "pairs.jsonl", pairs)), "max_length": 32}
    generation = {"train": str(copy), "prompt_template": "{question}", "response_field": "answer", "max_length": 48}
    other_decoder = shutil.copytree(tiny_decoder, folder / "other-decoder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        runs = {
            "a": tiny_lora_run("a", root, tiny_decoder, generation, "causal_lm", 1),
            "b": tiny_lora_run("b", root, tiny_decoder, generation, "causal_lm", 2),
            "sentiment": tiny_lora_run(
                "sentiment", root, tiny_encoder, {"train": str(sentiment), "max_length": 32}, "classification", 3
            ),
            "ratings": tiny_lora_run(
                "ratings", root, tiny_encoder, {"train": str(ratings), "max_length": 32}, "classification", 4
            ),
            "reward": tiny_lora_run("reward", root, tiny_encoder, {"kind": "reward", **judged}, None, 5),
            "other-base": tiny_lora_run("other-base", root, str(other_decoder), generation, "causal_lm", 6),
        }
    for name, run in runs.items():
        (root / name).symlink_to(run.path)
    _silenced(runs["a"], root / "quiet")
    _silenced(runs["a"], root / "hush")
    incomplete = shutil.copytree(runs["b"].path, root / "incomplete")
    state = json.loads((incomplete / "run.json").read_text())
    (incomplete / "run.json").write_text(json.dumps({**state, "state": "running"}))
    (root / "empty").mkdir()
    shutil.copytree(runs["b"].path, folder / "outside")
    (root / "linked").symlink_to(folder / "outside")
    return root


@contextmanager
def serving(root: Path, *names: str, **options):
    """A server started with the runs `names` of the root (each under its name), loading adapters from the root,
    with the key 'secret'."""
    catalog = load_catalog([f"{name}={root / name}" for name in names])
    settings = {"api_key": "secret", "allow_adapter_loading": True, "adapter_root": root, **options}
    with in_process(catalog, **settings) as url:
        yield url


def _load(url: str, name: str, path: str, headers: dict = KEY) -> tuple[int, object, dict]:
    return _change(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, headers)


def _unload(url: str, name: str, headers: dict = KEY) -> tuple[int, object, dict]:
    return _change(url, "/v1/unload_lora_adapter", {"lora_name": name}, headers)


def _change(url: str, path: str, body: dict, headers: dict) -> tuple[int, object, dict]:
    """A load or unload: (status, the text of a success or the JSON of an error, headers)."""
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), {k.lower(): v for k, v in error.headers.items()}


def _models(url: str) -> dict[str, str]:
    return {model["id"]: model["kind"] for model in call(url, "/v1/models", headers=KEY)[1]["data"]}


def _answers(url: str, model: str) -> list[str]:
    answers = []
    for prompt in PROMPTS:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 6}
        status, answered, _ = call(url, "/v1/chat/completions", body, KEY)
        assert status == 200, answered
        answers.append(answered["choices"][0]["message"]["content"])
    return answers


def test_loading_is_off_unless_allowed_and_only_then_published(root):
    with in_process(load_catalog([f"a={root / 'a'}"]), api_key="secret") as url:
        status, error, _ = _load(url, "b", "b")
        published = call(url, "/openapi.json")[1]["paths"]
    assert status == 404 and error["error"]["code"] == "not_found", error
    assert "/v1/load_lora_adapter" not in published and "/v1/unload_lora_adapter" not in published
    with serving(root, "a") as url:
        published = call(url, "/openapi.json")[1]["paths"]
    load, unload = published["/v1/load_lora_adapter"]["post"], published["/v1/unload_lora_adapter"]["post"]
    assert sorted(load["responses"]) == ["200", "400", "401", "413", "503"]
    assert sorted(unload["responses"]) == ["200", "400", "401", "404", "409", "413"]
    assert list(load["responses"]["200"]["content"]) == ["text/plain"]
    assert list(unload["responses"]["409"]["content"]) == ["application/json"]
    assert load["responses"]["503"]["headers"]["Retry-After"]["required"]


def test_loading_needs_an_adapter_root_and_the_flags_need_loading(root, capsys):
    """Refused at start, before any model is read: no server reads paths from anywhere."""
    with pytest.raises(ConfigError, match="--adapter-root"):
        ServeSettings(allow_adapter_loading=True)
    assert cli.main(["serve", str(root / "a"), "--allow-adapter-loading"]) == 2
    assert "--allow-adapter-loading needs --adapter-root" in capsys.readouterr().err
    assert cli.main(["serve", str(root / "a"), "--max-adapters", "2"]) == 2
    assert "only with --allow-adapter-loading" in capsys.readouterr().err
    with pytest.raises(CatalogError, match="over --max-adapters 1"):
        create_app(
            load_catalog([f"a={root / 'a'}", f"b={root / 'b'}"]),
            ServeSettings(allow_adapter_loading=True, adapter_root=root, max_adapters=1),
        )


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_loaded_adapter_answers_as_at_start_and_an_unloaded_one_is_gone(root, tiny_decoder, batching):
    with in_process(load_catalog([f"a={root / 'a'}", f"b={root / 'b'}"]), batching=batching) as url:
        from_the_start = _answers(url, "b")
        assert _answers(url, "a") != from_the_start  # so answering as b is b's adapter at work
    with serving(root, "a", batching=batching) as url:
        status, text, headers = _load(url, "b", "b")
        assert (status, text) == (200, "Success: LoRA adapter 'b' added successfully."), text
        assert headers["content-type"].startswith("text/plain")
        assert _models(url) == {tiny_decoder: "generate", "a": "generate", "b": "generate"}
        assert _answers(url, "b") == from_the_start
        schemas = call(url, "/openapi.json")[1]["components"]["schemas"]
        assert "b" in schemas["ChatRequest"]["properties"]["model"]["examples"]

        assert _unload(url, "b")[:2] == (200, "Success: LoRA adapter 'b' removed successfully.")
        assert _models(url) == {tiny_decoder: "generate", "a": "generate"}
        chat = {"model": "b", "messages": [{"role": "user", "content": "hi"}]}
        status, error, _ = call(url, "/v1/chat/completions", chat, KEY)
        assert status == 404 and error["error"]["code"] == "model_not_found", error

        assert _load(url, "b", str(root / "b"))[0] == 200  # again, by its absolute path under the root
        assert _answers(url, "b") == from_the_start


@pytest.fixture(scope="module")
def refusing(root):
    """A server holding a generator adapter (a, on the tiny decoder) and a classifier adapter (sentiment)."""
    with serving(root, "a", "sentiment") as url:
        yield url


@pytest.mark.parametrize(
    "name, path, status, param, code, named",
    [
        ("b", "b", 401, None, "missing_api_key", []),
        ("b", "../outside", 400, "lora_path", "path_outside_root", ["--adapter-root"]),
        ("b", "linked", 400, "lora_path", "path_outside_root", ["--adapter-root"]),
        ("b", "OUTSIDE", 400, "lora_path", "path_outside_root", ["--adapter-root"]),
        ("b", "empty", 400, "lora_path", "invalid_adapter", ["not a tunelab run directory"]),
        ("b", "incomplete", 400, "lora_path", "invalid_adapter", ["not complete"]),
        ("b", "other-base", 400, "lora_path", "invalid_adapter", ["other-decoder", "tiny-llama"]),
        ("b", "reward", 400, "lora_path", "invalid_adapter", ["reward", "classification"]),
        ("b", "ratings", 400, "lora_path", "invalid_adapter", ["['bad', 'fine', 'good']", "['negative', 'positive']"]),
        ("a", "b", 400, "lora_name", "adapter_exists", ["'a' is already served"]),
        ("BASE", "b", 400, "lora_name", "adapter_exists", ["already served"]),
    ],
)
def test_every_refused_load_names_its_field_and_changes_nothing(
    refusing, root, tiny_decoder, name, path, status, param, code, named
):
    """Another base, task type or label set is refused naming the run's and the served bases'."""
    name = tiny_decoder if name == "BASE" else name
    path = str(root.parent / "outside") if path == "OUTSIDE" else path
    before = _models(refusing)
    answered, error, _ = _load(refusing, name, path, KEY if status != 401 else {})
    assert answered == status and error["error"]["param"] == param and error["error"]["code"] == code, error
    for words in named:
        assert words in error["error"]["message"], error
    assert _models(refusing) == before


def test_a_load_without_a_path_is_a_400_naming_it(refusing):
    status, error, _ = call(refusing, "/v1/load_lora_adapter", {"lora_name": "b"}, KEY)
    assert status == 400 and error["error"]["param"] == "lora_path", error


@pytest.mark.parametrize(
    "name, headers, status, code",
    [
        ("nope", KEY, 404, "model_not_found"),
        ("BASE", KEY, 400, "not_an_adapter"),
        ("a", KEY, 409, "last_adapter"),
        ("sentiment", KEY, 409, "last_adapter"),
        ("a", {}, 401, "missing_api_key"),
    ],
)
def test_every_refused_unload_names_lora_name(refusing, tiny_decoder, name, headers, status, code):
    """A base is not an adapter; the last adapter on a base stays (PEFT cannot keep a base with none)."""
    answered, error, _ = _unload(refusing, tiny_decoder if name == "BASE" else name, headers)
    assert answered == status and error["error"]["code"] == code, error
    assert error["error"]["param"] == (None if status == 401 else "lora_name")


@contextmanager
def streaming(url: str, model: str):
    """A long completion of `model`, streamed to a client that reads its first event and then nothing: its request
    is in flight until the client hangs up, at the end of the block. Yields the socket."""
    body = json.dumps({"model": model, "prompt": "repeat the word film", "max_tokens": LONG, "stream": True}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as client:
        client.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer secret\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data: " not in received:
            piece = client.recv(4096)
            assert piece, received
            received += piece
        assert received.startswith(b"HTTP/1.1 200"), received
        yield client


def _given_up(url: str, model: str) -> None:
    """Wait until `model`'s abandoned stream has ended its row: the server counts the tokens it had cost once the row
    leaves the batch, after the request stops being in flight."""
    series = f'tunelab_generated_tokens_total{{model="{model}"}}'
    for _ in range(600):
        with urllib.request.urlopen(f"{url}/metrics") as response:
            if series in response.read().decode():
                return
        time.sleep(0.1)
    raise AssertionError(f"{model}'s stream was never ended")


def test_max_adapters_unloads_the_least_recently_used_idle_adapter_and_refuses_when_all_are_busy(root, tiny_decoder):
    """Two adapters with no delta (quiet, hush) generate long streams on one base, at most two adapters loaded."""
    with serving(root, "quiet", "hush", max_adapters=2, max_tokens_cap=LONG) as url:
        with streaming(url, "quiet") as quiet:
            status, error, headers = _unload(url, "quiet")
            assert status == 409 and error["error"]["code"] == "adapter_busy" and "retry" in error["error"]["message"]
            assert headers["retry-after"] == "1"
            with streaming(url, "hush"):
                status, error, headers = _load(url, "a", "a")
                assert status == 503 and error["error"]["code"] == "adapters_busy", error
                assert headers["retry-after"] == "1"
            _given_up(url, "hush")
            # quiet was asked for first, but it is busy: hush, idle now, makes room
            status, text, _ = _load(url, "a", "a")
            assert status == 200 and "'hush', the least recently used adapter, was unloaded" in text, text
            assert _models(url) == {tiny_decoder: "generate", "quiet": "generate", "a": "generate"}
            assert call(url, "/v1/completions", {"model": "hush", "prompt": "hi"}, KEY)[0] == 404
            more = b""
            while more.count(b"data: ") < 5:  # quiet's stream goes on, without an error, while its base changed
                more += quiet.recv(4096)
            assert b'"error"' not in more, more
        _given_up(url, "quiet")
        _answers(url, "a")  # a is used after quiet: quiet is the least recently used now, and idle
        status, text, _ = _load(url, "b", "b")
        assert status == 200 and "'quiet', the least recently used adapter, was unloaded" in text, text
        assert _models(url) == {tiny_decoder: "generate", "a": "generate", "b": "generate"}


def test_an_adapter_unloaded_as_its_request_gives_up_leaves_the_batch_first(root):
    """hush's request gives up during a decoding step, after the step has checked its row (the step is held while
    it streams quiet's text), and hush is unloaded at once: the worker ends hush's row at the next step before it
    deletes the adapter, so quiet's row, which shares the batch, never meets an adapter PEFT no longer has."""
    catalog = load_catalog([f"quiet={root / 'quiet'}", f"hush={root / 'hush'}"])
    batcher = Batcher(max_batch=4)
    armed, held, release = threading.Event(), threading.Event(), threading.Event()

    def streamed(text: str) -> None:
        if armed.is_set() and not held.is_set():
            held.set()
            release.wait(60)

    ids = catalog.models["quiet"].tokenizer("repeat the word film")["input_ids"]
    hush = Job(catalog.models["hush"], Row(ids, LONG, [], None))
    quiet = Job(catalog.models["quiet"], Row(ids, 200, [], streamed))
    batcher.submit(hush)  # first, so its row is checked before quiet's in every step
    batcher.submit(quiet)
    while sum(map(len, list(batcher.decoding.values()))) < 2:
        time.sleep(0.001)
    armed.set()
    assert held.wait(60)
    hush.cancel()
    unloaded = batcher.call(lambda: catalog.shared_base("hush").unload("hush"))
    release.set()
    unloaded.result(timeout=60)
    assert quiet.future.result(timeout=60).tokens == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's example calls curl, which is not installed")
def test_the_readmes_load_and_unload_example_answers_as_written(root, tiny_decoder):
    """The README's example, `tunelab serve` with a run and the loading flags and its two curl commands, run as
    written but for these runs in place of runs/<run1>, runs and <run2>, and a free port in place of 8000."""
    (block,) = [block for block in readme_serving_blocks() if "/v1/load_lora_adapter" in block]
    serve, load, unload = block.strip().splitlines()
    serve = serve.replace("runs/<run1>", str(root / "a")).replace("--adapter-root runs", f"--adapter-root {root}")
    arguments = shlex.split(serve)
    assert arguments[:2] == ["tunelab", "serve"] and "--allow-adapter-loading" in arguments
    with running_server(arguments[2:]) as url:
        key = {"Authorization": f"Bearer {arguments[arguments.index('--api-key') + 1]}"}
        assert (
            readme_curl_text(load.replace("<run2>", "b"), url) == "Success: LoRA adapter 'chatty' added successfully."
        )
        assert call(url, "/v1/models", headers=key)[1]["data"][-1]["id"] == "chatty"
        assert readme_curl_text(unload, url) == "Success: LoRA adapter 'chatty' removed successfully."
        assert [model["id"] for model in call(url, "/v1/models", headers=key)[1]["data"]] == [
            tiny_decoder,
            "summarise",
        ]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_the_loading_endpoints_as_the_schema_says(root, mode):
    """Loads and unloads generated from `/openapi.json` (names and paths at random, a few of which name runs of the
    root): every answer has a published status, content type and body, and none is a 5xx."""
    with serving(root, "a", "b", max_adapters=3) as url:
        cases = served_schema(url).include(path_regex="lora_adapter").as_strategy(generation_mode=mode)
        answered = conforming_statuses(cases, 40, KEY)
    assert answered[400], answered
