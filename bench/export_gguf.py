"""GGUF export: size and export time per quantisation, greedy agreement with the merged model (read back by
transformers' GGUF loader), and, where llama-cpp-python is installed, the same prompts through llama.cpp
itself with its generation speed as a ratio to transformers on the merged model, measured in the same run.

    python bench/export_gguf.py                    # trains a short smollm2 LoRA run first
    python bench/export_gguf.py --run runs/<run>   # or exports a decoder run you have
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serving import CHAT_PROMPTS, short_lora_run  # noqa: E402  (the tests' short run and prompts, shared)

PROMPTS = [
    *CHAT_PROMPTS,
    "Write a haiku about rain.",
    "Who wrote Hamlet?",
    "Translate 'thank you' into German.",
    "What is the boiling point of water?",
    "List two fruits.",
    "What colour is the sky on a clear day?",
    "Explain what a noun is in one sentence.",
    "What is the largest planet?",
]


def greedy_hf(model, tokenizer, prompt: str, tokens: int) -> tuple[list[int], float]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = out[0, ids["input_ids"].shape[1] :].tolist()
    return answer, time.perf_counter() - started


def greedy_llama_cpp(path: Path, tokenizer, tokens: int) -> tuple[list[list[int]], float]:
    """Every prompt through llama.cpp (its own tokenizer from the GGUF, greedy), and the generation seconds."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=os.cpu_count(), verbose=False)
    answers, seconds = [], 0.0
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        started = time.perf_counter()
        out = llm.create_completion(text, max_tokens=tokens, temperature=0.0, top_k=1)
        seconds += time.perf_counter() - started
        answers.append(tokenizer(out["choices"][0]["text"], add_special_tokens=False)["input_ids"])
    return answers, seconds


def strip_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a decoder run to export (default: train a short smollm2 LoRA run)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--quants", default="f16,bf16,q8_0,q4_0")
    args = parser.parse_args()
    from tunelab.run_commands import merged_model
    from tunelab.runs import RunDir
    from tunelab.train.trained import load_run

    with tempfile.TemporaryDirectory(prefix="tunelab-gguf-bench-") as folder:
        folder = Path(folder)
        run = (
            RunDir(args.run)
            if args.run
            else short_lora_run(folder / "runs", ROOT.parent / "shared" / "data" / "dialogsum", 1, "gguf-bench")
        )
        loaded = load_run(run)
        tokenizer, eos = loaded.tokenizer, loaded.tokenizer.eos_token_id
        merged = merged_model(loaded).eval()
        reference, hf_seconds = zip(*(greedy_hf(merged, tokenizer, p, args.max_tokens) for p in PROMPTS))
        reference = [strip_eos(r, eos) for r in reference]
        hf_tokens = sum(len(r) for r in reference)
        flags = subprocess.run(
            ["grep", "-m1", "-o", "-w", "avx512_bf16", "/proc/cpuinfo"], capture_output=True, text=True
        )
        print(
            f"machine: {os.cpu_count()} cores, avx512_bf16 {'yes' if flags.stdout else 'no'}; {len(PROMPTS)} chat prompts, greedy, max {args.max_tokens} new tokens"
        )
        print(
            f"transformers, merged fp32 model: {hf_tokens} tokens in {sum(hf_seconds):.1f} s = {hf_tokens / sum(hf_seconds):.1f} tokens/s"
        )
        try:
            import llama_cpp  # noqa: F401

            have_llama_cpp = True
        except ImportError:
            have_llama_cpp = False
            print("llama-cpp-python is not installed: the llama.cpp columns are left out")
        print(
            "\n| quant | file MB | export s | transformers GGUF loader: greedy = merged | llama.cpp: greedy = merged | llama.cpp tokens/s | vs transformers fp32 |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for quant in args.quants.split(","):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "tunelab", "export", str(run.path), "--format", "gguf", "--quant", quant,
                 "--output", str(folder / quant)],
                capture_output=True, text=True,
            )  # fmt: skip
            export_seconds = time.perf_counter() - started
            if done.returncode != 0:
                print(f"| {quant} | export failed: {done.stderr[-300:]} | | | | | |")
                continue
            (path,) = (folder / quant).glob("*.gguf")
            back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
            read = [strip_eos(greedy_hf(back, tokenizer, p, args.max_tokens)[0], eos) for p in PROMPTS]
            same_hf = sum(a == b for a, b in zip(read, reference))
            cells = ["-", "-", "-"]
            if have_llama_cpp:
                answers, seconds = greedy_llama_cpp(path, tokenizer, args.max_tokens)
                same = sum(a == b for a, b in zip(answers, reference))
                speed = sum(len(a) for a in answers) / seconds
                cells = [f"{same}/{len(PROMPTS)}", f"{speed:.1f}", f"{speed / (hf_tokens / sum(hf_seconds)):.2f}x"]
            size = path.stat().st_size / 2**20
            print(
                f"| {quant} | {size:.0f} | {export_seconds:.1f} | {same_hf}/{len(PROMPTS)} | "
                + " | ".join(cells)
                + " |"
            )


if __name__ == "__main__":
    main()
