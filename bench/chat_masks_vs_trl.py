"""Peer check of the trained-token mask: tunelab's chat kind against TRL SFTTrainer's `assistant_only_loss=True`, on
the same conversations and tokenizer.

TRL finds assistant tokens through the template's `{% generation %}` markers (`apply_chat_template(...,
return_assistant_tokens_mask=True)`), which stock templates lack; tunelab diffs prefix renderings of the template
itself. So TRL is run twice: on SmolLM2's stock template (what a user gets), then on ChatML variants with markers,
one placed as TRL's own training templates place them (qwen2_5_training.jinja: from the newline after the role to the
newline after <|im_end|>) and one around the content and its <|im_end|> only. TRL's masks come from TRL's own code:
an SFTTrainer is built (on a tiny random model: the mask does not depend on the weights) and its prepared
`train_dataset`'s labels are read.

    pip install --no-deps --target /tmp/trl 'trl==1.16.0'  # the bench extra, beside the environment
    PYTHONPATH=src:/tmp/trl python bench/chat_masks_vs_trl.py --count 200

TRL's own dependencies are tunelab's (transformers, datasets, accelerate); nothing else is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from tunelab.config import DataConfig
from tunelab.data.encode import encode
from tunelab.kinds import kind_named
from tunelab.kinds.chat_messages import read_conversation
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.models.loading import load_tokenizer, resolve_source
from tunelab.records import Record

SHARED_CHAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "chat" / "train.jsonl"

STOCK_LOOP = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
)
MARKED_AS_TRL = (
    STOCK_LOOP + "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant' }}{% generation %}"
    "{{ '\n' + message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's ChatML with markers where TRL's own ChatML training template (qwen2_5_training.jinja) puts them."""
MARKED_TIGHT = (
    STOCK_LOOP + "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's ChatML with markers around each assistant's content and its <|im_end|> only."""


def conversations(path: Path, count: int) -> list[Record]:
    with path.open(encoding="utf-8") as lines:
        return [Record(json.loads(line), f"{path}:{n}") for n, line in zip(range(1, count + 1), lines)]


def tunelab_masks(records: list[Record], tokenizer) -> list[dict]:
    """tunelab's encoded conversations (ids and labels), uncut, as a chat run encodes them."""
    data = DataConfig(kind="chat", max_length=1 << 15)
    kind_named("chat").prepare_tokenizer(tokenizer, data)
    return encode("chat", "decoder", records, tokenizer, data).examples


def trl_masks(records: list[Record], tokenizer, template: str | None) -> list[dict]:
    """The ids and labels TRL's SFTTrainer prepares with assistant_only_loss=True, on `template` (None: the
    tokenizer's own)."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    if template:
        tokenizer.chat_template = template
    rows = [{"messages": read_conversation(record.fields, "messages", "tools")[0]} for record in records]
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-masks-"),
        assistant_only_loss=True,
        max_length=None,
        report_to="none",
        bf16=False,
        use_cpu=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in trainer.train_dataset]


def compare(ours: list[dict], theirs: list[dict], tokenizer) -> dict:
    """Per-conversation agreement of the trained positions, and the tokens each trains that the other does not
    (each with the token before it, which says where in the turn it sits)."""
    per_conversation, only_ours, only_theirs = [], Counter(), Counter()
    for a, b in zip(ours, theirs, strict=True):
        if a["input_ids"] != b["input_ids"]:
            raise SystemExit("tunelab and TRL tokenised a conversation differently; the masks cannot be compared")
        tokens = tokenizer.convert_ids_to_tokens(a["input_ids"])
        mine = {i for i, label in enumerate(a["labels"]) if label != IGNORE_INDEX}
        trl = {i for i, label in enumerate(b["labels"]) if label != IGNORE_INDEX}
        per_conversation.append((len(mine), len(trl), len(mine & trl)))
        only_ours.update(f"{tokens[i]!r} after {tokens[i - 1]!r}" for i in mine - trl)
        only_theirs.update(f"{tokens[i]!r} after {tokens[i - 1]!r}" for i in trl - mine)
    return {"per_conversation": per_conversation, "only_tunelab": only_ours, "only_trl": only_theirs}


def stock_assistant_mask(records: list[Record], tokenizer) -> int:
    """How many tokens the stock template's assistant mask holds: the call TRL's tokenisation makes
    (`apply_chat_template(..., return_assistant_tokens_mask=True)`), made directly, past SFTTrainer's refusal."""
    ones = 0
    for record in records:
        messages = read_conversation(record.fields, "messages", "tools")[0]
        output = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ones += sum(output["assistant_masks"])
    return ones


def report(name: str, figures: dict) -> None:
    rows = figures["per_conversation"]
    ours, theirs, both = (sum(row[k] for row in rows) for k in range(3))
    agreement = [both / max(a, b) if max(a, b) else 1.0 for a, b, both in rows]
    identical = sum(a == b == both for a, b, both in rows)
    print(f"\n## tunelab vs TRL, {name}")
    print(f"conversations {len(rows)}; identical masks {identical}/{len(rows)}")
    print(f"tokens trained: tunelab {ours}, TRL {theirs}, both {both}")
    print(
        f"per conversation: tunelab {statistics.mean(r[0] for r in rows):.1f}, TRL "
        f"{statistics.mean(r[1] for r in rows):.1f}, both {statistics.mean(r[2] for r in rows):.1f} (means); "
        f"agreement (both / larger) min {min(agreement):.3f} median {statistics.median(agreement):.3f} "
        f"max {max(agreement):.3f}"
    )
    print(f"trained by tunelab only: {dict(figures['only_tunelab'].most_common(5)) or 'none'}")
    print(f"trained by TRL only: {dict(figures['only_trl'].most_common(5)) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_CHAT)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    from datasets import disable_progress_bars

    disable_progress_bars()
    records = conversations(args.data, args.count)
    source = resolve_source(args.model)
    ours = tunelab_masks(records, load_tokenizer(source))
    print(f"{len(records)} conversations from {args.data}, {args.model}'s tokenizer")
    print(
        f"tunelab (stock template): {sum(sum(label != IGNORE_INDEX for label in e['labels']) for e in ours)} tokens trained"
    )
    try:
        trl_masks(records, load_tokenizer(source), None)
        print("TRL on the stock template: built a dataset (unexpected)")
    except Exception as exc:  # what TRL does on a template without generation markers is the finding
        print(f"TRL on the stock template: SFTTrainer raises {type(exc).__name__}: {exc}")
    ones = stock_assistant_mask(records, load_tokenizer(source))
    print(f"the stock template's assistant mask, asked directly (return_assistant_tokens_mask=True): {ones} tokens")
    for name, template in (
        ("ChatML marked as TRL's training templates", MARKED_AS_TRL),
        ("ChatML marked tightly", MARKED_TIGHT),
    ):
        tokenizer = load_tokenizer(source)
        report(name, compare(ours, trl_masks(records, tokenizer, template), tokenizer))


if __name__ == "__main__":
    main()
