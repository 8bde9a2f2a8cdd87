"""A batch of preference examples laid out as one packed row, each prompt computed once where attention allows.

With prompt sharing (per-example SDPA, `tunelab.models.attention`), an example is one segment: its prompt, its
first answer, then its second answer, the second answer's positions continuing from the prompt's end as the
first's do, and its tokens seeing the prompt but not the first answer (the attention reads `prompt_sharing`).
This is the prefix sharing of "Accelerating Direct Preference Optimization with Prefix Sharing" (Wang et al.,
2024): the prompt's tokens are read once, not once per answer. Without it (flash-attention, or the dense mask of
plain SDPA, which build their masks from position restarts), each answer is a segment of its own after its own
copy of the prompt. Either way nothing is padded.

The loss reads each answer token's log-probability from the position that predicts it: the token before it, or,
for an answer's first token, the prompt's last token (`score_from`), so it never reads logits of prompt positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.kinds.encoding import IGNORE_INDEX

SIDES = ("chosen", "rejected")
"""An example's two answers, in the order a segment holds them; answer g of example i is group 2 * i + g."""


@dataclass
class PairRows:
    """Collates preference examples (`tunelab.kinds.preference.encoded_preference`, each with both answers) into
    one row; `shares_prompt` lays each example out as one segment (the attention must read `prompt_sharing`)."""

    shares_prompt: bool

    def __call__(self, examples: list[dict]) -> dict:
        ids: list[int] = []
        positions: list[int] = []
        bounds = [0]
        sharing: list[list[int]] = []
        score_from: list[int] = []
        score_token: list[int] = []
        score_group: list[int] = []
        for number, example in enumerate(examples):
            prompt = example["prompt_ids"]
            for side_number, side in enumerate(SIDES):
                if side_number == 0 or not self.shares_prompt:  # a segment starts with its prompt
                    ids += prompt
                    positions += range(len(prompt))
                    last_prompt = len(ids) - 1
                answer, labels, answer_start = example[f"{side}_ids"], example[f"{side}_labels"], len(ids)
                ids += answer
                positions += range(len(prompt), len(prompt) + len(answer))
                for offset, label in enumerate(labels):
                    if label != IGNORE_INDEX:
                        score_from.append(answer_start + offset - 1 if offset else last_prompt)
                        score_token.append(label)
                        score_group.append(2 * number + side_number)
                if not self.shares_prompt:
                    bounds.append(len(ids))
            if self.shares_prompt:
                bounds.append(len(ids))
                sharing.append([len(prompt), len(example["chosen_ids"])])
        batch = {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([positions]),
            "cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32),
            "cu_seq_lens_k": torch.tensor(bounds, dtype=torch.int32),
            "max_length_q": max(b - a for a, b in zip(bounds[:-1], bounds[1:])),
            "max_length_k": max(b - a for a, b in zip(bounds[:-1], bounds[1:])),
            "score_from": torch.tensor(score_from),
            "score_token": torch.tensor(score_token),
            "score_group": torch.tensor(score_group),
            "examples": len(examples),
        }
        if self.shares_prompt:
            batch["prompt_sharing"] = torch.tensor(sharing)
        if "desirable" in examples[0]:
            batch["desirable"] = torch.tensor([example["desirable"][0] for example in examples])
        if "reference_logps" in examples[0]:
            batch["reference_logps"] = torch.tensor([example["reference_logps"] for example in examples])
        return batch
