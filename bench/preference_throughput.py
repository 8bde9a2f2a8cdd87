"""DPO with LoRA: tunelab against TRL's DPOTrainer, side by side in one run, on the same pairs in the same order.

    pip install --no-deps --target /tmp/trl 'trl==1.16.0'  # the bench extra, beside the environment
    PYTHONPATH=src:/tmp/trl OMP_NUM_THREADS=2 python bench/preference_throughput.py --steps 8 --batch-size 4

Both train smollm2-135m-instruct (the same safetensors, fp32) with the same LoRA (r 16, alpha 32, no dropout, q/v
projections; TRL disables dropout anyway), beta, learning rate, linear schedule without warmup or weight decay,
AdamW, seed, batch size and steps, on the first steps x batch-size pairs of preference_hh's train split in
tunelab's planned order (TRL reads them sequentially), nothing cut (--max-length holds every pair). The
reference is the model with its adapters off in both. Each run is its own process (its peak RSS is its own) and
the variants alternate (A B A B ...); the table shows medians over the repeats.

Variants:
  tunelab        tunelab's training path (pipeline.setup) with its defaults, fp32: one packed row per batch, each
                 prompt read once (sdpa_varlen), no gradient checkpointing
  tunelab-gc     the same with training.gradient_checkpointing on
  trl            TRL DPOTrainer with its defaults but bf16=False (fp32, as tunelab here): padded batches of
                 prompt+chosen and prompt+rejected rows, gradient checkpointing on
  trl-nogc       the same with gradient checkpointing off

Tokens are counted the same way for both: every pair is its prompt with each answer, 2 x prompt + chosen +
rejected tokens, as each framework tokenised it (no padding counted, a shared prompt counted twice), so
tokens/s compares the work each does on the same data. TRL's answers keep the template's newline after
<|im_end|>, tunelab's stop at <|im_end|>: one token per answer more in TRL's count (and in its log-probabilities).
Step time and tokens/s are over the steps after the first (warm-up). Equal training is shown per step: the loss
(ln 2 = 0.6931 at the first step, the adapters starting at zero) and the reward accuracy on the same batches.
The pairs' text is never printed (preference_hh is red-team material).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from train_throughput import StepClock, launch  # noqa: E402

PREFERENCE_HH = Path(os.environ.get("TUNELAB_DATA", BENCH.parent.parent / "shared" / "data")) / "preference_hh"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
VARIANTS = ("tunelab", "tunelab-gc", "trl", "trl-nogc")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def hh_rows(split: str, count: int) -> list[dict]:
    rows = []
    with open(PREFERENCE_HH / f"{split}.jsonl", encoding="utf-8") as lines:
        for line in lines:
            rows.append(json.loads(line))
            if len(rows) == count:
                break
    return rows


def tunelab_config(args, workdir: Path, gradient_checkpointing: bool):
    """The tunelab run equivalent to the TRL run's settings, on the first pairs of preference_hh."""
    from tunelab.config import build_config

    files = {}
    for split, rows in (("train", hh_rows("train", args.steps * args.batch_size)), ("validation", hh_rows("test", 2))):
        files[split] = workdir / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return build_config(
        {
            "name": "bench-dpo",
            "output_dir": str(workdir / "runs"),
            "model": {"name": args.model},
            "data": {
                "kind": "preference",
                "train": str(files["train"]),
                "validation": str(files["validation"]),
                "test": str(files["validation"]),
                "max_length": args.max_length,
                "max_target_length": args.max_length,
            },
            "method": {"name": "lora", "lora": LORA},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "warmup_ratio": 0,
                "weight_decay": 0,
                "seed": args.seed,
                "logging_steps": 1,
                "precision": "fp32",
                "gradient_checkpointing": gradient_checkpointing,
                "preference": {"loss": "dpo", "beta": args.beta},
            },
            "eval": {"baselines": []},
        }
    )


def planned(config):
    """The run's tasks and its training plan, as `tunelab train` makes them."""
    from tunelab.data.plan import plan_training
    from tunelab.data.taskset import load_taskset
    from tunelab.train.objectives import objective_of

    tasks = load_taskset(config)
    return tasks, plan_training(config, tasks, one_task_per_batch=objective_of(config).one_task_per_batch)


def tunelab_trainer(args, workdir: Path, variant: str):
    from tunelab import pipeline
    from tunelab.runs import RunDir

    config = tunelab_config(args, workdir, gradient_checkpointing=variant == "tunelab-gc")
    return pipeline.setup(config, RunDir.create(config), *planned(config), "fp32").trainer


def trl_trainer(args, workdir: Path, variant: str):
    """TRL's DPOTrainer as its documentation shows it (conversational pairs, a PEFT LoraConfig, the reference being
    the adapter-free model), changed only where the comparison holds things equal."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tunelab.models.loading import resolve_source

    rows = hh_rows("train", args.steps * args.batch_size)
    _, plan = planned(tunelab_config(args, workdir, gradient_checkpointing=False))
    order = [index for _, index in plan.order]  # tunelab's planned order, which TRL is given to read as is
    dataset = Dataset.from_list([{key: rows[i][key] for key in ("prompt", "chosen", "rejected")} for i in order])
    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        seed=args.seed,
        beta=args.beta,
        max_length=args.max_length,
        train_sampling_strategy="sequential",  # tunelab's planned order, read as given
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        gradient_checkpointing=variant != "trl-nogc",
    )
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    return DPOTrainer(model=resolve_source(args.model), args=config, train_dataset=dataset, peft_config=peft_config)


class PairTokens:
    """Wraps a trainer's collator and records each batch's pair tokens: 2 x prompt + chosen + rejected, from the
    tokenised features both frameworks hold under the same names (prompt_ids, chosen_ids, rejected_ids)."""

    def __init__(self, collate):
        self.collate = collate
        self.tokens: list[int] = []
        self.longest: list[int] = []
        """Each batch's longest prompt + answer."""

    def __call__(self, features):
        lengths = [(len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])) for f in features]
        self.tokens.append(sum(2 * prompt + chosen + rejected for prompt, chosen, rejected in lengths))
        self.longest.append(max(prompt + max(chosen, rejected) for prompt, chosen, rejected in lengths))
        return self.collate(features)


class RewardLog(TrainerCallback):
    """Each logged step's reward accuracy and margin (both frameworks log them under TRL's names)."""

    def __init__(self):
        self.accuracies: list[float] = []
        self.margins: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "rewards/accuracies" in logs:
            self.accuracies.append(float(logs["rewards/accuracies"]))
            self.margins.append(float(logs["rewards/margins"]))


def run_variant(variant: str, args) -> dict:
    """Train one variant in this process and return its figures."""
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-dpo-") as workdir:
        build = tunelab_trainer if variant.startswith("tunelab") else trl_trainer
        trainer = build(args, Path(workdir), variant)
        clock, rewards, counter = StepClock(), RewardLog(), PairTokens(trainer.data_collator)
        trainer.add_callback(clock)
        trainer.add_callback(rewards)
        trainer.data_collator = counter
        trainer.train()
        steps = len(clock.durations)  # the collator's later batches are tunelab's validation
        timed = clock.durations[1:]
        return {
            "variant": variant,
            "steps": steps,
            "seconds_per_step": statistics.median(timed),
            "tokens_per_second": sum(counter.tokens[1:steps]) / sum(timed),
            "pair_tokens": sum(counter.tokens[:steps]),
            "longest_sequence": max(counter.longest[:steps]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "losses": clock.losses[:steps],
            "accuracies": rewards.accuracies[:steps],
            "margins": rewards.margins[:steps],
        }


def machine() -> str:
    """The CPU's name and the flags that decide what its matmuls run at, and the library versions."""
    import peft
    import transformers
    import trl

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    present = [flag for flag in CPU_FLAGS if flag in flags] or ["none of " + ", ".join(CPU_FLAGS)]
    threads = torch.get_num_threads()
    return (
        f"CPU {name}; flags {' '.join(present)}; {threads} torch threads (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); load average {os.getloadavg()[0]:.2f}\n"
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, trl {trl.__version__}"
    )


def summarise(results: list[dict]) -> dict[str, dict]:
    table = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant and "error" not in r]
        if not runs:
            table[variant] = {"error": next(r["error"] for r in results if r["variant"] == variant)}
            continue
        row = {key: statistics.median(r[key] for r in runs) for key in ("tokens_per_second", "seconds_per_step")}
        row["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs)
        row["runs"], first = len(runs), runs[0]
        row.update({key: first[key] for key in ("pair_tokens", "longest_sequence", "losses", "accuracies", "margins")})
        table[variant] = row
    return table


def render(table: dict[str, dict], reference: str) -> str:
    base = table.get(reference, {})
    lines = [
        f"{'variant':11} {'tok/s':>7} {'s/step':>7} {'RSS MB':>7} {'pair tokens':>11} {'longest':>7} "
        f"{'loss 1st':>8} {'loss last':>9} {'acc mean':>8} {'tok/s vs ' + reference:>16} {'RSS vs ' + reference:>14}"
    ]
    for variant, row in table.items():
        if "error" in row:
            lines.append(f"{variant:11} failed: {row['error']}")
            continue
        speed = f"{row['tokens_per_second'] / base['tokens_per_second']:.2f}x" if "tokens_per_second" in base else "-"
        memory = f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f}x" if "peak_rss_mb" in base else "-"
        lines.append(
            f"{variant:11} {row['tokens_per_second']:7.1f} {row['seconds_per_step']:7.2f} {row['peak_rss_mb']:7.0f} "
            f"{row['pair_tokens']:11d} {row['longest_sequence']:7d} {row['losses'][0]:8.4f} {row['losses'][-1]:9.4f} "
            f"{statistics.mean(row['accuracies']):8.3f} {speed:>16} {memory:>14}"
        )
    lines.append("\nper step (first run of each variant): loss / reward accuracy / reward margin")
    for variant, row in table.items():
        if "error" not in row:
            steps = zip(row["losses"], row["accuracies"], row["margins"])
            lines.append(f"{variant:11} " + "  ".join(f"{a:.4f}/{b:.2f}/{c:+.3f}" for a, b, c in steps))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=2048, help="longer than any pair read: nothing is cut")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="tunelab,trl", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--reference", default="trl", help="the variant the ratio columns divide by")
    parser.add_argument("--output", help="also write the per-run results and the summary as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args)), flush=True)
        return
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    print(machine(), flush=True)
    results = []
    for repeat in range(args.repeats):
        for variant in variants:
            result = launch(variant, sys.argv[1:], __file__)
            brief = {k: v for k, v in result.items() if k not in ("losses", "accuracies", "margins")}
            print(f"repeat {repeat + 1} {variant}: " + json.dumps(brief), flush=True)
            results.append(result)
    table = summarise(results)
    print(
        f"\n{args.model}, DPO (beta {args.beta}) with LoRA r {LORA['r']}, fp32, {args.steps} steps x batch "
        f"{args.batch_size} pairs of preference_hh train, medians of {args.repeats} alternating runs"
    )
    print(render(table, args.reference))
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "runs": results, "summary": table}, indent=2))


if __name__ == "__main__":
    main()
