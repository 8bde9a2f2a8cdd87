"""What a kind of example is: everything the code around a task asks of it, supplied in one module per kind.

A kind (classification, generation, tagging, language modelling) says which task fields it needs, what a record
must carry, how a record is rendered as the answer a model is taught, how a run's records become token ids and
batches, how a generated answer is read back, which metrics judge it and which default learning rate it trains
with. Code outside `tunelab.kinds` asks the task's kind instead of comparing its name, so a new kind is one module
and one line in the registry (`tunelab.kinds`).

`spec` below is a `tunelab.tasks.TaskSpec`; kinds sit below the task layer, so they take it as it is passed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tunelab.config import DataConfig
from tunelab.errors import TunelabError
from tunelab.kinds.encoding import Encoded
from tunelab.records import Record

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase

Family = Literal["encoder", "decoder", "encoder-decoder"]
"""How a model reads an example: an encoder (a classifier's head), a decoder, or an encoder-decoder."""


class KindError(TunelabError, ValueError):
    """A kind of example that does not exist, cannot be registered, or cannot do what was asked of it."""


class Kind(ABC):
    """A kind of example. Subclasses set the class attributes and implement the abstract methods;
    `tunelab.kinds.register_kind` refuses one that leaves any of them out."""

    name: ClassVar[str]
    """The value of a task file's `kind:`."""
    needs: ClassVar[tuple[str, ...]]
    """The task fields a task of this kind must set (non-empty)."""
    primary_metric: ClassVar[str]
    """The metric a task of this kind is judged by when its file names none."""
    inline_metrics: ClassVar[tuple[str, ...]]
    """What the task of a `data:` section of this kind is scored with, the first being the primary metric."""
    objective: ClassVar[str] = "text_to_text"
    """The objective a `data:` run of this kind trains with unless its config chooses one (`objective:`)."""
    prompted: ClassVar[bool] = True
    """Whether a generating model answers it from the task's instruction templates (language modelling scores
    the text itself)."""
    head_answers: ClassVar[bool] = False
    """Whether a classifier (a trained head over labels) can answer it."""
    reference_answers: ClassVar[bool] = False
    """Whether its answers are free text whose reference `reference_perplexity` can score."""
    checked_as_run_data: ClassVar[bool] = True
    """Whether a task's records are checked field by field as a run's own data is (present, non-empty text, a
    known label), rather than only for the fields' presence (token lists, texts scored whole)."""
    answer_key: ClassVar[str | None] = None
    """The field `tunelab predict` writes a generated answer's parsed reading under (`parse`: a classification
    answer's label), beside the text generated; None where the text itself is the answer."""
    cuts_answers: ClassVar[bool] = False
    """Whether its answers have a length limit of their own (`data.max_target_length`) besides the input's."""
    templated: ClassVar[bool] = True
    """Whether a generating model is asked it through the task's instruction templates (a conversation carries its
    own turns)."""
    conversational: ClassVar[bool] = False
    """Whether a record is a conversation whose turns train by a mask (`tunelab.data.conversations` counts what of
    it trains, per role, and what truncation cuts)."""
    paired: ClassVar[bool] = False
    """Whether a record holds a prompt and answers judged against each other (preference pairs, or good/bad
    answers): `tunelab.data.preferences` measures and checks them."""
    perturbed: ClassVar[bool] = True
    """Whether robustness may perturb its inputs and bias swap words in them: not where noise inside tokens or
    the scored text would change what the gold answer is."""
    families: ClassVar[tuple[Family, ...]] = ("decoder", "encoder-decoder")
    """The model families that can train it: a generating one by default (`tunelab.models.loading.check_family`
    refuses a model of another before it loads)."""
    head_labels: ClassVar[tuple[str, ...]] = ()
    """The outputs of the head a model answers it through, where the data does not name them (a reward model's one
    score); empty where there is no head, or a classifier reads its labels from its data."""
    scored_by_reward: ClassVar[bool] = False
    """Whether it is answered by a reward model's scalar score of each answer (a pair's two compared), which
    neither a generating model nor a classifier gives: evaluation skips it for them, and a reward model scores
    nothing else."""

    def check_run(self, config: Any) -> None:
        """Refuse, before any data or model loads, a `data:` run (a `RunConfig`) whose settings this kind cannot
        read, naming the key to change (`KindError`); nothing to refuse by default."""

    def record_problem(self, record: Record, source: Any) -> str | None:
        """What is wrong with a record's structured content ('file:line: message 3: unknown role'), read with the
        field names of `source` (a `DataConfig` or a task), beyond its fields' presence; None when nothing is."""
        return None

    def compared_text(self, record: Record, source: Any) -> str | None:
        """What duplicate, leakage and contamination checks compare a record by when its input fields do not hold
        it (a conversation's turns), read with the field names of `source` (a `DataConfig` or a task); None: its
        input fields are compared."""
        return None

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> None:
        """Set on a run's tokenizer what this kind reads its examples with (a chat template), before anything is
        encoded; the tokenizer is saved with the run, so serving and export read the same. Nothing by default."""

    def unreadable_by(self, tokenizer: PreTrainedTokenizerBase, spec: Any, records: Sequence[Record]) -> str | None:
        """Why a generating model read with `tokenizer` cannot be asked task `spec` of this kind on `records` (what
        it lacks and what to evaluate instead), or None when it can; evaluation skips the task with this reason."""
        return None

    def prompt_ids(self, spec: Any, record: Record, tokenizer: PreTrainedTokenizerBase, budget: int) -> list[int]:
        """The ids a decoder answers a record of an untemplated kind (`templated` False) from, within `budget`
        tokens; a templated kind's prompt is its task's template filled (`tunelab.eval.runner.prompt_ids`)."""
        raise KindError(f"a {self.name} task is asked through its instruction templates, not its own prompt")

    def prompt_messages(self, spec: Any, record: Record) -> list[dict[str, Any]]:
        """A record's prompt as the conversation its answers reply to: what a reward model judges an answer to
        (`eval.judge`) and what a person rating the answers reads (`tunelab human export`). A templated kind's first
        template filled, as one user turn; a kind with prompts of its own overrides it."""
        if not (self.prompted and self.templated):
            raise KindError(f"a {self.name} task has no prompt of its own to show or judge an answer to")
        return [{"role": "user", "content": spec.prompt(record)}]

    def scored_ids(
        self, spec: Any, record: Record, tokenizer: PreTrainedTokenizerBase, limit: int
    ) -> dict[str, list[int]]:
        """What a reward model scores of a record of a kind `scored_by_reward`: each sequence's token ids within
        `limit`, by the key its score is reported under."""
        raise KindError(f"a {self.name} task is not scored by a reward model")

    def input_lengths(
        self, records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig
    ) -> list[int] | None:
        """Each record's length in tokens as this kind reads it, uncut, where the data report's shared measures (a
        text field; a prompt and an answer; a conversation) do not fit it; None where they do."""
        return None

    def reference_examples(
        self, spec: Any, records: list[Record], tokenizer: PreTrainedTokenizerBase, family: Family, limit: int
    ) -> list[dict[str, list[int]]]:
        """Each record's reference answer as `reference_perplexity` scores it: input ids within `limit` tokens, with
        labels on exactly the tokens training's loss covers (IGNORE_INDEX elsewhere), so the perplexity is what the
        loss measures. Only a kind with `reference_answers` has them."""
        raise KindError(f"a {self.name} task has no reference answer whose likelihood can be scored")

    def preference_examples(
        self, spec: Any, records: list[Record], tokenizer: PreTrainedTokenizerBase, limit: int
    ) -> list[tuple[dict[str, list[int]], dict[str, list[int]]]]:
        """Each preference pair's chosen and rejected answer as continuations of its prompt, labelled on the answer's
        tokens within `limit` tokens, for `preference_accuracy`; records that hold no pair are left out. Only a kind
        whose records pair answers has them."""
        raise KindError(
            f"a {self.name} task holds no pairs of answers to compare; preference_accuracy scores preference tasks"
        )

    @abstractmethod
    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        """The record fields a task of this kind reads beyond its input fields and template fields (its answer
        fields only `with_target`)."""

    def missing_answer(self, spec: Any, record: Record) -> str | None:
        """The answer field a record lacks where the kind accepts one of several (a reference or a target), or
        None: fields every record must carry are `record_fields`."""
        return None

    @abstractmethod
    def target(self, spec: Any, record: Record) -> str:
        """The answer a text-to-text model is taught for a record."""

    @abstractmethod
    def references(self, spec: Any, records: list[Record]) -> list:
        """What the task's metrics compare answers with, one per record."""

    @abstractmethod
    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        """Generated texts read back as what the metrics score (a label, tags, the text itself)."""

    @abstractmethod
    def learning_rate(self, rates: Any) -> float:
        """This kind's pick of a method's two default rates (`rates.with_head`, `rates.generative`)."""

    @abstractmethod
    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        """The run-data settings that read a task's records as this kind trains on them."""

    @abstractmethod
    def run_fields(self, data: DataConfig, with_target: bool) -> list[str]:
        """The record fields a `data:` section of this kind reads (its answer only `with_target`)."""

    @abstractmethod
    def inline_fields(self, config: Any, labels: list[str] | None) -> dict[str, Any]:
        """The task fields of the task a run's `data:` section (a `RunConfig`) describes, with the run's `labels`
        (`tunelab.tasks.inline_task`)."""

    @abstractmethod
    def answer_field(self, data: DataConfig) -> str | None:
        """The field of a `data:` section's record holding the answer (the label, the response), None when the
        text itself is what is learned."""

    @abstractmethod
    def task_answer_field(self, spec: Any) -> str | None:
        """The field of a task's record holding the answer it trains on, None when the text itself is learned."""

    @abstractmethod
    def encode(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        data: DataConfig,
        family: Family,
        labels: list[str] | None,
        with_target: bool,
    ) -> Encoded:
        """Token ids (and labels, `with_target`) of a run's records, as a model of `family` reads them."""

    @abstractmethod
    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        """What pads a batch of this kind's encoded examples for a model of `family`."""
