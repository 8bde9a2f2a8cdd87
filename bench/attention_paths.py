"""Attention paths over one packed batch, side by side in one run: what each costs a training step on this machine.

    python bench/attention_paths.py --model smollm2-135m-instruct --examples 4 --repeats 3

The first `--examples` DialogSum training dialogues (prompt and summary, as training sees them) are packed into one
row by tunelab's collator, with position ids restarting per example and the varlen arguments. Each path runs the
same batch with the same LoRA-style trainable set (q and v projections): forward and backward (training) and
forward alone (evaluation loss). Figures are the best of `--repeats` after one warm-up; each ratio divides by the
dense-mask `sdpa` path measured in the same run. Paths that cannot run here are listed with the reason
(flash-attention needs CUDA; FlexAttention has no backward on CPU in PyTorch 2.13). The packed logits of each path
are also compared with `sdpa`'s, so a fast path cannot be a wrong one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunelab.data.encode import VARLEN_KEYS, PackedCollator, Packing
from tunelab.models.attention import IMPLEMENTATIONS, flash_attention_available
from tunelab.models.loading import load_tokenizer, resolve_source

DIALOGSUM = Path(os.environ.get("TUNELAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "dialogsum"


def packed_batch(tokenizer, count: int) -> dict:
    features = []
    with open(DIALOGSUM / "train.jsonl", encoding="utf-8") as lines:
        for line, _ in zip(lines, range(count)):
            row = json.loads(line)
            ids = tokenizer(f"Summarise the dialogue:\n{row['dialogue']}\n{row['summary']}")["input_ids"][:1024]
            features.append({"input_ids": ids, "labels": ids})
    return PackedCollator(tokenizer.pad_token_id, Packing(None))(features)


def timed(step, repeats: int) -> float:
    step()  # warm-up: kernel selection, allocation, compilation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = resolve_source(args.model)
    batch = packed_batch(load_tokenizer(source), args.examples)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "q_proj" in name or "v_proj" in name
    inputs = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        **{k: batch[k] for k in VARLEN_KEYS},
    }

    def forward():
        return model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]

    def train_step():
        forward().float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def eval_step():
        with torch.no_grad():
            forward()

    device = (
        f"CPU, {torch.get_num_threads()} threads" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    )
    print(
        f"{args.model}, {args.examples} examples packed into one row of {batch['input_ids'].shape[1]} tokens, {device}"
    )
    print(f"{'attention':18} {'fwd+bwd s':>10} {'vs sdpa':>8} {'fwd s':>8} {'vs sdpa':>8} {'max |logit diff|':>17}")
    reference, baseline = None, None
    for attention in IMPLEMENTATIONS:
        if attention == "flash_attention_2" and not flash_attention_available():
            print(f"{attention:18} not run: needs CUDA and flash-attn")
            continue
        model.set_attn_implementation(attention)
        with torch.no_grad():
            hidden = forward()
        reference = hidden if reference is None else reference
        trains = attention != "flex_attention" or torch.cuda.is_available()
        figures = (timed(train_step, args.repeats) if trains else None, timed(eval_step, args.repeats))
        baseline = baseline or figures
        cells = [
            f"{value:10.2f} {baseline[i] / value:7.2f}x" if value else f"{'(no CPU backward)':>19}"
            for i, value in enumerate(figures)
        ]
        print(f"{attention:18} {cells[0]} {cells[1]} {float((hidden - reference).abs().max()):17.2e}", flush=True)


if __name__ == "__main__":
    main()
