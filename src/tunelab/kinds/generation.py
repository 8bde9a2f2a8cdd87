"""Generation: a prompt (an instruction template filled from a record) is answered with free text.

Summarisation, translation and question answering are generation judged by another default metric. A decoder
reads the prompt and its answer as one sequence whose loss covers the answer only; an encoder-decoder reads the
prompt and is taught the answer as its target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind, KindError
from tunelab.kinds.encoding import IGNORE_INDEX, Encoded, decoder_prompt_ids, padded_with_ignored_labels
from tunelab.records import Record
from tunelab.render import fill_template, template_fields

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase


def render_prompt(fields: dict[str, Any], data: DataConfig) -> str:
    """A `data:` section's prompt for one record: its template filled, or its prompt field as it is."""
    if data.prompt_template:
        return fill_template(data.prompt_template, fields)
    return str(fields[data.prompt_field])


class Generation(Kind):
    name = "generation"
    needs = ("reference_field", "templates")
    primary_metric = "rougeL"
    inline_metrics = ("rougeL", "rouge1", "rouge2", "exact_match")
    reference_answers = True
    cuts_answers = True

    def check_run(self, config: Any) -> None:
        if not (config.data.prompt_template or config.data.prompt_field):
            raise KindError(
                "data.kind 'generation' needs data.prompt_template (e.g. 'Summarise:\\n{dialogue}') or "
                "data.prompt_field naming the field that holds the prompt"
            )

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return []  # the reference or the target field, either of which will do: `missing_answer`

    def missing_answer(self, spec: Any, record: Record) -> str | None:
        present = spec.reference_field in record.fields or spec.target_field in record.fields
        return None if present else spec.reference_field

    def target(self, spec: Any, record: Record) -> str:
        reference = record.fields[spec.target_field] if spec.target_field else spec.reference_of(record)
        return reference[0] if isinstance(reference, list) else str(reference)

    def references(self, spec: Any, records: list[Record]) -> list:
        return [spec.reference_of(r) for r in records]

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        return outputs

    def learning_rate(self, rates: Any) -> float:
        return rates.generative

    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        return DataConfig(
            kind=self.name,
            prompt_template=spec.templates[template],
            response_field=spec.target_field or spec.reference_field,
            max_length=max_length,
            max_target_length=max_target_length,
        )

    def run_fields(self, data: DataConfig, with_target: bool) -> list[str]:
        needed = template_fields(data.prompt_template) if data.prompt_template else [data.prompt_field]
        return needed + ([data.response_field] if with_target else [])

    def inline_fields(self, config: Any, labels: list[str] | None) -> dict[str, Any]:
        data = config.data
        template = data.prompt_template or "{" + data.prompt_field + "}"
        return {
            "templates": [template],
            "input_fields": template_fields(template),
            "reference_field": data.response_field,
            "max_new_tokens": config.eval.max_new_tokens,
            "num_beams": config.eval.num_beams,
        }

    def answer_field(self, data: DataConfig) -> str | None:
        return data.response_field

    def task_answer_field(self, spec: Any) -> str | None:
        return spec.target_field or spec.reference_field

    def encode(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        data: DataConfig,
        family: Family,
        labels: list[str] | None,
        with_target: bool,
    ) -> Encoded:
        if family == "decoder":
            return _encode_decoder(records, tokenizer, data, with_target)
        return _encode_encoder_decoder(records, tokenizer, data, with_target)

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        return padded_with_ignored_labels(tokenizer)

    def reference_examples(
        self, spec: Any, records: list[Record], tokenizer: PreTrainedTokenizerBase, family: Family, limit: int
    ) -> list[dict[str, list[int]]]:
        """Prompt and answer encoded as a text-to-text run trains them (chat template or prompt + newline, answer +
        EOS, the same truncation), the prompt masked; the answer keeps at most half of `limit`, so a prompt always
        has room."""
        data = DataConfig(prompt_field="prompt", response_field="target", max_length=limit)
        data = data.model_copy(update={"max_target_length": min(data.max_target_length, limit // 2)})
        return self.encode([spec.instruction(r) for r in records], tokenizer, data, family, None, True).examples


def _encode_decoder(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig, with_target: bool
) -> Encoded:
    """Prompt (+ completion + EOS) ids; labels mask the prompt so the loss covers the completion only."""
    examples, truncated = [], 0
    for record in records:
        target: list[int] = []
        if with_target:
            target = tokenizer(str(record.fields[data.response_field]), add_special_tokens=False)["input_ids"]
            if len(target) > data.max_target_length:
                target, truncated = target[: data.max_target_length], truncated + 1
            target = target + [tokenizer.eos_token_id]
        prompt_ids, cut = decoder_prompt_ids(
            render_prompt(record.fields, data), tokenizer, data.max_length - len(target)
        )
        truncated += cut
        example = {"input_ids": prompt_ids + target, "attention_mask": [1] * (len(prompt_ids) + len(target))}
        if with_target:
            example["labels"] = [IGNORE_INDEX] * len(prompt_ids) + target
        examples.append(example)
    return Encoded(examples, truncated)


def _encode_encoder_decoder(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig, with_target: bool
) -> Encoded:
    """Encoder input ids and (optionally) decoder target ids."""
    prompts = [render_prompt(r.fields, data) for r in records]
    truncated = sum(len(ids) > data.max_length for ids in tokenizer(prompts)["input_ids"])
    encoded = tokenizer(prompts, truncation=True, max_length=data.max_length)
    examples = [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])
    ]
    if with_target:
        targets = [str(r.fields[data.response_field]) for r in records]
        full = tokenizer(text_target=targets)["input_ids"]
        truncated += sum(len(ids) > data.max_target_length for ids in full)
        cut = tokenizer(text_target=targets, truncation=True, max_length=data.max_target_length)["input_ids"]
        for example, target in zip(examples, cut):
            example["labels"] = target
    return Encoded(examples, truncated)
