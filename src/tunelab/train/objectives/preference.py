"""preference: a decoder tuned on preference data (data.kind: preference) by the loss of `training.preference`
(DPO and its relatives, `tunelab.train.preference_losses`), by any method but prompt learning.

Pairs train every loss but kto; unpaired good/bad examples train kto, each with another prompt's answer as its
KL sample. Each batch is one packed row, a pair's prompt read once where the attention allows
(`tunelab.data.pair_rows`). The reference is the model with its adapters off under PEFT; under any other method
its log-probabilities are computed before the first step and kept in `<run>/data/reference_logps.json`, which a
resumed run reads back.
"""

from __future__ import annotations

import hashlib
import json

import torch

from tunelab.config import RunConfig
from tunelab.data.pair_rows import PairRows
from tunelab.data.plan import Plan
from tunelab.data.taskset import TaskSet
from tunelab.models.attention import SDPA_VARLEN
from tunelab.models.family import model_family
from tunelab.records import DataError
from tunelab.runs import RunDir, write_json
from tunelab.train.objectives.base import Feed, Objective, ObjectiveError, encoded_examples
from tunelab.train.preference_trainer import answer_logps, preference_trainer, uses_adapters_as_reference

PROMPT_LEARNING = ("prefix", "prompt")
"""Methods whose virtual tokens live inside the model's forward, which a packed row of shared prompts cannot carry."""

REFERENCE_FILE = "reference_logps.json"


class PreferenceObjective(Objective):
    name = "preference"
    base_note = (
        "Base = the model before preference tuning (the reference), asked the same prompts through the same chat "
        "template."
    )
    trains_mixtures = False
    serves_on_shared_base = True

    def check(self, config: RunConfig) -> None:
        if config.data.kind != "preference":
            raise ObjectiveError(
                f"objective preference trains preference data (data.kind: preference); data.kind is {config.data.kind}"
            )
        if model_family(config.model) != "decoder":
            raise ObjectiveError(
                f"objective preference tunes a decoder; {config.model.name} is an {model_family(config.model)} model: "
                "pick a decoder (e.g. smollm2-135m-instruct), or train a reward model (data.kind: reward)"
            )
        if config.method.name in PROMPT_LEARNING:
            raise ObjectiveError(
                f"method {config.method.name} adds virtual tokens inside the model's forward, which preference "
                "batches (prompts shared by two answers) cannot carry; use lora, ia3, full or bitfit"
            )

    def feed(self, model, config: RunConfig, tasks: TaskSet, plan: Plan, tokenizer) -> Feed:
        ((name, task),) = tasks.trained.items()
        distinct = sorted({index for _, index in plan.order})
        records = [task.train[i] for i in distinct]
        examples = self._examples(config, records, tokenizer, "train")
        by_index = dict(zip(distinct, examples))
        train = [by_index[index] for _, index in plan.order]
        validation = self._examples(config, task.validation, tokenizer, f"{name} validation") or None
        shares_prompt = getattr(model.config, "_attn_implementation", None) == SDPA_VARLEN
        return Feed(train, validation, preference_trainer(config.training.preference), PairRows(shares_prompt))

    def _examples(self, config: RunConfig, records, tokenizer, name: str) -> list[dict]:
        """The records encoded, checked to be the form the loss reads (pairs; unpaired for kto), and for kto each
        given the next record's answer as its KL sample."""
        if not records:
            return []
        encoded = encoded_examples("preference", "decoder", records, tokenizer, config.data, None, name)
        kto = config.training.preference.loss == "kto"
        wrong = [record.where for record, e in zip(records, encoded) if ("desirable" in e) != kto]
        if wrong:
            form = "unpaired examples (prompt, completion, label)" if kto else "pairs (prompt, chosen, rejected)"
            raise DataError(
                f"training.preference.loss {config.training.preference.loss} trains {form}; {len(wrong)} "
                f"record(s) of {name} are not ({', '.join(wrong[:5])}). "
                + ("Use loss dpo (or another paired loss) for pairs" if kto else "Use loss kto for unpaired examples")
            )
        return _with_kl_samples(encoded) if kto else encoded

    def complete_feed(self, feed: Feed, model, config: RunConfig, run: RunDir) -> Feed:
        """Under a method that is no PEFT adapter, the reference's log-probabilities of every distinct example,
        computed once before training (or read back from the run, when resuming) and put in each example."""
        if not config.training.preference.uses_reference or uses_adapters_as_reference(model):
            return feed
        path = run.data_dir / REFERENCE_FILE
        stored = json.loads(path.read_text()) if path.exists() else {}
        sets = [feed.train] + ([feed.validation] if feed.validation else [])
        missing = {_key(e): e for rows in sets for e in rows if _key(e) not in stored}
        if missing:
            print(f"reference log-probabilities of {len(missing)} examples, computed once before training ...")
            stored.update(_reference_logps(model, feed.collator, missing, config.training.eval_batch_size))
            write_json(path, stored)
        else:
            print(f"reference log-probabilities read from {path}")
        train = [{**e, "reference_logps": stored[_key(e)]} for e in feed.train]
        validation = [{**e, "reference_logps": stored[_key(e)]} for e in feed.validation or []] or None
        return Feed(train, validation, feed.trainer_class, feed.collator)


def _with_kl_samples(examples: list[dict]) -> list[dict]:
    """Unpaired examples as the collator reads them: the answer in the first slot, and in the second the next
    example's answer given this prompt (KTO's mismatched sample for its KL estimate)."""
    answers = [
        (e.get("chosen_ids") or e["rejected_ids"], e.get("chosen_labels") or e["rejected_labels"]) for e in examples
    ]
    laid_out = []
    for number, example in enumerate(examples):
        (ids, labels), (kl_ids, kl_labels) = answers[number], answers[(number + 1) % len(answers)]
        laid_out.append(
            {
                "prompt_ids": example["prompt_ids"],
                "chosen_ids": ids,
                "chosen_labels": labels,
                "rejected_ids": kl_ids,
                "rejected_labels": kl_labels,
                "desirable": example["desirable"],
            }
        )
    return laid_out


def _key(example: dict) -> str:
    """An example's tokens as a short digest: the same example drawn twice is computed once."""
    content = [example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:24]


@torch.no_grad()
def _reference_logps(model, collator: PairRows, examples: dict[str, dict], batch_size: int) -> dict[str, list[float]]:
    """Each example's two answers' summed log-probabilities under `model` as it is (untuned), in batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    keys, computed = list(examples), {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        batch = collator([examples[key] for key in chunk])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logps = answer_logps(model, batch)
        for number, key in enumerate(chunk):
            computed[key] = [float(logps.chosen[number]), float(logps.rejected[number])]
    model.train(was_training)
    return computed
