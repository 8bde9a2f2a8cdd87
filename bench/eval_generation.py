"""Benchmark: evaluation generation, tunelab's batched path vs one prompt at a time vs transformers' pipeline.

Same model, same prompts (a seeded draw of a task's test split, rendered with the task's first template and
the model's chat template), greedy decoding, same max_new_tokens. The methods alternate (A B C D A B C D ...)
and medians are reported; the speed figure is the ratio of generated tokens per second to the one-at-a-time
baseline measured in the same run, and the pipeline's figure is printed beside it. "batched, padded prefill" is
tunelab's batched path without its packed prefill (the path before it), so that change is measured on its own.
It also checks which answers batching changes.

    .venv/bin/python bench/eval_generation.py --model smollm2-135m-instruct --task dialogsum --n 32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import pipeline as hf_pipeline

from tunelab.data.task_records import load_records
from tunelab.eval import generate as generation
from tunelab.eval.generate import generate_texts
from tunelab.eval.runner import prompt_ids
from tunelab.eval.targets import load_target
from tunelab.tasks import load_task


def _tokens(tokenizer, texts: list[str]) -> int:
    """Generated tokens, counted the same way for every method (re-tokenising the answers)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="dialogsum")
    parser.add_argument("--n", type=int, default=32, help="prompts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    target = load_target(args.model, batch_size=args.batch_size)
    spec = load_task(args.task)
    max_new = args.max_new_tokens or spec.max_new_tokens
    records = load_records(spec, args.n, seed=0)
    prompts = [prompt_ids(target, spec.prompt(r), max_new) for r in records]
    tokenizer = target.tokenizer
    decoder_only = target.task == "causal_lm"
    texts = [tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
    tokenizer.padding_side = "left"
    generator = hf_pipeline(
        "text-generation" if decoder_only else "text2text-generation",
        model=target.model,
        tokenizer=tokenizer,
        device=target.model.device,
    )

    def batched():
        return generate_texts(
            target.model,
            tokenizer,
            prompts,
            decoder_only=decoder_only,
            batch_size=args.batch_size,
            max_new_tokens=max_new,
            stop=spec.stop,
        )

    def batched_padded_prefill():
        """The batched path as it was before packed prefill: the left-padded batch prefilled as it stands."""
        packed = generation.packed_prefill
        generation.packed_prefill = lambda model, prompts, width: None
        try:
            return batched()
        finally:
            generation.packed_prefill = packed

    def one_at_a_time():
        return generate_texts(
            target.model,
            tokenizer,
            prompts,
            decoder_only=decoder_only,
            batch_size=1,
            max_new_tokens=max_new,
            stop=spec.stop,
        )

    def transformers_pipeline():
        outputs = generator(
            texts,
            batch_size=args.batch_size,
            max_new_tokens=max_new,
            do_sample=False,
            return_full_text=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return [o[0]["generated_text"].strip() for o in outputs]

    methods = {
        "tunelab batched": batched,
        "batched, padded prefill": batched_padded_prefill,
        "one at a time": one_at_a_time,
        "transformers pipeline": transformers_pipeline,
    }
    seconds = {name: [] for name in methods}
    answers = {}
    for _ in range(args.repeats):
        for name, run in methods.items():
            if target.model.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            answers[name] = run()
            if target.model.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"
    )
    print(
        f"model {args.model}, task {args.task}, {args.n} prompts, batch {args.batch_size}, max_new_tokens {max_new}, "
        f"greedy; {device}; torch {torch.__version__}; medians of {args.repeats} alternating runs"
    )
    rate = {name: _tokens(tokenizer, answers[name]) / statistics.median(seconds[name]) for name in methods}
    print(
        f"{'method':24} {'seconds':>8} {'gen tokens':>10} {'tokens/s':>9} {'vs one at a time':>17} {'vs pipeline':>12}"
    )
    for name in methods:
        print(
            f"{name:24} {statistics.median(seconds[name]):8.2f} {_tokens(tokenizer, answers[name]):10d} "
            f"{rate[name]:9.1f} {rate[name] / rate['one at a time']:16.2f}x {rate[name] / rate['transformers pipeline']:11.2f}x"
        )
    for name in ("tunelab batched", "batched, padded prefill", "transformers pipeline"):
        same = sum(a == b for a, b in zip(answers[name], answers["one at a time"]))
        print(f"{name} answers identical to one-at-a-time: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
