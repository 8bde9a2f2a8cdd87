"""`tunelab demo`: the whole pipeline on embedded defaults, in about 100 CPU-seconds (BENCHMARKS.md has wall times).

LoRA-tunes the real minilm-l6 encoder on a small sentiment set that ships with
the package (written by us, balanced), then prints base vs tuned on its
held-out part.
"""

from __future__ import annotations

import json
import time
from importlib.resources import files

from tunelab import pipeline
from tunelab.card import results_table
from tunelab.config import build_config


def demo_data_path() -> str:
    return str(files("tunelab").joinpath("data/demo/sentiment.jsonl"))


def demo_config(output_dir: str = "runs"):
    return build_config(
        {
            "name": "demo-sentiment-minilm-lora",
            "output_dir": output_dir,
            "model": {"name": "minilm-l6"},
            "data": {
                "kind": "classification",
                "train": demo_data_path(),
                "test_fraction": 0.2,
                "validation_fraction": 0.1,
                "max_length": 64,
            },
            "method": {"name": "lora", "lora": {"r": 8, "alpha": 16}},
            "training": {"epochs": 6, "batch_size": 16, "learning_rate": 2e-3, "logging_steps": 5},
        },
        "demo config",
    )


def run_demo(output_dir: str = "runs") -> None:
    started = time.perf_counter()
    run = pipeline.train(demo_config(output_dir))
    evaluation = json.loads(run.eval_path.read_text())
    print("\nminilm-l6 + LoRA on the bundled sentiment demo, base vs tuned on its held-out reviews")
    print(results_table(evaluation))
    print(
        f"\n{run.state()['trainable']['trainable_percent']:.2f}% of parameters trained; "
        f"demo took {time.perf_counter() - started:.0f} s; run directory: {run.path}"
    )
