"""Serving throughput: `tunelab serve` batched against the same server with batching off, in the same run, and
against `transformers serve` on the run merged into a plain model; plus the memory of N adapters on one base.

Every server gets the same chat prompts, greedy, the same `max_tokens`, driven by the `openai` client from
CONCURRENCY threads; each figure is requests/s, generated tokens/s and p50/p99 latency, and each speed is
also given as a ratio to batching off at the same concurrency.

    python bench/serve_throughput.py                    # trains a short smollm2 LoRA run first
    python bench/serve_throughput.py --run runs/<run>   # or serves a run you have
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serving import CHAT_PROMPTS, free_port, running_server, short_lora_run  # noqa: E402  (the tests', shared)


def train_runs(folder: Path, count: int) -> list[Path]:
    """Short smollm2 LoRA runs on DialogSum, each with its own seed (distinct adapters, one base)."""
    dialogsum = ROOT.parent / "shared" / "data" / "dialogsum"
    return [short_lora_run(folder, dialogsum, seed, f"bench-{seed}").path for seed in range(1, count + 1)]


def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int, api_key: str = "none") -> dict:
    """`requests` chat requests from `concurrency` threads: throughput and latency."""
    client = OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=600)

    def ask(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model=model,
            max_tokens=max_tokens,
            temperature=0,
            messages=[{"role": "user", "content": CHAT_PROMPTS[i % len(CHAT_PROMPTS)]}],
        )
        return time.perf_counter() - started, reply.usage.completion_tokens if reply.usage else 0

    ask(0)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(ask, range(requests)))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "requests_per_s": requests / wall,
        "tokens_per_s": sum(tokens for _, tokens in results) / wall,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_pid(port: int) -> int:
    """The pid of the `tunelab serve` process listening on `port` (the test helper does not expose it)."""
    found = subprocess.run(["pgrep", "-f", f"tunelab serve .*--port {port}"], capture_output=True, text=True).stdout
    return int(found.split()[0])


def memory(runs: list[Path]) -> list[tuple[int, float]]:
    """Resident memory of a server holding the base and 0, 1, 2, ... of the adapters."""
    figures = []
    for count in range(len(runs) + 1):
        targets = [f"a{i}={run}" for i, run in enumerate(runs[:count])] or ["smollm2-135m-instruct"]
        port = free_port()
        with running_server(targets, port=port):
            figures.append((count, rss_mb(server_pid(port))))
    return figures


def transformers_serve(
    model_dir: Path, concurrency: list[int], requests: int, max_tokens: int, continuous: bool
) -> dict:
    """`transformers serve` on a merged model, when it runs here: {concurrency: figures}, or {'error': why}."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--port", str(port)]
    if continuous:
        command.append("--continuous-batching")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                return {"error": f"exited with {process.returncode}: {process.stdout.read()[-800:]}"}
            try:
                load(url, str(model_dir), 1, 1, 4)
                break
            except Exception:
                time.sleep(0.5)
        else:
            return {"error": "did not answer within 300 s"}
        return {c: load(url, str(model_dir), c, requests, max_tokens) for c in concurrency}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a smollm2 LoRA run to serve (default: train a short one)")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--adapters", type=int, default=4, help="adapters for the memory figures (0 skips them)")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="tunelab-serve-bench-") as folder:
        folder = Path(folder)
        runs = [Path(args.run)] if args.run else train_runs(folder / "runs", max(1, args.adapters))
        cpu = subprocess.run(
            ["grep", "-m1", "-o", "-w", "avx512_bf16", "/proc/cpuinfo"], capture_output=True, text=True
        )
        print(
            f"machine: {os.cpu_count()} cores, avx512_bf16 {'yes' if cpu.stdout else 'no'}; "
            f"{args.requests} requests per level, max_tokens {args.max_tokens}, greedy"
        )
        figures: dict[str, dict] = {}
        for label, options in (
            ("tunelab batched (max batch 8)", ["--max-batch", "8"]),
            ("tunelab, batching off", ["--max-batch", "1"]),
        ):
            with running_server([f"tuned={runs[0]}"], *options, "--max-tokens-cap", str(args.max_tokens)) as url:
                figures[label] = {c: load(url, "tuned", c, args.requests, args.max_tokens) for c in levels}
        if not args.no_peer:
            from tunelab.run_commands import merge_run
            from tunelab.runs import RunDir

            merged = merge_run(RunDir(runs[0]), folder / "merged")
            for continuous in (False, True):
                label = "transformers serve" + (" --continuous-batching" if continuous else "")
                figures[label] = transformers_serve(merged, levels, args.requests, args.max_tokens, continuous)
        baseline = figures["tunelab, batching off"]
        print("\n| server | concurrency | requests/s | tokens/s | p50 s | p99 s | vs batching off |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, by_level in figures.items():
            if "error" in by_level:
                print(f"| {label} | - | failed: {by_level['error'][:300]} | | | | |")
                continue
            for c, f in by_level.items():
                ratio = (
                    f["tokens_per_s"] / baseline[c]["tokens_per_s"] if baseline[c]["tokens_per_s"] else float("nan")
                )
                print(
                    f"| {label} | {c} | {f['requests_per_s']:.2f} | {f['tokens_per_s']:.1f} | {f['p50']:.2f} | "
                    f"{f['p99']:.2f} | {ratio:.2f}x |"
                )
        if args.adapters and not args.run:
            print("\n| adapters on the base | server RSS MB |\n| ---: | ---: |")
            for count, mb in memory(runs):
                print(f"| {count} | {mb:.0f} |")


if __name__ == "__main__":
    main()
