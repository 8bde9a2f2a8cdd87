"""Benchmark: the demo's tuned accuracy over several seeds, to compare training changes pairwise.

The demo config (`tunelab.demo.demo_config`) is trained once per seed with no baseline scored. For each
seed it prints one JSON line: the tuned accuracy on the 96 held-out reviews, the validation accuracy and loss
at every epoch, and the step of the checkpoint the run kept (the run's own output goes to stderr). Run two
commits (a worktree of each) on the same seeds and compare the lines seed by seed: on 96 examples one review
is 1.04 points, so only a paired table over many seeds tells a change from noise.

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_seeds.py 42 1 2 3 4 > after.jsonl
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile

from tunelab import pipeline
from tunelab.demo import demo_config


def run_seed(seed: int, output_dir: str) -> dict:
    """Train the demo with `seed`; its scores and the validation curve that chose the checkpoint."""
    config = demo_config(output_dir)
    config.training.seed = seed
    config.eval.baselines = []
    run = pipeline.train(config)
    (task,) = json.loads(run.eval_path.read_text())["tasks"].values()
    validations = [
        {"step": e["step"], "accuracy": e["eval_accuracy"], "loss": round(e["eval_loss"], 4)}
        for e in map(json.loads, run.metrics_path.read_text().splitlines())
        if "eval_accuracy" in e
    ]
    return {
        "seed": seed,
        "accuracy": task["tuned"]["metrics"]["accuracy"]["value"],
        "validation": validations,
        "kept": run.state().get("best_step"),
        "precision": pipeline.run_precision(config),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        for seed in map(int, sys.argv[1:] or ["42"]):
            with contextlib.redirect_stdout(sys.stderr):  # the run's own report and log, apart from the figures
                found = run_seed(seed, out)
            print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
