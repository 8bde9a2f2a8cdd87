"""LoRA SFT throughput: tunelab against TRL's SFTTrainer (the canonical recipe), side by side in one run.

    python bench/train_throughput.py --model smollm2-135m-instruct --steps 8 --batch-size 4 --repeats 2

Every variant trains the same model on the same DialogSum prompts (the first
steps x batch-size training dialogues, so lengths vary as in the real data) with
the same LoRA settings (r 16, alpha 32, dropout 0.05, q/v projections), batch
size, steps, learning rate, schedule and seed. Each run is its own process (its
peak RSS is its own) and the variants alternate (A B C A B C ...); the table
shows medians over the repeats.

Variants:
  tunelab        tunelab's own training path (pipeline.setup) with its defaults: precision and attention chosen
                 from the hardware, padding-free packing, completion-only chunked loss, no gradient checkpointing
  tunelab-OPT-OPT...  the same with settings changed, one option per change, so each is measured on its own:
                 fp32 / bf16     training.precision forced (separates the precision choice from the rest)
                 nopack          packing off (length-grouped padded batches instead)
                 gc              training.gradient_checkpointing on (tunelab's low-memory setting; TRL's default)
                 sdpa, sdpa_varlen, flex_attention, flash_attention_2   training.attention forced
                 e.g. tunelab-fp32-sdpa is fp32 with the dense block-diagonal mask
  trl-fair       TRL SFTTrainer with bf16=False (the baseline the target is measured against)
  trl-defaults   TRL SFTTrainer with its pure defaults (bf16=True, as TRL ships)
  trl-best       TRL's fastest documented recipe: bf16, padding_free, no gradient checkpointing, flash-attention
                 and Liger kernels where installed

Figures per run: non-padding tokens/s and seconds/step over the steps after the
first (warm-up), peak RSS of the process, peak GPU memory, the final training
loss (mean of the last 3 logged steps) and the loss on 16 held-out DialogSum
validation dialogues computed by one shared function (the trained model cast to
fp32, plain forward, completion tokens only), so speed cannot come from training less. MFU divides
model FLOPs per second (4 x non-embedding parameters per token: forward and
activation-gradient backward, no weight gradients for frozen weights; LM head
and attention scores left out, so it is a lower bound) by the matmul peak that
bench/peak.py measures at the run's precision, in this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from tunelab.render import format_decoder_prompt, has_chat_template

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
DIALOGSUM = Path(os.environ.get("TUNELAB_DATA", BENCH.parent.parent / "shared" / "data")) / "dialogsum"
PROMPT = "Summarise the dialogue:\n{dialogue}"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
ATTENTION = ("sdpa", "sdpa_varlen", "flex_attention", "flash_attention_2")
TUNELAB_OPTIONS = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "nopack": {"packing": False},
    "gc": {"gradient_checkpointing": True},
    **{name: {"attention": name} for name in ATTENTION},
}
TRL_VARIANTS = ("trl-fair", "trl-defaults", "trl-best")
HELDOUT = 16


def dialogsum_rows(split: str, count: int) -> list[dict]:
    rows = []
    with open(DIALOGSUM / f"{split}.jsonl", encoding="utf-8") as lines:
        for line in lines:
            rows.append(json.loads(line))
            if len(rows) == count:
                break
    return rows


def pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(PROMPT.format(dialogue=r["dialogue"]), r["summary"]) for r in rows]


class StepClock(TrainerCallback):
    """Wall time of every optimiser step and every logged training loss."""

    def __init__(self):
        self.durations: list[float] = []
        self.losses: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.durations.append(time.perf_counter() - self._started)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


class CountingCollator:
    """Wraps a trainer's collator and records the real (non-padding) tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate = collate
        self.tokens: list[int] = []

    def __call__(self, features):
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return self.collate(features)


def heldout_loss(model, tokenizer, examples: list[tuple[str, str]]) -> float:
    """Token-weighted completion cross-entropy on fixed examples, computed the same way for every variant: in
    fp32, so a variant that stored its frozen base in bf16 is judged on what it learned, not on bf16 rounding."""
    model = model.float().eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for prompt, completion in examples:
        prompt_ids = tokenizer(
            format_decoder_prompt(prompt, tokenizer), add_special_tokens=not has_chat_template(tokenizer)
        )["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([list(prompt_ids) + completion_ids], device=device)
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            loss = model(input_ids=ids, labels=labels).loss.float().item()
        total += loss * len(completion_ids)
        count += len(completion_ids)
    return total / count


def tunelab_settings(variant: str) -> dict:
    """The `training:` settings a tunelab variant changes from the defaults (see the module docstring)."""
    settings = {}
    for option in variant.split("-")[1:]:
        if option not in TUNELAB_OPTIONS:
            raise ValueError(
                f"unknown tunelab option {option!r} in {variant!r}; choose from {', '.join(TUNELAB_OPTIONS)}"
            )
        settings.update(TUNELAB_OPTIONS[option])
    return settings


def tunelab_trainer(args, workdir: Path, settings: dict):
    """A trainer built exactly as `tunelab train` builds it, from a config equivalent to the TRL run's settings."""
    from tunelab import pipeline
    from tunelab.config import build_config
    from tunelab.data.plan import plan_training
    from tunelab.data.taskset import load_taskset
    from tunelab.runs import RunDir
    from tunelab.train.objectives import objective_of

    files = {}
    for split, rows in (
        ("train", dialogsum_rows("train", args.steps * args.batch_size)),
        ("validation", dialogsum_rows("validation", 8)),
    ):
        files[split] = workdir / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = build_config(
        {
            "name": "bench",
            "task_type": "causal_lm",
            "output_dir": str(workdir / "runs"),
            "model": {"name": args.model},
            "data": {
                "train": str(files["train"]),
                "validation": str(files["validation"]),
                "test": str(files["validation"]),
                "prompt_template": PROMPT,
                "response_field": "summary",
                "max_length": args.max_length,
                "max_target_length": 256,
            },
            "method": {"name": "lora", "lora": {**LORA, "target_modules": ["q_proj", "v_proj"]}},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "warmup_ratio": 0,
                "weight_decay": 0,
                "seed": args.seed,
                "logging_steps": 1,
                **settings,
            },
            "eval": {"baselines": []},
        }
    )
    resolved = pipeline.run_precision(config)
    tasks = load_taskset(config)
    plan = plan_training(config, tasks, one_task_per_batch=objective_of(config).one_task_per_batch)
    ready = pipeline.setup(config, RunDir.create(config), tasks, plan, resolved)
    return ready.trainer, ready.tokenizer, resolved


def baseline_trainer(args, variant: str):
    from tunelab.models.loading import load_tokenizer, resolve_source

    from trl_baseline import trl_trainer

    source = resolve_source(args.model)
    chat = has_chat_template(load_tokenizer(source))
    rows = pairs(dialogsum_rows("train", args.steps * args.batch_size))
    if not chat:  # a base model: the prompt ends with the newline tunelab puts before the answer
        rows = [(f"{prompt}\n", completion) for prompt, completion in rows]
    trainer = trl_trainer(
        source,
        rows,
        conversational=chat,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        max_length=args.max_length,
        fair=variant == "trl-fair",
        best=variant == "trl-best",
    )
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    return trainer, trainer.processing_class, precision


def non_embedding_parameters(model) -> int:
    """The pretrained weights every token passes through: all but the embeddings, the LM head and LoRA's own."""
    embeddings = {
        id(p) for module in (model.get_input_embeddings(), model.get_output_embeddings()) for p in module.parameters()
    }
    return sum(p.numel() for name, p in model.named_parameters() if id(p) not in embeddings and "lora_" not in name)


def run_variant(variant: str, args) -> dict:
    """Train one variant in this process and return its figures."""
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as workdir:
        if variant.startswith("tunelab"):
            trainer, tokenizer, precision = tunelab_trainer(args, Path(workdir), tunelab_settings(variant))
        else:
            trainer, tokenizer, precision = baseline_trainer(args, variant)
        clock, counter = StepClock(), CountingCollator(trainer.data_collator)
        trainer.add_callback(clock)
        trainer.data_collator = counter
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        model = trainer.model
        timed = clock.durations[1:]  # the first step pays for lazy initialisation
        tokens = sum(counter.tokens[1 : len(clock.durations)])
        result = {
            "variant": variant,
            "precision": precision,
            "steps": len(clock.durations),
            "seconds_per_step": statistics.median(timed),
            "tokens_per_second": tokens / sum(timed),
            "padding_free_tokens": sum(counter.tokens[: len(clock.durations)]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "final_train_loss": statistics.mean(clock.losses[-3:]),
            "non_embedding_parameters": non_embedding_parameters(
                model.get_base_model() if hasattr(model, "get_base_model") else model
            ),
        }
        result["heldout_loss"] = heldout_loss(model, tokenizer, pairs(dialogsum_rows("validation", HELDOUT)))
        return result


def launch(variant: str, argv: list[str], script: str = __file__) -> dict:
    """Run one variant in a fresh process of `script` (a bench with a `--worker VARIANT` mode); its last stdout line
    is the JSON result."""
    done = subprocess.run([sys.executable, script, *argv, "--worker", variant], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        errors = [line for line in done.stderr.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
        return {"variant": variant, "error": errors[-1:] or done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(results: list[dict], peaks: dict[str, float]) -> dict[str, dict]:
    """Median of each figure per variant, with MFU at the variant's precision."""
    table = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant and "error" not in r]
        if not runs:
            table[variant] = {"error": next(r["error"] for r in results if r["variant"] == variant)}
            continue
        row = {
            key: statistics.median(r[key] for r in runs)
            for key in ("tokens_per_second", "seconds_per_step", "peak_rss_mb", "final_train_loss", "heldout_loss")
        }
        row["peak_gpu_mb"] = (
            statistics.median(r["peak_gpu_mb"] for r in runs) if runs[0]["peak_gpu_mb"] is not None else None
        )
        row["precision"], row["runs"] = runs[0]["precision"], len(runs)
        peak = peaks.get(row["precision"])
        row["mfu"] = 4 * runs[0]["non_embedding_parameters"] * row["tokens_per_second"] / peak if peak else None
        table[variant] = row
    return table


def render(table: dict[str, dict], reference: str, peaks: dict[str, float]) -> str:
    base = table.get(reference, {}).get("tokens_per_second")
    lines = [
        "matmul peak (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in peaks.items()),
        f"{'variant':15} {'prec':5} {'tok/s':>8} {'s/step':>7} {'RSS MB':>8} {'GPU MB':>8} {'train loss':>10} "
        f"{'heldout':>8} {'MFU':>6} {'vs ' + reference:>12}",
    ]
    for variant, row in table.items():
        if "error" in row:
            lines.append(f"{variant:15} failed: {row['error']}")
            continue
        ratio = f"{row['tokens_per_second'] / base:.2f}x" if base else "-"
        gpu = f"{row['peak_gpu_mb']:8.0f}" if row["peak_gpu_mb"] is not None else f"{'-':>8}"
        mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] is not None else f"{'-':>6}"
        lines.append(
            f"{variant:15} {row['precision']:5} {row['tokens_per_second']:8.1f} {row['seconds_per_step']:7.2f} "
            f"{row['peak_rss_mb']:8.0f} {gpu} {row['final_train_loss']:10.4f} {row['heldout_loss']:8.4f} {mfu} {ratio:>12}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="tunelab,trl-fair,trl-defaults",
        help=f"comma list of tunelab[-OPTION...] (options: {', '.join(TUNELAB_OPTIONS)}) and "
        f"{', '.join(TRL_VARIANTS)}; they alternate within each repeat",
    )
    parser.add_argument("--reference", default="trl-fair", help="the variant the ratio column divides by")
    parser.add_argument("--output", help="also write the per-run results and the summary as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args)), flush=True)
        return
    variants = args.variants.split(",")
    for variant in variants:
        if variant.startswith("tunelab"):
            try:
                tunelab_settings(variant)
            except ValueError as error:
                parser.error(str(error))
        elif variant not in TRL_VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose tunelab[-OPTION...] or {', '.join(TRL_VARIANTS)}")
    from peak import matmul_peaks

    peaks = matmul_peaks()
    results = []
    for repeat in range(args.repeats):
        for variant in variants:
            result = launch(variant, sys.argv[1:])
            print(f"repeat {repeat + 1} {variant}: " + json.dumps(result), flush=True)
            results.append(result)
    table = summarise(results, peaks)
    print(
        f"\n{args.model}, {args.steps} steps x batch {args.batch_size}, medians of {args.repeats} alternating runs, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else f'CPU, {torch.get_num_threads()} threads'}"
    )
    print(render(table, args.reference, peaks))
    if args.output:
        Path(args.output).write_text(
            json.dumps({"args": vars(args), "peaks": peaks, "runs": results, "summary": table}, indent=2)
        )


if __name__ == "__main__":
    main()
