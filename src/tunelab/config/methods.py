"""What the config knows about each adaptation method: its settings sections and one row of facts per method.

`METHOD_TRAITS` is the one place a method's facts live: its default learning rates, the task types it applies
to, whether it is of the LoRA family, learns prompts, merges into the base, and which settings sections it reads.
Validation (`method.name`, the learning rate, the task and mixture rules) and every message and help text that
lists methods read this table, so a new method is a row here (or one `tunelab.methods.register_method` call)
and its module; `tunelab.methods` checks at import that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tunelab.config.section import Section


@dataclass(frozen=True)
class LearningRates:
    """A method's default peak learning rates, one per way the model answers.

    Methods that train few weights need far larger steps than full fine-tuning (measured here: LoRA on SST-2
    reaches 0.57 at 5e-4 but 0.75 at 2e-3); the values follow the methods' papers and the SST-2 comparison in
    BENCHMARKS.md.
    """

    with_head: float
    """When a task head trains: a classifier."""
    generative: float
    """When the model answers in text: prompt -> answer, or language modelling."""


@dataclass(frozen=True)
class MethodTraits:
    """The facts about one method that the config, the commands and their messages read."""

    learning_rates: LearningRates
    """The learning rate when `training.learning_rate` is absent."""
    kinds: frozenset[str] | None = None
    """The kinds of example (`data.kind`) the method is defined for; None: all of them."""
    kinds_reason: str = ""
    """Why the method is confined to `kinds`, told when a config asks for another."""
    lora_family: bool = False
    """A low-rank update of existing weights through PEFT's LoRA (lora, dora, rslora, qlora)."""
    quantized_base: bool = False
    """Trains over a base quantised to 4 bits (qlora)."""
    prompt_learning: bool = False
    """PEFT virtual tokens trained through the model's own loss, which takes no per-example loss weight."""
    peft_adapter: bool = False
    """Saves one PEFT adapter, so runs of one base can take turns on it (`tunelab predict` over several runs)."""
    mergeable: bool = False
    """`tunelab merge` folds the update into the base weights."""
    settings: tuple[str, ...] = ()
    """The `method.<section>` settings it reads (fields of MethodConfig); () for a method without settings."""

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


_LORA = MethodTraits(
    LearningRates(with_head=2e-3, generative=2e-4),
    lora_family=True,
    peft_adapter=True,
    mergeable=True,
    settings=("lora",),
)

METHOD_TRAITS: dict[str, MethodTraits] = {
    "full": MethodTraits(LearningRates(with_head=5e-5, generative=5e-5), mergeable=True),
    "head": MethodTraits(
        LearningRates(with_head=2e-3, generative=2e-3),
        kinds=frozenset({"classification"}),
        kinds_reason="it trains only a classification head, and other kinds of example have none",
        mergeable=True,
    ),
    "bitfit": MethodTraits(LearningRates(with_head=2e-3, generative=5e-4), mergeable=True),
    "lora": _LORA,
    "dora": _LORA,
    "rslora": _LORA,
    "qlora": MethodTraits(
        _LORA.learning_rates,
        lora_family=True,
        quantized_base=True,
        peft_adapter=True,
        mergeable=True,
        settings=("lora", "qlora"),
    ),
    "adapter": MethodTraits(LearningRates(with_head=1e-3, generative=5e-4), settings=("adapter",)),
    "prefix": MethodTraits(
        LearningRates(with_head=3e-2, generative=3e-3), prompt_learning=True, peft_adapter=True, settings=("prefix",)
    ),
    "prompt": MethodTraits(
        LearningRates(with_head=3e-2, generative=3e-2), prompt_learning=True, peft_adapter=True, settings=("prompt",)
    ),
    "ia3": MethodTraits(
        LearningRates(with_head=5e-3, generative=3e-3), peft_adapter=True, mergeable=True, settings=("ia3",)
    ),
}
"""One row per method name, in the order help texts and messages list them; `tunelab.methods.register_method`
adds rows for methods defined outside tunelab."""


def method_names(test) -> list[str]:
    """The method names whose row passes `test`, in table order."""
    return [name for name, traits in METHOD_TRAITS.items() if test(traits)]


def spoken_list(names: list[str]) -> str:
    """'a, b or c': a choice among methods as a message reads it."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


class LoraSettings(Section):
    r: int = Field(8, ge=1)
    """Rank of the low-rank update."""
    alpha: int = Field(16, ge=1)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) for rslora)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] | Literal["attention", "all-linear"] = "attention"
    """Modules to adapt: 'attention' (query/value projections), 'all-linear', or a list of module names."""


class QLoraSettings(Section):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the frozen base weights (NF4 is the QLoRA paper's)."""
    double_quant: bool = True
    """Also quantise the quantisation constants (saves ~0.4 bits per weight)."""


class AdapterSettings(Section):
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    """'houlsby': an adapter after the attention and the feed-forward sublayer of every layer; 'pfeiffer': after the feed-forward sublayer only."""
    reduction_factor: int = Field(16, ge=1)
    """Bottleneck width = hidden size / reduction_factor."""
    activation: Literal["relu", "gelu", "silu"] = "relu"
    """Non-linearity inside the bottleneck."""


class PrefixSettings(Section):
    num_virtual_tokens: int = Field(20, ge=1)
    """Trainable key/value positions prepended to every layer's attention."""
    reparameterize: bool | None = None
    """Train the prefixes through a two-layer MLP (the prefix-tuning paper's choice for generation); only its output is saved.
    When absent: on for generation, off for classification, as P-tuning v2 does for encoders (measured on SST-2 with
    minilm-l6: 0.51 accuracy with the MLP at every rate tried, 0.77 without it at 3e-2)."""
    hidden_size: int = Field(512, ge=1)
    """Hidden width of the reparameterisation MLP."""


class PromptSettings(Section):
    num_virtual_tokens: int = Field(20, ge=1)
    """Trainable soft-prompt embeddings prepended to the input."""
    init: Literal["random", "text"] = "random"
    """Initialise the soft prompt from random vectors or from the embeddings of `init_text`."""
    init_text: str | None = None
    """Text whose token embeddings initialise the soft prompt (needed when init is 'text')."""

    @model_validator(mode="after")
    def _text_init_needs_text(self) -> PromptSettings:
        if self.init == "text" and not self.init_text:
            raise ValueError(
                "prompt.init is 'text' but prompt.init_text is empty: give the text, e.g. 'Classify the sentiment of this review:'"
            )
        return self


class IA3Settings(Section):
    target_modules: list[str] | Literal["default"] = "default"
    """Modules whose outputs get learned rescaling vectors: PEFT's per-architecture default (keys, values, feed-forward) or a list."""
    feedforward_modules: list[str] | None = None
    """Which of `target_modules` are feed-forward layers (rescaled on their input); required with an explicit list."""


class MethodConfig(Section):
    """The method and the settings of each; a method reads the sections its `METHOD_TRAITS` row names."""

    name: str = "lora"
    """How the model is adapted: a method named in `METHOD_TRAITS` (`tunelab.methods` says what each trains)."""
    lora: LoraSettings = LoraSettings()
    """LoRA settings (read by the LoRA family)."""
    qlora: QLoraSettings = QLoraSettings()
    """4-bit base settings (read by qlora; needs CUDA and bitsandbytes)."""
    adapter: AdapterSettings = AdapterSettings()
    """Bottleneck adapter settings."""
    prefix: PrefixSettings = PrefixSettings()
    """Prefix-tuning settings."""
    prompt: PromptSettings = PromptSettings()
    """Soft-prompt settings."""
    ia3: IA3Settings = IA3Settings()
    """IA3 settings."""

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str) -> str:
        """Checked against the table when a config is validated, not fixed when this class is defined, so a method
        registered later (`tunelab.methods.register_method`) is a valid name; the error reads as a choice's does,
        with its did-you-mean."""
        if name not in METHOD_TRAITS:
            choices = [f"'{known}'" for known in METHOD_TRAITS]
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": spoken_list(choices)}
            )
        return name

    @model_validator(mode="after")
    def _ia3_list_needs_feedforward(self) -> MethodConfig:
        if isinstance(self.ia3.target_modules, list) and self.ia3.feedforward_modules is None:
            raise ValueError(
                "method.ia3.target_modules is a list, so method.ia3.feedforward_modules must say which of them are feed-forward layers (may be [])"
            )
        return self
