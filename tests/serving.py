"""Starting `tunelab serve` for tests and the serving benchmark: a real server in a subprocess, on a free loopback
port, stopped afterwards; and the short real runs (smollm2 LoRA, minilm classifier) that the serving, export and
portability tests and benchmarks use."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(targets: list[str], *options: str, startup_seconds: float = 300, port: int | None = None):
    """`tunelab serve TARGETS OPTIONS` on 127.0.0.1 (a free port unless given); yields its base URL once /health
    answers, and stops it."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "serve", *targets, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_seconds
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{process.stdout.read()[-4000:]}")
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
