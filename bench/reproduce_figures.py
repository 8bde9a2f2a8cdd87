"""Benchmark: three fixed-seed training runs whose every number must survive a refactoring unchanged (issue 30).

A redesign that moves code without changing behaviour trains the same weights from the same seed, so every
logged loss, every validation metric and every final test score comes out the same. This script trains three
runs one after another and writes their numbers, at full float precision, as a JSON "fingerprint"; run it
before the change with `--write`, after it with `--compare`, on the same machine with the same thread count:

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python bench/reproduce_figures.py --write before.json
    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python bench/reproduce_figures.py --compare before.json

`--compare` prints each number before and after, the largest absolute difference, and exits 1 when it exceeds
1e-6 or when a number appears on one side only. The runs:

- demo: `tunelab demo` (minilm-l6 + LoRA on the bundled sentiment set; base and tuned accuracy);
- sst2-lora-2k: `tunelab train configs/compare-sst2-minilm.yaml method.name=lora data.max_train_examples=2000`
  (BENCHMARKS.md, "PEFT methods side by side": test accuracy 0.8108 on a CPU);
- dialogsum-lora: configs/dialogsum-smollm2-lora.yaml cut to a few CPU minutes by DIALOGSUM_OVERRIDES below.

What is left out of the fingerprint: numbers that measure the machine rather than the model (times, rates,
memory), matched by TIMING below. `--only NAME` runs one of the three (its fingerprint holds that one only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIALOGSUM_OVERRIDES = [
    "data.max_train_examples=40",  # the first 40 dialogues; the plan draws 40 of them at step budget 10 x batch 4
    "training.max_steps=10",  # 10 steps of 4 examples: about 3 minutes of SmolLM2-135M on 2 CPU threads
    "data.max_eval_examples=8",  # 8 validation and 8 test dialogues: the tuned model generates 8 summaries
    "eval.baselines=[]",  # no base-model scoring: only the tuned numbers are the fingerprint
    "eval.max_new_tokens=48",  # summaries are one or two sentences; 48 tokens keep generation short
]
"""How the DialogSum run is cut to CPU size: fixed here, so the before and after runs are the same run."""

TIMING = re.compile(r"runtime|per_second|seconds|_time|time_|memory|rss|peak|_mb$|started|finished", re.IGNORECASE)
"""Keys whose numbers measure the machine (wall time, throughput, memory), not what was trained."""


def _demo(output_dir: str):
    from tunelab.demo import demo_config

    return demo_config(output_dir)


def _sst2(output_dir: str):
    from tunelab.config import load_config

    return load_config(
        ROOT / "configs/compare-sst2-minilm.yaml",
        ["method.name=lora", "data.max_train_examples=2000", f"output_dir={output_dir}"],
    )


def _dialogsum(output_dir: str):
    from tunelab.config import load_config

    return load_config(
        ROOT / "configs/dialogsum-smollm2-lora.yaml", [*DIALOGSUM_OVERRIDES, f"output_dir={output_dir}"]
    )


RUNS = {"demo": _demo, "dialogsum-lora": _dialogsum, "sst2-lora-2k": _sst2}
"""Each figure's name and the config of its run (built in a temporary output folder)."""


def flatten(value, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON value under a dotted path (lists by index), timing numbers left out."""
    if isinstance(value, dict):
        found = {}
        for key, inner in value.items():
            if not TIMING.search(str(key)):
                found.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return found
    if isinstance(value, list):
        found = {}
        for index, inner in enumerate(value):
            found.update(flatten(inner, f"{prefix}[{index}]"))
        return found
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {}
    return {prefix: value}


def fingerprint_of(run) -> dict[str, float]:
    """A finished run's numbers: each line of metrics.jsonl (training losses, learning rates, gradient norms,
    validation metrics) by step, and eval.json (the final test scores, with their intervals)."""
    numbers = {}
    for line in run.metrics_path.read_text().splitlines():
        entry = json.loads(line)
        kind = "eval" if any(key.startswith("eval_") for key in entry) else "train"
        numbers.update(flatten(entry, f"metrics.step{entry['step']}.{kind}"))
    numbers.update(flatten(json.loads(run.eval_path.read_text()), "eval"))
    return numbers


def headline(name: str, run) -> str:
    """The figure a reader knows the run by: each task's tuned test metrics."""
    tasks = json.loads(run.eval_path.read_text())["tasks"]
    return "; ".join(
        f"{task} {metric} {score['value']}"
        for task, report in tasks.items()
        for metric, score in report["tuned"]["metrics"].items()
    )


def run_figure(name: str, output_dir: str) -> tuple[dict[str, float], str, float]:
    """Train one figure's run; its fingerprint, headline and wall time in seconds."""
    from tunelab import pipeline

    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's own report and log, apart from the figures
        run = pipeline.train(RUNS[name](output_dir))
    return fingerprint_of(run), headline(name, run), time.perf_counter() - started


def measure(names: list[str], threads: int, write: Path | None = None) -> dict:
    """Train each named figure's run in turn; with `write`, the fingerprint is rewritten after each run, so the
    figures already measured survive an interrupted benchmark."""
    figures = {}
    with tempfile.TemporaryDirectory() as output_dir:
        for name in names:
            numbers, line, seconds = run_figure(name, output_dir)
            print(f"{name}: {line} ({seconds:.0f} s, {len(numbers)} numbers)", flush=True)
            figures[name] = {"headline": line, "wall_seconds": round(seconds, 1), "numbers": numbers}
            if write:
                fingerprint = {"threads": threads, "dialogsum_overrides": DIALOGSUM_OVERRIDES, "figures": figures}
                write.write_text(json.dumps(fingerprint, indent=1) + "\n")
    return figures


def compare(before: dict, after: dict, tolerance: float) -> bool:
    """Print every number before and after; True when each is on both sides and within `tolerance`."""
    worst, same = 0.0, True
    for name in sorted(set(before) | set(after)):
        old = before.get(name, {}).get("numbers", {})
        new = after.get(name, {}).get("numbers", {})
        print(f"\n{name}: {before.get(name, {}).get('headline')} -> {after.get(name, {}).get('headline')}")
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                same = False
                print(f"  {key}: {old.get(key, 'missing')} -> {new.get(key, 'missing')}  ONE SIDE ONLY")
                continue
            difference = abs(new[key] - old[key]) if not (math.isnan(old[key]) and math.isnan(new[key])) else 0.0
            worst = max(worst, difference)
            print(f"  {key}: {old[key]!r} -> {new[key]!r}  diff {difference:.3g}")
    same = same and worst <= tolerance
    print(f"\nmax abs difference {worst:.3g} (tolerance {tolerance:g}): {'same' if same else 'DIFFERENT'}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="FILE", help="write the fingerprint of the three runs to FILE")
    action.add_argument("--compare", metavar="FILE", help="run again and compare with the fingerprint in FILE")
    parser.add_argument("--only", choices=list(RUNS), action="append", help="run only this figure (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads, the same before and after")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    names = args.only or list(RUNS)
    if args.compare:
        before = json.loads(Path(args.compare).read_text())["figures"]
        same = compare({n: before[n] for n in names if n in before}, measure(names, args.threads), args.tolerance)
        sys.exit(0 if same else 1)
    measure(names, args.threads, Path(args.write))
    print(f"fingerprint written to {args.write}")


if __name__ == "__main__":
    main()
