"""The run configuration: the single source of defaults and validation.

A run is one YAML file (plus ``key.sub=value`` overrides) validated here before
any model loads. Nothing deeper in the pipeline re-validates or invents
defaults, so every field below carries its default and a docstring that
explains it. Errors name the key, the bad value and what is allowed, with a
did-you-mean for misspelt keys and choices.
"""

from __future__ import annotations

import difflib
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from tunelab.errors import TunelabError
from tunelab.render import template_fields

TaskType = Literal["classification", "causal_lm", "seq2seq", "language_modeling"]
MethodName = Literal["full", "head", "bitfit", "lora", "dora", "rslora", "qlora", "adapter", "prefix", "prompt", "ia3"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def tunelab_home() -> Path:
    """Root of tunelab's caches (prepared models, tokenised data, human ratings): $TUNELAB_HOME, default
    ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")).expanduser()


class ConfigError(TunelabError, ValueError):
    """A configuration problem the user must fix; the message says what and how."""


class _Section(BaseModel):
    # Numbers become strings where a string is expected, so YAML like `labels: [0, 1]` or `data.labels=[0,1]`
    # matches the integer labels in the data (labels are always compared as strings). Infinity and NaN are
    # never a sensible setting (`training.epochs=.inf`).
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )


class ModelConfig(_Section):
    name: str = "minilm-l6"
    """A registry name (`tunelab models list`), a Hugging Face hub id, or a local directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the hub; off unless you trust the repository."""


class DataConfig(_Section):
    train: str | None = None
    """Training data: a .jsonl/.csv/.parquet file, a directory of split files, or `hf:NAME[:CONFIG]` for a Hugging Face dataset."""
    validation: str | None = None
    """Validation data (same forms as `train`); split from train with `validation_fraction` when absent."""
    test: str | None = None
    """Test data (same forms as `train`); split from train with `test_fraction` when absent."""
    text_field: str = "text"
    """Field holding the input text (classification), or the raw text trained on (language_modeling)."""
    text_pair_field: str | None = None
    """Optional second text field for sentence-pair tasks (e.g. entailment)."""
    label_field: str = "label"
    """Field holding the class label (classification)."""
    labels: list[str] | None = None
    """The label set, in id order; inferred (sorted) from the training data when absent."""
    prompt_field: str | None = None
    """Field holding the prompt (generation); used when `prompt_template` is absent."""
    prompt_template: str | None = None
    """Prompt built from record fields, e.g. 'Summarise:\\n{dialogue}' (generation)."""
    response_field: str = "response"
    """Field holding the target completion (generation)."""
    max_length: int = Field(256, ge=8)
    """Longest input in tokens; longer inputs are truncated and counted. For language_modeling, the length of the
    blocks the raw text is packed into (nothing is cut: a text runs on into the next block)."""
    max_target_length: int = Field(128, ge=1)
    """Longest target completion in tokens (generation); longer targets are truncated and counted."""
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of train held out for validation when no validation data is given."""
    test_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of train held out for test when no test data is given."""
    split_seed: int = 0
    """Seed of the deterministic split of train into train/validation/test."""
    max_train_examples: int | None = Field(None, ge=1)
    """Use only the first N training examples (after any split); all when absent."""
    max_eval_examples: int | None = Field(None, ge=1)
    """Use only the first N validation and test examples; all when absent."""
    skip_invalid: bool = False
    """Skip invalid records (reporting the count and the first few) instead of failing."""
    dedup: Literal["exact", "near", "off"] = "off"
    """Remove duplicate training records after validation (and before `max_train_examples`), keeping the first of
    each group: 'exact' (same normalised input and answer) or 'near' (also inputs at estimated Jaccard >= 0.8 over
    character shingles, exact copies included). Counted in the notes; every removed record, with what it
    duplicates, goes to `<run>/data/removed.jsonl`. For `data:` runs; a mixture refuses it (its tasks are read as they
    are: clean a task's file with `tunelab data clean`)."""
    drop_overlap: bool = False
    """Remove training records whose input is in (or near one in) the run's validation or test split or the
    retention suite (`eval.retention_suite`), so no score is measured on trained examples. Counted and written
    as `dedup` is; for `data:` runs only."""
    _tried: dict[str, list[str]] = PrivateAttr(default_factory=dict)
    """Per data path of a config file that exists nowhere: the absolute paths tried, for the error that names them."""

    def tried(self, key: str) -> list[str]:
        """The absolute paths tried for `data.<key>` when its config file's relative path was found nowhere."""
        return self._tried.get(key, [])

    @field_validator("prompt_template")
    @classmethod
    def _template_reads_fields(cls, template: str | None) -> str | None:
        if template is not None:
            template_fields(template)
        return template


class LoraSettings(_Section):
    r: int = Field(8, ge=1)
    """Rank of the low-rank update."""
    alpha: int = Field(16, ge=1)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) for rslora)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] | Literal["attention", "all-linear"] = "attention"
    """Modules to adapt: 'attention' (query/value projections), 'all-linear', or a list of module names."""


class QLoraSettings(_Section):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the frozen base weights (NF4 is the QLoRA paper's)."""
    double_quant: bool = True
    """Also quantise the quantisation constants (saves ~0.4 bits per weight)."""


class AdapterSettings(_Section):
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    """'houlsby': an adapter after the attention and the feed-forward sublayer of every layer; 'pfeiffer': after the feed-forward sublayer only."""
    reduction_factor: int = Field(16, ge=1)
    """Bottleneck width = hidden size / reduction_factor."""
    activation: Literal["relu", "gelu", "silu"] = "relu"
    """Non-linearity inside the bottleneck."""


class PrefixSettings(_Section):
    num_virtual_tokens: int = Field(20, ge=1)
    """Trainable key/value positions prepended to every layer's attention."""
    reparameterize: bool | None = None
    """Train the prefixes through a two-layer MLP (the prefix-tuning paper's choice for generation); only its output is saved.
    When absent: on for generation, off for classification, as P-tuning v2 does for encoders (measured on SST-2 with
    minilm-l6: 0.51 accuracy with the MLP at every rate tried, 0.77 without it at 3e-2)."""
    hidden_size: int = Field(512, ge=1)
    """Hidden width of the reparameterisation MLP."""


class PromptSettings(_Section):
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


class IA3Settings(_Section):
    target_modules: list[str] | Literal["default"] = "default"
    """Modules whose outputs get learned rescaling vectors: PEFT's per-architecture default (keys, values, feed-forward) or a list."""
    feedforward_modules: list[str] | None = None
    """Which of `target_modules` are feed-forward layers (rescaled on their input); required with an explicit list."""


class MethodConfig(_Section):
    name: MethodName = "lora"
    """How the model is adapted: full | head | bitfit | lora | dora | rslora | qlora | adapter | prefix | prompt | ia3 (see `tunelab.methods`)."""
    lora: LoraSettings = LoraSettings()
    """LoRA settings (used by lora, dora, rslora and qlora)."""
    qlora: QLoraSettings = QLoraSettings()
    """4-bit base settings (used by qlora; needs CUDA and bitsandbytes)."""
    adapter: AdapterSettings = AdapterSettings()
    """Bottleneck adapter settings (used by adapter)."""
    prefix: PrefixSettings = PrefixSettings()
    """Prefix-tuning settings (used by prefix)."""
    prompt: PromptSettings = PromptSettings()
    """Soft-prompt settings (used by prompt)."""
    ia3: IA3Settings = IA3Settings()
    """IA3 settings (used by ia3)."""

    @model_validator(mode="after")
    def _ia3_list_needs_feedforward(self) -> MethodConfig:
        if isinstance(self.ia3.target_modules, list) and self.ia3.feedforward_modules is None:
            raise ValueError(
                "method.ia3.target_modules is a list, so method.ia3.feedforward_modules must say which of them are feed-forward layers (may be [])"
            )
        return self


DEFAULT_LEARNING_RATES: dict[str, tuple[float, float]] = {
    "full": (5e-5, 5e-5),
    "head": (2e-3, 2e-3),
    "bitfit": (2e-3, 5e-4),
    "lora": (2e-3, 2e-4),
    "dora": (2e-3, 2e-4),
    "rslora": (2e-3, 2e-4),
    "qlora": (2e-3, 2e-4),
    "adapter": (1e-3, 5e-4),
    "prefix": (3e-2, 3e-3),
    "prompt": (3e-2, 3e-2),
    "ia3": (5e-3, 3e-3),
}
"""Per method: the learning rate for (classification, generation) when `training.learning_rate` is absent.

Methods that train few weights need far larger steps than full fine-tuning
(measured here: LoRA on SST-2 reaches 0.57 at 5e-4 but 0.75 at 2e-3); the
values follow the methods' papers and the SST-2 comparison in BENCHMARKS.md.
"""

METHOD_TASK_TYPES: dict[str, set[str]] = {
    "head": {"classification"},
}
"""Methods defined for only some task types; every other method works for all three."""


class TrainingConfig(_Section):
    epochs: float = Field(2, gt=0)
    """Passes over the training data."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps (overrides epochs)."""
    batch_size: int = Field(16, ge=1)
    """Examples per device per forward pass."""
    eval_batch_size: int = Field(32, ge=1)
    """Examples per forward pass (or generation batch) in evaluation."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Forward passes per optimiser step; effective batch = batch_size x this."""
    learning_rate: float | None = Field(None, gt=0)
    """Peak learning rate; when absent the method's default (DEFAULT_LEARNING_RATES: e.g. full 5e-5, lora 2e-3 for classifiers and 2e-4 for generation)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of steps spent warming the learning rate up from zero."""
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warmup."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    seed: int = 42
    """Seed for head initialisation, data order and dropout: same seed, same run."""
    precision: Precision = "auto"
    """'auto' picks bf16 where the hardware runs it natively (recent GPUs, CPUs with AVX512-BF16/AMX), else fp32."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without improvement; no early stopping when absent."""
    metric_for_best: str | None = None
    """Validation metric that picks the best checkpoint: default accuracy (classification) or loss (generation)."""
    logging_steps: int = Field(10, ge=1)
    """Optimiser steps between loss log lines."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory at the cost of time."""
    packing: bool = True
    """Decoder (causal_lm) training without padding: a batch's examples are laid end to end, position ids
    restarting per example, so no example attends to another; in one row under per-example attention (see
    `attention`), else in rows of at most data.max_length tokens."""
    attention: Literal["auto", "sdpa", "sdpa_varlen", "flex_attention", "flash_attention_2"] = "auto"
    """How a decoder's attention follows the examples packed into a row: 'flash_attention_2' (flash-attention's
    varlen kernel; CUDA with flash-attn installed), 'sdpa_varlen' (SDPA once per example, no mask), 'flex_attention'
    (a compiled block-sparse document mask; GPU only for training, as PyTorch has no FlexAttention backward on CPU),
    'sdpa' (one dense block-diagonal mask per row). 'auto' takes flash-attention where it is installed, else
    sdpa_varlen on a CPU and sdpa on a GPU (BENCHMARKS.md, "Performance II")."""
    kernels: Literal["auto", "liger", "none"] = "auto"
    """Fused decoder-layer kernels on a GPU: 'liger' (Liger Kernel's RMSNorm, RoPE, SwiGLU; CUDA with
    `pip install liger-kernel`), 'none', or 'auto' (Liger where it can run)."""
    compile: bool = False
    """Compile the model with torch.compile; packed rows are then padded to a multiple of 64 tokens so a few
    shapes recur instead of one per batch. Pays back only over long runs (compiling takes minutes)."""
    save_steps: int | None = Field(None, ge=1)
    """Also write a checkpoint every this many optimiser steps (one is always written at every evaluation)."""
    save_minutes: float | None = Field(10.0, gt=0)
    """Also write a checkpoint when this many minutes have passed since the last one, so a killed run resumed with
    `tunelab train --resume RUN` loses at most that much; none when absent."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Experiment trackers that also receive the training log, as Trainer's `report_to`: 'tensorboard' (event files
    in <run>/tensorboard/), 'mlflow' (MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db in the working
    directory), 'wandb' (W&B's own settings, e.g. WANDB_MODE=offline). Each names the run after its directory; []
    reports to none (metrics.jsonl is always written). `pip install 'tunelab[tracking]'` (W&B: `pip install wandb`)."""

    @field_validator("report_to")
    @classmethod
    def _each_tracker_once(cls, trackers: list[str]) -> list[str]:
        repeated = sorted({tracker for tracker in trackers if trackers.count(tracker) > 1})
        if repeated:
            raise ValueError(f"training.report_to names {', '.join(repeated)} more than once; list each tracker once")
        return trackers


class EvalConfig(_Section):
    max_new_tokens: int = Field(64, ge=1)
    """Longest generated answer in evaluation and predict."""
    num_beams: int = Field(1, ge=1)
    """Beam search width; 1 is greedy decoding."""
    baselines: list[Literal["zero_shot", "few_shot"]] = ["zero_shot"]
    """The model before tuning, scored on the same test examples (once per run, kept across a resume): 'zero_shot'
    (the prompt alone) and 'few_shot' (`shots` solved training examples before it; generating models only), for the
    zero-shot -> few-shot -> tuned table. [] scores no baseline. Older configs' `evaluate_base: true|false` is read
    as [zero_shot] or []."""
    shots: int = Field(5, ge=1)
    """Demonstrations in each prompt of the few_shot baseline."""
    scoring: Literal["generate", "loglik"] | None = None
    """How generating models answer classification tasks, for the baselines and the tuned model: 'generate' (map the
    generated text to a label by its words) or 'loglik' (the label whose words are most likely after the prompt);
    each task's own `scoring` when absent."""
    retention_suite: str | None = None
    """A suite (e.g. 'retention') scored on the base and the tuned model after training: the forgetting table
    (what tuning cost on other abilities) goes to eval/forgetting-<suite>.json and the run card."""
    retention_limit: int | None = Field(None, ge=1)
    """Cap every retention task at this many examples (the suite's own limits otherwise)."""

    @model_validator(mode="before")
    @classmethod
    def _read_evaluate_base(cls, data: Any) -> Any:
        """Read configs written before `baselines` (run directories keep theirs): `evaluate_base: true|false` is
        `baselines: [zero_shot]` or `[]`."""
        if not isinstance(data, dict) or "evaluate_base" not in data:
            return data
        data = dict(data)
        evaluate_base = data.pop("evaluate_base")
        if "baselines" in data:
            raise ValueError("eval.evaluate_base is the old spelling of eval.baselines; give eval.baselines only")
        if not isinstance(evaluate_base, bool):
            raise ValueError(f"eval.evaluate_base must be true or false, not {evaluate_base!r}; prefer eval.baselines")
        data["baselines"] = ["zero_shot"] if evaluate_base else []
        return data


class MixtureTask(_Section):
    task: str
    """A built-in task name (`tunelab tasks list`) or a task YAML path."""
    weight: float = Field(1.0, gt=0)
    """Multiplies the task's sampling rate (after the strategy), then rates are renormalised."""
    loss_weight: float = Field(1.0, ge=0)
    """Multiplies the loss of this task's examples (weighted loss; 0 trains nothing on it)."""
    max_examples: int | None = Field(None, ge=1)
    """Training examples available from this task: a seeded draw of its train split; all when absent."""


class StageConfig(_Section):
    name: str | None = None
    """Label used in logs and the run card (default stage-1, stage-2, ...)."""
    tasks: list[MixtureTask] = Field(min_length=1)
    """This stage's own mixture."""
    steps: int | None = Field(None, ge=1)
    """Optimiser steps spent in this stage; when absent the stage runs `epochs` passes over its mix."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the stage's per-epoch mix when `steps` is absent."""


class MixtureConfig(_Section):
    tasks: list[MixtureTask] = []
    """The tasks trained together (one stage); or use `stages` for a curriculum."""
    stages: list[StageConfig] = []
    """Ordered curriculum stages, each its own mixture and budget (also intermediate fine-tuning: related tasks first, then the target)."""
    strategy: Literal["proportional", "capped", "temperature", "equal"] = "proportional"
    """How examples per task per epoch are chosen: proportional to size, size capped at `cap` (T5), size^(1/temperature), or equal."""
    cap: int | None = Field(None, ge=1)
    """Per-task size cap for the 'capped' strategy."""
    temperature: float = Field(2.0, ge=1)
    """Temperature T of the 'temperature' strategy (1 = proportional; larger flattens towards equal)."""
    examples_per_epoch: int | None = Field(None, ge=1)
    """Draws per epoch across all tasks; default the total of the tasks' available examples."""
    balanced_batches: bool = False
    """Interleave tasks so every batch holds them in their mixture shares, instead of a plain shuffle."""
    templates: Literal["first", "all"] = "all"
    """'all': each training example gets one of its task's instruction templates at random (seeded), FLAN style; 'first': always the first."""
    eval_only: list[str] = []
    """Held-out tasks: never trained on, scored before and after tuning to measure generalisation to unseen tasks."""
    eval_examples: int = Field(100, ge=1)
    """Test examples per task for the before/after scores (a seeded draw)."""
    validation_examples: int = Field(50, ge=1)
    """Validation examples per trained task for the per-task validation loss during training."""
    architecture: Literal["text_to_text", "multi_head", "task_adapters"] = "text_to_text"
    """'text_to_text': one decoder/seq2seq model, every task an instruction; 'multi_head': one shared encoder with a
    classification head per task; 'task_adapters': one LoRA adapter per task over a frozen base, routed by task."""
    shared_adapter: bool = False
    """With task_adapters: also train one adapter shared by every task, active together with the task's own."""

    @model_validator(mode="after")
    def _tasks_or_stages(self) -> MixtureConfig:
        if bool(self.tasks) == bool(self.stages):
            raise ValueError("mixture needs either tasks (one stage) or stages (a curriculum), not both or neither")
        if self.strategy == "capped" and self.cap is None:
            raise ValueError("mixture.strategy 'capped' needs mixture.cap, the per-task size cap (e.g. 1000)")
        return self

    def stage_list(self) -> list[StageConfig]:
        """The curriculum; a plain task list is one stage."""
        return self.stages or [StageConfig(name="mixture", tasks=self.tasks)]


class SweepParam(_Section):
    """One searched setting: a range (`low`, `high`, optionally `log` or `step`) or a list of `choices`."""

    low: int | float | None = None
    """Lowest value. Integer bounds (`low: 4, high: 32`) draw integers, any other bounds draw floats."""
    high: int | float | None = None
    """Highest value, included."""
    log: bool = False
    """Draw evenly in log space, as learning rates want (needs low > 0; no step)."""
    step: int | float | None = Field(None, gt=0)
    """Draw only low, low + step, low + 2 step, ... up to high."""
    choices: list[Any] | None = Field(None, min_length=1)
    """The values to choose among, each as the key takes it, e.g. [attention, all-linear, [query, key, value]]."""

    @model_validator(mode="after")
    def _range_or_choices(self) -> SweepParam:
        bounds = (self.low, self.high, self.step)
        if self.choices is not None:
            if self.log or any(value is not None for value in bounds):
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give a range, e.g. {low: 1.0e-4, high: 1.0e-2, log: true}, or choices: [...]")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step (log spacing and a fixed step exclude each other)")
        return self

    def draws_integers(self) -> bool:
        return all(isinstance(value, int) for value in (self.low, self.high, self.step) if value is not None)


class SweepConfig(_Section):
    space: dict[str, SweepParam] = Field(min_length=1)
    """What to search: config keys as `key.sub=value` overrides name them (`training.learning_rate`,
    `method.lora.r`, `method.lora.target_modules`, ...), each with a range or a list of choices."""
    metric: str | None = None
    """The validation metric to optimise, as the trainer logs it (`accuracy`, `loss`, `<task>_loss` in a mixture);
    by default the one that picks the best checkpoint (training.metric_for_best). A name ending in `loss` is
    minimised, any other maximised."""
    trials: int = Field(20, ge=1)
    """Finished trials (complete, pruned or failed) the study should hold; `--trials N` overrides it."""
    pruner: Literal["median", "none"] = "median"
    """'median' stops a trial whose metric is worse than the median of earlier trials at the same validation;
    'none' runs every trial to its end."""
    startup_trials: int = Field(3, ge=0)
    """Trials that finish before any is pruned: a median of fewer says little."""
    warmup_evaluations: int = Field(0, ge=0)
    """Validations a trial runs before it may be pruned (0: from its first, at the end of its first epoch)."""
    seed: int = 0
    """Seed of the TPE sampler (each trial trains with training.seed)."""

    @field_validator("metric")
    @classmethod
    def _bare_metric(cls, metric: str | None) -> str | None:
        return metric.removeprefix("eval_") if metric else metric

    @field_validator("space")
    @classmethod
    def _keys_name_settings(cls, space: dict[str, SweepParam]) -> dict[str, SweepParam]:
        for key, param in space.items():
            field = swept_field(key)
            if not param.choices and not param.draws_integers() and _only_integers(field.annotation):
                raise ValueError(f"sweep.space.{key} takes whole numbers; give integer bounds (low: 4, high: 32)")
        return space

    def direction(self, metric: str) -> Literal["minimize", "maximize"]:
        """Losses go down, every other validation metric (accuracy) up, as the trainer's best checkpoint reads them."""
        return "minimize" if metric.endswith("loss") else "maximize"


NOT_SWEPT = {"sweep", "name", "output_dir"}
"""Top-level keys a sweep sets for each trial itself."""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (also through `X | None`), or None for a setting."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)


def _only_integers(annotation: Any) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return {m for m in members if m is not type(None)} == {int}


def swept_field(key: str) -> FieldInfo:
    """The config setting a sweep key names; ValueError, saying what exists there, for a key that names none."""
    model: type[BaseModel] | None = RunConfig
    walked: list[str] = []
    for part in key.split("."):
        if model is None:
            raise ValueError(f"sweep.space.{key}: '{'.'.join(walked)}' is a setting, not a section with keys")
        if not walked and part in NOT_SWEPT:
            raise ValueError(f"sweep.space.{key}: the sweep sets each trial's '{part}' itself")
        known = sorted(model.model_fields)
        if part not in known:
            guess = difflib.get_close_matches(part, known, n=1)
            hint = f" Did you mean '{'.'.join([*walked, guess[0]])}'?" if guess else ""
            where = f"section '{'.'.join(walked)}'" if walked else "the top level"
            raise ValueError(
                f"sweep.space.{key} names no setting: {where} has no key '{part}'.{hint} "
                f"Known keys there: {', '.join(k for k in known if walked or k not in NOT_SWEPT)}"
            )
        field = model.model_fields[part]
        walked.append(part)
        model = _section_type(field.annotation)
    if model is not None:
        raise ValueError(
            f"sweep.space.{key} is a section; search its settings: {', '.join(f'{key}.{k}' for k in model.model_fields)}"
        )
    return field


class RunConfig(_Section):
    name: str = "run"
    """Run name; the run directory is `<output_dir>/<name>-<timestamp>`."""
    task_type: TaskType = Field("classification", validation_alias=AliasChoices("task_type", "task"))
    """'classification' (encoder + head), 'causal_lm' (prompt -> completion, decoder), 'seq2seq' (encoder-decoder)
    or 'language_modeling' (continued pre-training of a decoder on raw text, `data.text_field`: the text packed
    into `data.max_length` blocks, the loss on every token, perplexity on the held-out texts before and after).
    Configs written before the rename say `task:`, which is read the same way."""
    output_dir: str = "runs"
    """Where run directories are created."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    mixture: MixtureConfig | None = None
    """Multi-task training: a mixture of task files instead of `data` (see README, multi-task)."""
    sweep: SweepConfig | None = None
    """A hyperparameter search for `tunelab sweep` (README, sweeps); `tunelab train` ignores it."""

    @model_validator(mode="after")
    def _check_task_fields(self) -> RunConfig:
        if self.mixture is not None:
            return self._check_mixture()
        if self.task_type == "language_modeling":
            return self._check_language_modeling()
        if self.task_type != "classification" and not (self.data.prompt_template or self.data.prompt_field):
            raise ValueError(
                f"task_type '{self.task_type}' needs data.prompt_template (e.g. 'Summarise:\\n{{dialogue}}') "
                "or data.prompt_field naming the field that holds the prompt"
            )
        tasks = METHOD_TASK_TYPES.get(self.method.name)
        if tasks and self.task_type not in tasks:
            raise ValueError(
                f"method '{self.method.name}' is defined only for task_type {' / '.join(sorted(tasks))}, not '{self.task_type}' "
                "(a decoder has no separate task head to train); use lora, ia3, prompt or full"
            )
        return self

    def _check_language_modeling(self) -> RunConfig:
        """Raw text has no prompt and no answer: refuse settings that would read them, naming the key."""
        if self.data.prompt_template or self.data.prompt_field:
            raise ValueError(
                "task_type 'language_modeling' trains on the raw text of data.text_field; drop data.prompt_template "
                "and data.prompt_field (use task_type causal_lm for prompt -> answer training)"
            )
        if self.method.name in METHOD_TASK_TYPES:
            raise ValueError(
                f"method '{self.method.name}' trains a classification head, which language modelling has none of; "
                "use full, lora or another method"
            )
        if "few_shot" in self.eval.baselines:
            raise ValueError(
                "eval.baselines few_shot puts solved examples before a prompt; language modelling scores raw text "
                "(perplexity) and has no prompt: use baselines [zero_shot] or []"
            )
        return self

    def _check_mixture(self) -> RunConfig:
        architecture = self.mixture.architecture
        if self.task_type == "language_modeling":
            raise ValueError(
                "task_type 'language_modeling' trains on the raw text of data.train, not on a mixture of tasks; "
                "drop mixture (a two-stage recipe trains the language-modelling run first, then names its run "
                "directory as model.name of the next)"
            )
        if self.data.dedup != "off" or self.data.drop_overlap:
            raise ValueError(
                "data.dedup and data.drop_overlap clean a `data:` run's training file; a mixture reads its tasks as "
                "they are. Clean a task's file with `tunelab data clean FILE --output CLEAN.jsonl` and point a task "
                "YAML's source at it, or drop these settings"
            )
        if architecture == "multi_head" and (self.task_type != "classification" or self.method.name != "full"):
            raise ValueError(
                "mixture.architecture 'multi_head' fine-tunes a shared encoder and its classification heads: "
                "set task_type: classification and method.name: full"
            )
        if architecture != "multi_head" and self.task_type == "classification":
            raise ValueError(
                f"mixture.architecture '{architecture}' phrases tasks as instructions: set task_type: causal_lm "
                "(or seq2seq), or use architecture multi_head for an encoder"
            )
        if architecture == "task_adapters" and (
            self.method.name not in ("lora", "dora", "rslora") or self.task_type != "causal_lm"
        ):
            raise ValueError(
                "mixture.architecture 'task_adapters' trains one LoRA adapter per task of a decoder: "
                "set task_type: causal_lm and method.name: lora"
            )
        stages = self.mixture.stage_list()
        if self.method.name in ("prefix", "prompt") and any(t.loss_weight != 1 for s in stages for t in s.tasks):
            raise ValueError(
                f"method '{self.method.name}' trains through the model's own loss, which takes no per-task "
                "loss_weight; drop the loss weights (use weight to sample a task more) or use lora"
            )
        several = len({t.task for s in stages for t in s.tasks}) > 1
        if self.training.early_stopping_patience and (several or architecture == "multi_head"):
            raise ValueError(
                "training.early_stopping_patience needs a best checkpoint, and a mixture of several tasks or a "
                "multi-head model keeps its last weights; drop it for this run"
            )
        return self

    @model_validator(mode="after")
    def _few_shot_needs_a_prompt(self) -> RunConfig:
        architecture = self.architecture()
        if "few_shot" in self.eval.baselines and architecture in ("classifier", "multi_head"):
            raise ValueError(
                f"eval.baselines few_shot puts solved examples in the base model's prompt, but a {architecture} run "
                "answers through a classification head, which reads no prompt; drop few_shot from eval.baselines"
            )
        return self

    def architecture(self) -> str:
        """How the run's model answers its tasks: 'classifier' (one head: a `data:` classification run),
        'text_to_text' (a `data:` generation run), 'language_model' (raw text, continued pre-training), or the
        mixture's own architecture."""
        if self.mixture is not None:
            return self.mixture.architecture
        if self.task_type == "language_modeling":
            return "language_model"
        return "classifier" if self.task_type == "classification" else "text_to_text"

    def model_task(self) -> str:
        """The kind of model the run loads and how it answers: a language-modelling run tunes a causal LM."""
        return "causal_lm" if self.task_type == "language_modeling" else self.task_type

    def learning_rate(self) -> float:
        """The learning rate to train with: the configured one, or the method's measured default."""
        if self.training.learning_rate is not None:
            return self.training.learning_rate
        classification, generation = DEFAULT_LEARNING_RATES[self.method.name]
        return classification if self.task_type == "classification" else generation

    @model_validator(mode="after")
    def _check_sweep(self) -> RunConfig:
        """Every searched value must be one its key takes in this config, so no trial fails on a value the
        config could have refused."""
        if self.sweep is None:
            return self
        chosen = self.training.metric_for_best
        if self.sweep.metric and chosen and chosen.removeprefix("eval_") != self.sweep.metric:
            raise ValueError(
                f"sweep.metric '{self.sweep.metric}' differs from training.metric_for_best '{chosen}', which picks "
                "the checkpoint each trial keeps; give one of them, or the same metric to both"
            )
        plain = self.model_dump(mode="json", exclude={"sweep"})
        for key, param in self.sweep.space.items():
            for value in param.choices if param.choices is not None else (param.low, param.high):
                try:
                    RunConfig.model_validate(_merge(plain, _nested({key: value})))
                except ValidationError as exc:
                    problems = "; ".join(_describe(e).removeprefix("(top level): Value error, ") for e in exc.errors())
                    raise ValueError(f"sweep.space.{key}: this config cannot take {value!r} ({problems})") from None
        return self


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ['training.epochs=1', 'data.train=x.jsonl'] into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value (e.g. training.epochs=1)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(
                f"override '{item}': the value is not valid YAML ({problem}); quote it, e.g. {key}='\"...\"'"
            ) from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key inside '{part}', which is not a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """{'method.lora.r': 8} -> {'method': {'lora': {'r': 8}}}, the shape overrides merge in."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *sections, last = key.split(".")
        node = nested
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def with_values(config: RunConfig, values: dict[str, Any], source: str) -> RunConfig:
    """The config with dotted keys set to values, merged and validated as `key.sub=value` overrides are."""
    return build_config(_merge(config.model_dump(mode="json"), _nested(values)), source)


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (all but its last element)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _user_loc(error: dict[str, Any]) -> tuple:
    """The error's location as the user wrote it: pydantic's union-member tags ('literal[...]', 'list[str]',
    'function-after[...]') dropped, except the last part of an unknown key, which is the user's own word."""
    loc = error["loc"]
    user_key = loc[-1:] if error["type"] == "extra_forbidden" else ()
    path = loc[: len(loc) - len(user_key)]
    return tuple(p for p in path if not str(p).startswith(("function-", "literal[", "list["))) + user_key


def _describe(error: dict[str, Any]) -> str:
    loc = _user_loc(error)
    key = ".".join(str(p) for p in loc) or "(top level)"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        section = _section_at(loc)
        known = sorted(section.model_fields) if section else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" Did you mean '{'.'.join(map(str, loc[:-1] + (guess[0],)))}'?" if guess else ""
        return f"unknown key '{key}'.{hint} Known keys here: {', '.join(known)}"
    allowed = error.get("ctx", {}).get("expected")
    message = f"{key}: {error['msg']}" + (f" (got {value!r})" if loc else "")
    if allowed:
        choices = [c.strip(" '") for c in allowed.replace(" or ", ",").split(",") if c.strip(" '")]
        guess = difflib.get_close_matches(str(value), choices, n=1)
        if guess:
            message += f". Did you mean '{guess[0]}'?"
    return message


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw config dict, turning pydantic's errors into messages that say what to fix."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{source} is invalid:\n{problems}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults when path is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of sections (model:, data:, ...), got {type(loaded).__name__}"
            )
        raw = loaded or {}
    tried = _resolve_data_paths(raw, path.parent) if path is not None else {}
    if overrides:
        source += " with overrides " + " ".join(overrides)
    changes = parse_overrides(list(overrides))
    config = build_config(_merge(raw, changes), source)
    overridden = changes.get("data") if isinstance(changes.get("data"), dict) else {}
    config.data._tried.update({key: places for key, places in tried.items() if key not in overridden})
    return config


DATA_PATHS = ("train", "validation", "test")
"""The `data:` keys that name files or folders, resolved against the config file's folder."""


def _resolve_data_paths(raw: dict[str, Any], folder: Path) -> dict[str, list[str]]:
    """Make the config file's relative data paths absolute, read from the config's folder (as Axolotl and
    LLaMA-Factory read theirs), so a config runs from any working directory. A path found only under the working
    directory (the rule before) is still read from there, with a note; a path found in neither place becomes its
    config-folder reading, and the places tried are returned (key -> absolute paths) for the error that follows."""
    data = raw.get("data")
    tried: dict[str, list[str]] = {}
    if not isinstance(data, dict):
        return tried
    for key in DATA_PATHS:
        value = data.get(key)
        if not isinstance(value, str) or not value or value.startswith(("hf:", "~")) or Path(value).is_absolute():
            continue
        beside, here = os.path.normpath(folder.absolute() / value), os.path.normpath(Path.cwd() / value)
        if not os.path.exists(beside) and os.path.exists(here):
            print(
                f"note: data.{key} {value} is not in the config's folder ({beside}); read from the working "
                f"directory instead ({here}). Write it relative to the config file's folder."
            )
            data[key] = here
            continue
        data[key] = beside
        if not os.path.exists(beside):
            tried[key] = [f"{beside} (the config's folder)", f"{here} (the working directory)"]
    return tried


def config_to_yaml(config: RunConfig) -> str:
    """The fully resolved config as YAML, as saved in the run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
