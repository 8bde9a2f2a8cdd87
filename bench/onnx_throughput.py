"""Classifier throughput on CPU: a run's ONNX export on onnxruntime against the run's PyTorch model, in one run.

Every engine classifies the same records the same way: one encoding, length-sorted batches of the same size, the
same max_length, fp32, the same number of threads. The rows are PyTorch on the run as `tunelab predict` loads it
(base + unmerged LoRA), PyTorch on the merged model (what the export traces), and onnxruntime on the export; each
speed is also a ratio to the first. Rounds alternate the engines and each keeps its best round (the machine is
shared). Agreement compares onnxruntime's labels and scores with PyTorch's on the run.

    python bench/onnx_throughput.py                    # trains a short minilm-l6 LoRA run on SST-2 first
    python bench/onnx_throughput.py --run runs/<run>   # or any complete one-task classifier run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from tunelab.config import RunConfig, TrainingConfig, load_config
from tunelab.data.task_records import read_for_task
from tunelab.eval.predict import classify
from tunelab.export.onnx import export as export_onnx
from tunelab.export.onnx_predict import OnnxClassifier
from tunelab.pipeline import train
from tunelab.run_commands import merged_model
from tunelab.runs import RunDir
from tunelab.train.trained import load_run

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def short_run(folder: Path) -> RunDir:
    """minilm-l6 + LoRA on 400 SST-2 sentences for 25 steps: trained enough that labels are not coin flips."""
    overrides = [
        "name=onnx-bench",
        f"output_dir={folder}",
        f"data.train={SST2 / 'train.jsonl'}",
        f"data.validation={SST2 / 'validation.jsonl'}",
        f"data.test={SST2 / 'test.jsonl'}",
        "data.max_train_examples=400",
        "data.max_eval_examples=64",
        "training.max_steps=25",
        "training.precision=fp32",
        "eval.baselines=[]",
    ]
    return train(load_config(ROOT / "configs" / "sentiment-minilm-lora.yaml", overrides))


def cpu_flags() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    marks = ", ".join(
        f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    )
    return f"{model}; {os.cpu_count()} cores; {marks}; load average {os.getloadavg()[0]:.1f} at the end"


def best_rate(engines: dict, records: list, rounds: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """examples/s of each engine (its best round) and its predictions; engines alternate within every round."""
    for run_engine in engines.values():  # warm-up: first-call allocations and onnxruntime's graph set-up
        run_engine(records[:64])
    seconds = {name: float("inf") for name in engines}
    predictions = {}
    for _ in range(rounds):
        for name, run_engine in engines.items():
            started = time.perf_counter()
            predictions[name] = run_engine(records)
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    return {name: len(records) / s for name, s in seconds.items()}, predictions


def agreement(ours: list[dict], theirs: list[dict]) -> tuple[float, float]:
    """(share of equal labels, largest score difference)."""
    same = sum(a["label"] == b["label"] for a, b in zip(ours, theirs)) / len(theirs)
    largest = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(ours, theirs) for k in b["scores"])
    return same, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a complete classifier run (default: train a short minilm-l6 LoRA run)")
    parser.add_argument("--data", default=str(SST2 / "test.jsonl"), help="records to classify (default: SST-2 test)")
    parser.add_argument("--batch-size", type=int, help="default: the run's training.eval_batch_size")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        run = RunDir(args.run) if args.run else short_run(Path(scratch) / "runs")
        classifier = OnnxClassifier.load(export_onnx(run, Path(scratch) / "onnx"), threads=threads)
        classifier.batch_size = args.batch_size or classifier.batch_size
        records = read_for_task(args.data, classifier.spec, with_target=False)
        loaded = load_run(run)
        settings = RunConfig(
            task="classification",
            data=classifier.spec.data_config(classifier.max_length),
            training=TrainingConfig(eval_batch_size=classifier.batch_size),
        )
        merged = merged_model(load_run(run))

        def pytorch(model):
            return lambda chunk: classify(model, loaded.tokenizer, chunk, settings, classifier.labels)

        engines = {
            "PyTorch, run as loaded": pytorch(loaded.model),
            "PyTorch, merged model": pytorch(merged),
            "onnxruntime, ONNX export": classifier.classify,
        }
        rates, predictions = best_rate(engines, records, args.rounds)
    same, largest = agreement(predictions["onnxruntime, ONNX export"], predictions["PyTorch, run as loaded"])
    baseline = rates["PyTorch, run as loaded"]
    print(f"\ncpu: {cpu_flags()}")
    print(f"torch {torch.__version__} ({threads} threads), onnxruntime {onnxruntime.__version__} ({threads} threads)")
    print(
        f"run {run.path.name}; {len(records)} records of {args.data}; batch {classifier.batch_size}, "
        f"max_length {classifier.max_length}, fp32, best of {args.rounds} rounds\n"
    )
    print("| engine | examples/s | vs PyTorch (run) |\n| --- | ---: | ---: |")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |")
    print(f"\nonnxruntime vs PyTorch (run): labels equal on {same:.1%}, largest score difference {largest:.2e}")


if __name__ == "__main__":
    main()
