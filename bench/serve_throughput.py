"""Serving throughput (issue 33): `tunelab serve` with batching off, static batching and continuous batching, one
LoRA adapter and four mixed on one base, against `transformers serve --continuous-batching` on the run merged into
a plain model, all in the same run; then the issue's targets with PASS or MISSED, the LoRA run against the same run
merged, a head-of-line probe, and the memory of N adapters on one base.

Every server gets the same chat prompts, greedy, the same `max_tokens`, driven by the `openai` client from
CONCURRENCY threads; with four adapters request i goes to adapter i % 4 (the peer serves one model, so it gets
the one-adapter requests). Each figure is requests/s, generated tokens/s and p50/p99 latency, and each speed is
also a ratio of tokens/s to batching off at the same concurrency and adapter count. Every tunelab server gets
`--threads` (default: every core this process may use); `transformers serve` keeps torch's default.

    python bench/serve_throughput.py                    # trains four short smollm2 LoRA runs first
    python bench/serve_throughput.py --run runs/a --run runs/b --run runs/c --run runs/d
    python bench/serve_throughput.py --requests 4 --concurrency 1,8 --max-tokens 8 --no-peer --threads 1  # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))
from serving import (  # noqa: E402  (the tests', shared)
    CHAT_PROMPTS,
    call,
    free_port,
    running_server,
    short_lora_run,
    short_sentiment_run,
)

MIXED = 4
"""Adapters of one base served together in the mixed case."""

BATCHING = {
    "batching off": ["--max-batch", "1", "--batching", "static"],
    "static": ["--batching", "static"],
    "continuous": [],
}
"""tunelab's three ways to batch, as `tunelab serve` options; the first is every ratio's baseline. Batching off is
one request at a time through `generate`, as before continuous batching: `--max-batch 1` alone would run the
continuous scheduler one row at a time, which generated ~25% fewer tokens/s at concurrency 1 in the smoke runs and
so would flatter every ratio."""

PEER = "transformers serve --continuous-batching (merged)"
TARGET_CONCURRENCY = 8
LONG_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm, with many characters."
LONG_TOKENS = 256


def train_runs(folder: Path, count: int) -> list[Path]:
    """Short smollm2 LoRA runs on DialogSum, each with its own seed (distinct adapters, one base)."""
    return [short_lora_run(folder, DATA / "dialogsum", seed, f"bench-{seed}").path for seed in range(1, count + 1)]


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900)


def load(url: str, models: list[str], concurrency: int, requests: int, max_tokens: int) -> dict:
    """`requests` chat requests from `concurrency` threads, request i to models[i % len(models)] with prompt
    i % len(CHAT_PROMPTS): throughput and latency."""
    openai = client(url)

    def ask(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        reply = openai.chat.completions.create(
            model=models[i % len(models)],
            max_tokens=max_tokens,
            temperature=0,
            messages=[{"role": "user", "content": CHAT_PROMPTS[i % len(CHAT_PROMPTS)]}],
        )
        return time.perf_counter() - started, reply.usage.completion_tokens if reply.usage else 0

    for i in range(len(models)):  # warm-up: every model answers once before the clock starts
        ask(i)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(ask, range(requests)))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "requests_per_s": requests / wall,
        "tokens_per_s": sum(tokens for _, tokens in results) / wall,
        "tokens_per_request": sum(tokens for _, tokens in results) / requests,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def tunelab_options(threads: int, max_tokens: int) -> list[str]:
    """What every tunelab server here gets: the same threads, a cap that admits the benchmark's `max_tokens`, and
    a timeout no request of the benchmark reaches (a 504 would be a missing figure, not a slow one)."""
    return ["--threads", str(threads), "--max-tokens-cap", str(max_tokens), "--timeout", "900"]


def measure_tunelab(runs: list[Path], adapters: int, args) -> dict[str, dict[int, dict]]:
    """{batching: {concurrency: figures}} for a server holding `adapters` of the runs, request i to adapter i %
    adapters."""
    targets = [f"a{i}={run}" for i, run in enumerate(runs[:adapters])]
    models = [f"a{i}" for i in range(adapters)]
    figures = {}
    for label, options in BATCHING.items():
        with running_server(targets, *options, *tunelab_options(args.threads, args.max_tokens)) as url:
            figures[label] = {c: load(url, models, c, args.requests, args.max_tokens) for c in args.levels}
    return figures


def transformers_serve(model_dir: Path, levels: list[int], requests: int, max_tokens: int) -> dict:
    """`transformers serve --continuous-batching` on a merged model, when it runs here: {concurrency: figures},
    or {'error': why}."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        str(model_dir),
        "--port",
        str(port),
        "--continuous-batching",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                return {"error": f"exited with {process.returncode}: {process.stdout.read()[-800:]}"}
            try:
                load(url, [str(model_dir)], 1, 1, 4)
                break
            except Exception:
                time.sleep(0.5)
        else:
            return {"error": "did not answer within 300 s"}
        return {c: load(url, [str(model_dir)], c, requests, max_tokens) for c in levels}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def machine(threads: int) -> str:
    """The CPU's name and the flags that decide its speed (GUIDE §4), the libraries, and the threads used."""
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    named = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx2", "avx512f", "avx512_bf16"))
    return (
        f"CPU: {name}, {len(os.sched_getaffinity(0))} cores usable ({named}); python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; tunelab --threads {threads}, "
        f"transformers serve: torch's default (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )


def print_table(figures: dict[tuple[str, int], dict]) -> None:
    """One row per (server, adapters) and concurrency; the ratio is to batching off with the same adapters."""
    print(
        "\n| server | adapters | concurrency | requests/s | tokens/s | tokens/request | p50 s | p99 s | vs batching off |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (label, adapters), by_level in figures.items():
        if "error" in by_level:
            print(f"| {label} | {adapters} | - | failed: {by_level['error'][:300]} | | | | | |")
            continue
        baseline = figures["batching off", adapters]
        for c, f in by_level.items():
            ratio = f["tokens_per_s"] / baseline[c]["tokens_per_s"] if baseline[c]["tokens_per_s"] else float("nan")
            print(
                f"| {label} | {adapters} | {c} | {f['requests_per_s']:.2f} | {f['tokens_per_s']:.1f} | "
                f"{f['tokens_per_request']:.1f} | "
                f"{f['p50']:.2f} | {f['p99']:.2f} | {ratio:.2f}x |"
            )


def print_targets(figures: dict[tuple[str, int], dict]) -> None:
    """The issue's targets at concurrency 8, each with the measured value and PASS or MISSED (or why it is
    missing)."""
    c = TARGET_CONCURRENCY

    def at(label: str, adapters: int) -> dict | None:
        by_level = figures.get((label, adapters), {})
        return by_level.get(c) if "error" not in by_level else None

    def ratio(name: str, measured: tuple[str, int], baseline: tuple[str, int], goal: float) -> None:
        ours, theirs = at(*measured), at(*baseline)
        if ours is None or theirs is None:
            print(f"- {name}: not measured")
            return
        value = ours["tokens_per_s"] / theirs["tokens_per_s"]
        requests = ours["requests_per_s"] / theirs["requests_per_s"]
        print(f"- {name}: {value:.2f}x ({'PASS' if value >= goal else 'MISSED'}; requests/s {requests:.2f}x)")

    def p99(adapters: int) -> None:
        ours, theirs = at("continuous", adapters), at("static", adapters)
        name = f"p99 continuous <= static ({adapters} adapter{'s' if adapters > 1 else ''})"
        if ours is None or theirs is None:
            print(f"- {name}: not measured")
            return
        verdict = "PASS" if ours["p99"] <= theirs["p99"] else "MISSED"
        print(f"- {name}: {ours['p99']:.2f} s against {theirs['p99']:.2f} s ({verdict})")

    print(
        f"\nTargets at concurrency {c} (verdicts on tokens/s; answers of different lengths move it from requests/s):"
    )
    ratio("continuous >= 4x batching off (1 adapter)", ("continuous", 1), ("batching off", 1), 4.0)
    ratio(f"continuous >= 1.0x {PEER}", ("continuous", 1), (PEER, 1), 1.0)
    ratio(f"{MIXED} mixed adapters >= 0.8x one adapter (continuous)", ("continuous", MIXED), ("continuous", 1), 0.8)
    p99(1)
    p99(MIXED)


def mixing_cost(run: Path, folder: Path, args) -> None:
    """Like for like: a server holding MIXED copies of one run's adapter (equal weights under different names, so
    every answer has the same tokens), continuous batching, every request to one copy (folded) against request i
    to copy i % MIXED (rows of MIXED adapters in one batch, run per row): what mixing adapters costs, free of the
    answer lengths that differ between distinct adapters."""
    copies = []
    for i in range(MIXED):
        copy = folder / f"copy-{i}"
        shutil.copytree(run, copy)
        copies.append(f"c{i}={copy}")
    names = [f"c{i}" for i in range(MIXED)]
    with running_server(copies, *tunelab_options(args.threads, args.max_tokens)) as url:
        one = {c: load(url, names[:1], c, args.requests, args.max_tokens) for c in args.levels}
        mixed = {c: load(url, names, c, args.requests, args.max_tokens) for c in args.levels}
    print(f"\nMixing cost, like for like ({MIXED} copies of one adapter, continuous batching):")
    print("| requests to | concurrency | requests/s | tokens/s | tokens/request | p50 s | p99 s | vs one copy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, by_level in (("one copy (folded)", one), (f"{MIXED} copies mixed (per row)", mixed)):
        for c, f in by_level.items():
            ratio = f["tokens_per_s"] / one[c]["tokens_per_s"]
            print(
                f"| {label} | {c} | {f['requests_per_s']:.2f} | {f['tokens_per_s']:.1f} | "
                f"{f['tokens_per_request']:.1f} | {f['p50']:.2f} | {f['p99']:.2f} | {ratio:.2f}x |"
            )
    c = TARGET_CONCURRENCY
    if c in one:
        value = mixed[c]["tokens_per_s"] / one[c]["tokens_per_s"]
        verdict = "PASS" if value >= 0.8 else "MISSED"
        print(
            f"- {MIXED} mixed adapters >= 0.8x one adapter, like for like, concurrency {c}: {value:.2f}x ({verdict})"
        )


def merged_speed(run: Path, merged: Path, continuous: dict, args) -> None:
    """The issue's "answer at the merged model's speed": the LoRA run alone on its server (continuous batching,
    its adapter folded while it is the only one in use) against the same run merged, served by tunelab, at
    concurrency 1."""
    if 1 not in continuous:
        print("\nLoRA run against the run merged: not measured (concurrency 1 is not among --concurrency)")
        return
    with running_server([f"merged={merged}"], *tunelab_options(args.threads, args.max_tokens)) as url:
        alone = load(url, ["merged"], 1, args.requests, args.max_tokens)
    lora = continuous[1]["tokens_per_s"]
    print(
        f"\nLoRA run {run.name} (continuous, one adapter: folded) at concurrency 1: {lora:.1f} tokens/s; "
        f"the run merged (`tunelab serve` a merged folder): {alone['tokens_per_s']:.1f} tokens/s; "
        f"ratio {lora / alone['tokens_per_s']:.2f}x"
    )


def timed(send) -> tuple[float, object]:
    """How long `send()` took, and what it returned."""
    started = time.perf_counter()
    answer = send()
    return time.perf_counter() - started, answer


def head_of_line(runs: list[Path], classifier: Path, batching: str, threads: int) -> dict:
    """Issue 33's head-of-line case: a server with two LoRA runs and a classifier; one client asks for a long
    generation, and while it runs a classification and a 2-token chat (to the other adapter) are sent, each timed
    from its own send. Returns their latencies, the long one's, and whether each returned before the long one."""
    targets = [f"a{i}={run}" for i, run in enumerate(runs[:2])] + [f"sentiment={classifier}"]
    other = f"a{min(1, len(runs) - 1)}"
    with running_server(targets, "--batching", batching, *tunelab_options(threads, LONG_TOKENS)) as url:
        openai = client(url)

        def chat(model: str, text: str, max_tokens: int):
            return openai.chat.completions.create(
                model=model, max_tokens=max_tokens, temperature=0, messages=[{"role": "user", "content": text}]
            )

        def classify():
            status, body, _ = call(url, "/v1/classify", {"model": "sentiment", "input": ["a great film"]}, timeout=900)
            assert status == 200, body
            return body

        chat("a0", "Hello", 2)  # warm-up, as the loads do
        chat(other, "Hello", 2)
        classify()
        with ThreadPoolExecutor(max_workers=1) as pool:
            long = pool.submit(timed, lambda: chat("a0", LONG_PROMPT, LONG_TOKENS))
            time.sleep(1.0)  # the long generation is decoding by now
            classify_s, _ = timed(classify)
            classify_first = not long.done()
            chat_s, _ = timed(lambda: chat(other, "What is 2 + 2?", 2))
            chat_first = not long.done()
            long_s, reply = long.result()
    return {
        "long_s": long_s,
        "long_tokens": reply.usage.completion_tokens if reply.usage else 0,
        "classify_s": classify_s,
        "classify_first": classify_first,
        "chat_s": chat_s,
        "chat_first": chat_first,
    }


def print_head_of_line(runs: list[Path], classifier: Path, threads: int) -> None:
    print(
        f"\nHead of line: a long generation (max_tokens {LONG_TOKENS}) to a0, then /v1/classify and a 2-token chat "
        "to a1 while it runs; each latency from its own send"
    )
    print("| batching | long generation s (tokens) | classify s | before the long one | 2-token chat s | before |")
    print("| --- | ---: | ---: | --- | ---: | --- |")
    for batching in ("continuous", "static"):
        f = head_of_line(runs, classifier, batching, threads)
        print(
            f"| {batching} | {f['long_s']:.2f} ({f['long_tokens']}) | {f['classify_s']:.2f} | "
            f"{'yes' if f['classify_first'] else 'no'} | {f['chat_s']:.2f} | {'yes' if f['chat_first'] else 'no'} |"
        )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_pid(port: int) -> int:
    """The pid of the `tunelab serve` process listening on `port` (the test helper does not expose it)."""
    found = subprocess.run(["pgrep", "-f", f"tunelab serve .*--port {port}"], capture_output=True, text=True).stdout
    return int(found.split()[0])


def print_memory(runs: list[Path]) -> None:
    """Resident memory of a server holding the base and 0, 1, 2, ... of the adapters."""
    print("\n| adapters on the base | server RSS MB |\n| ---: | ---: |")
    for count in range(len(runs) + 1):
        targets = [f"a{i}={run}" for i, run in enumerate(runs[:count])] or ["smollm2-135m-instruct"]
        port = free_port()
        with running_server(targets, port=port):
            print(f"| {count} | {rss_mb(server_pid(port)):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        action="append",
        help=f"a smollm2 LoRA run to serve; give {MIXED} runs of one base for the mixed case (default: train "
        f"{MIXED} short ones)",
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client threads")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="every tunelab server's --threads (default: every core this process may use)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="tunelab-serve-bench-") as folder:
        folder = Path(folder)
        runs = [Path(run) for run in args.run] if args.run else train_runs(folder / "runs", MIXED)
        classifier = short_sentiment_run(folder / "runs", DATA / "sst2").path  # for the head-of-line probe
        figures: dict[tuple[str, int], dict] = {}
        for adapters in (1, MIXED) if len(runs) >= MIXED else (1,):
            for label, by_level in measure_tunelab(runs, adapters, args).items():
                figures[label, adapters] = by_level
        if len(runs) < MIXED:
            print(f"(the mixed case needs {MIXED} runs of one base; {len(runs)} given)")
        from tunelab.run_commands import merge_run
        from tunelab.runs import RunDir

        merged = merge_run(RunDir(runs[0]), folder / "merged")
        if not args.no_peer:
            figures[PEER, 1] = transformers_serve(merged, args.levels, args.requests, args.max_tokens)
        print(f"\n{machine(args.threads)}")  # after the training's output, above the figures
        print(f"{args.requests} requests per level, max_tokens {args.max_tokens}, greedy, concurrency {args.levels}")
        print_table(figures)
        print_targets(figures)
        merged_speed(runs[0], merged, figures["continuous", 1], args)
        mixing_cost(runs[0], folder, args)
        print_head_of_line(runs, classifier, args.threads)
        if not args.run:
            print_memory(runs)


if __name__ == "__main__":
    main()
