"""Language modelling: a record's text is itself what is learned and scored (perplexity), with no prompt and no
answer.

Training packs the texts into blocks (`tunelab.data.blocks`) that the decoder collator pads; evaluation scores each
whole text with windows over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind, KindError
from tunelab.kinds.encoding import Encoded, padded_with_ignored_labels
from tunelab.records import Record

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase


class LanguageModeling(Kind):
    name = "language_modeling"
    objective = "language_model"
    needs = ("text_field",)
    primary_metric = "perplexity"
    inline_metrics = ("perplexity", "word_perplexity", "bits_per_byte")
    prompted = False
    checked_as_run_data = False
    perturbed = False
    families = ("decoder",)  # continued pre-training predicts each next token, which a decoder does

    def check_run(self, config: Any) -> None:
        """Raw text has no prompt and no answer: refuse settings that would read them, naming the key."""
        if config.data.prompt_template or config.data.prompt_field:
            raise KindError(
                "data.kind 'language_modeling' trains on the raw text of data.text_field; drop data.prompt_template "
                "and data.prompt_field (use data.kind: generation for prompt -> answer training)"
            )
        if "few_shot" in config.eval.baselines:
            raise KindError(
                "eval.baselines few_shot puts solved examples before a prompt; language modelling scores raw text "
                "(perplexity) and has no prompt: use baselines [zero_shot] or []"
            )

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return [spec.text_field]

    def target(self, spec: Any, record: Record) -> str:
        raise KindError(f"task {spec.name} is a language_modeling task: its text is what is learned, no answer")

    def references(self, spec: Any, records: list[Record]) -> list:
        return [None] * len(records)

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        raise KindError(f"task {spec.name} is a language_modeling task: it is scored by perplexity, not answers")

    def learning_rate(self, rates: Any) -> float:
        return rates.generative

    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        return DataConfig(kind=self.name, text_field=spec.text_field, max_length=max_length)

    def run_fields(self, data: DataConfig, with_target: bool) -> list[str]:
        return [data.text_field]

    def inline_fields(self, config: Any, labels: list[str] | None) -> dict[str, Any]:
        """Scored on whole held-out texts (rolling windows), not on the training blocks."""
        return {"text_field": config.data.text_field, "input_fields": [config.data.text_field]}

    def answer_field(self, data: DataConfig) -> str | None:
        return None

    def task_answer_field(self, spec: Any) -> str | None:
        return None

    def encode(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        data: DataConfig,
        family: Family,
        labels: list[str] | None,
        with_target: bool,
    ) -> Encoded:
        raise KindError(
            "language modelling packs its texts into blocks of token ids (tunelab.data.blocks), not one example "
            "per record"
        )

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        return padded_with_ignored_labels(tokenizer)
