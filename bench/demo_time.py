"""Benchmark: wall time of `tunelab demo`, and its training speed against an fp32 baseline in the same run.

The demo's config is trained twice, alternating precision (auto, fp32, auto,
fp32), and medians are reported; the speed figure is the ratio of training
seconds fp32 / auto, which holds on a shared, noisy machine where absolute
seconds drift. Also prints the end-to-end demo time (model load, base eval,
training, tuned eval, save) that the README promises stays under 5 minutes.

    .venv/bin/python bench/demo_time.py
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time

import torch

from tunelab import pipeline
from tunelab.demo import demo_config, run_demo


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_demo(out)
        demo_seconds = time.perf_counter() - started
        seconds: dict[str, list[float]] = {"auto": [], "fp32": []}
        accuracy: dict[str, list[float]] = {"auto": [], "fp32": []}
        for _ in range(2):
            for precision in ("auto", "fp32"):
                config = demo_config(out)
                config.training.precision = precision
                config.eval.baselines = []
                run = pipeline.train(config)
                seconds[precision].append(run.state()["train_seconds"])
                (task,) = json.loads(run.eval_path.read_text())["tasks"].values()
                accuracy[precision].append(task["tuned"]["metrics"]["accuracy"]["value"])
    auto, fp32 = statistics.median(seconds["auto"]), statistics.median(seconds["fp32"])
    print("\n## demo benchmark")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"demo end to end: {demo_seconds:.1f} s")
    resolved = pipeline.run_precision(demo_config(out))
    print(f"training, precision auto (= {resolved}): median {auto:.1f} s, accuracy {accuracy['auto']}")
    print(f"training, fp32 baseline: median {fp32:.1f} s, accuracy {accuracy['fp32']}")
    print(f"speed ratio auto / fp32 baseline: {fp32 / auto:.2f}x")


if __name__ == "__main__":
    main()
