"""The plain sections of a run's config: the model, its data, how it trains and how it is evaluated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tunelab.chat_templates import BUILT_IN, is_template_file
from tunelab.config.section import Section
from tunelab.render import template_fields

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ModelConfig(Section):
    name: str = "minilm-l6"
    """A registry name (`tunelab models list`), a Hugging Face hub id, or a local directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the hub; off unless you trust the repository."""


class DataConfig(Section):
    kind: str = "classification"
    """The kind of example the data holds: a registered kind (classification, generation, tagging,
    language_modeling, or one a plugin registers; `tunelab.kinds`). It says which fields a record needs and how it
    is encoded and scored; the model family (encoder, decoder, encoder-decoder) comes from the model. Configs
    written before say `task_type:` (or `task:`), read the same way with a note."""
    train: str | None = None
    """Training data: a .jsonl/.csv/.parquet file, a directory of split files, or `hf:NAME[:CONFIG]` for a Hugging Face dataset."""
    validation: str | None = None
    """Validation data (same forms as `train`); split from train with `validation_fraction` when absent."""
    test: str | None = None
    """Test data (same forms as `train`); split from train with `test_fraction` when absent."""
    text_field: str = "text"
    """Field holding the input text (kind classification), or the raw text trained on (kind language_modeling)."""
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
    messages_field: str = "messages"
    """Field holding a conversation (kind chat): OpenAI `messages` (roles system, user, assistant, tool; assistant
    `tool_calls`). A record with ShareGPT `conversations` (`from`/`value`) instead is read the same way."""
    tools_field: str = "tools"
    """Field holding a conversation's tool definitions (kind chat, OpenAI form; optional per record), passed to the
    chat template."""
    chat_template: str | None = None
    """The chat template (kind chat): a built-in one (chatml, gemma, llama3) or a Jinja file, replacing the model's
    own; needed for a model without one (a base model). Saved with the run, so serve and export use it too."""
    train_turns: Literal["all", "last"] = "all"
    """Which of a conversation's turns of a trained role the loss covers (kind chat): every one, or the last."""
    train_roles: list[Literal["system", "user", "assistant", "tool"]] = ["assistant"]
    """The roles whose turns the loss covers (kind chat); an assistant turn includes its tool calls and the tokens
    that close it (end-of-turn), so the model learns to stop."""
    train_on_prompt: bool = False
    """Train on every token of the conversation, the template's markers and the prompt turns included (kind chat)."""
    chosen_field: str = "chosen"
    """Field holding a preference pair's preferred answer (kinds preference, reward): a string or one assistant
    message; or, with no prompt field in the record, the whole preferred conversation (implicit prompt)."""
    rejected_field: str = "rejected"
    """Field holding a preference pair's dispreferred answer, in the form of `chosen_field`."""
    completion_field: str = "completion"
    """Field holding an unpaired example's answer (kind preference, `training.preference.loss: kto`), judged good or
    bad by its `label_field` (true or false)."""
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

    @field_validator("chat_template")
    @classmethod
    def _known_chat_template(cls, setting: str | None) -> str | None:
        if setting is not None and is_template_file(setting) and not setting.endswith((".jinja", ".j2")):
            raise ValueError(
                f"chat_template {setting!r} is not a built-in template ({', '.join(BUILT_IN)}); name one, or a "
                "Jinja file ending in .jinja"
            )
        return setting

    @field_validator("train_roles")
    @classmethod
    def _some_role(cls, roles: list[str]) -> list[str]:
        if not roles:
            raise ValueError("train_roles is empty, so no token would train; name at least one role, e.g. [assistant]")
        return roles

    @field_validator("prompt_template")
    @classmethod
    def _template_reads_fields(cls, template: str | None) -> str | None:
        if template is not None:
            template_fields(template)
        return template


PreferenceLoss = Literal["dpo", "ipo", "hinge", "simpo", "orpo", "kto"]


class PreferenceConfig(Section):
    loss: PreferenceLoss = "dpo"
    """How preference pairs train a policy (data.kind: preference): 'dpo' (sigmoid, Rafailov et al. 2023), 'ipo'
    (squared, on per-token log-probabilities, Azar et al. 2023), 'hinge' (SLiC), 'simpo' (reference-free,
    length-normalised, with margin `gamma`, Meng et al. 2024), 'orpo' (reference-free odds ratio plus the NLL of the
    chosen answer, Hong et al. 2024), 'kto' (unpaired good/bad examples against a batch KL estimate, Ethayarajh et
    al. 2024; pairs are read as one good and one bad example)."""
    beta: float | None = Field(None, gt=0)
    """How far the policy may move from the reference (dpo, ipo, hinge, kto) or the reward scale (simpo) or the
    odds-ratio weight (orpo); default each loss's usual value: 0.1 (dpo, hinge, kto, orpo), 0.5 (ipo's tau), 2.0
    (simpo)."""
    gamma: float = Field(0.5, ge=0)
    """SimPO's target reward margin (gamma over beta in the paper's terms is gamma / beta)."""
    sft_weight: float = Field(0.0, ge=0)
    """Weight of an added NLL loss on the chosen answer (LLaMA-Factory's pref_ftx): keeps the chosen answer's
    likelihood from falling while the margin grows. ORPO has this term built in."""
    desirable_weight: float = Field(1.0, gt=0)
    """KTO: weight of the loss on good examples (raise it when they are fewer than the bad ones)."""
    undesirable_weight: float = Field(1.0, gt=0)
    """KTO: weight of the loss on bad examples."""

    def resolved_beta(self) -> float:
        """`beta`, or the loss's usual value when it is not set."""
        if self.beta is not None:
            return self.beta
        return {"ipo": 0.5, "simpo": 2.0}.get(self.loss, 0.1)

    @property
    def uses_reference(self) -> bool:
        """Whether the loss compares the policy with a frozen reference (simpo and orpo need none)."""
        return self.loss not in ("simpo", "orpo")


class TrainingConfig(Section):
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
    """Peak learning rate; when absent the method's default (its METHOD_TRAITS row: e.g. full 5e-5, lora 2e-3 for classifiers and 2e-4 for generation)."""
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
    """Decoder training without padding: a batch's examples are laid end to end, position ids
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
    preference: PreferenceConfig = PreferenceConfig()
    """How preference data trains (data.kind: preference): the loss, beta and the added terms."""
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


class EvalConfig(Section):
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
    judge: str | None = None
    """A reward-model run directory (data.kind: reward) that judges a generating run after training: it scores the
    base model's and the tuned model's greedy answers to each test prompt, and the tuned model's win rate over the
    base (ties counting half, with a bootstrap interval) goes to eval.json, eval/judge.jsonl and the card. Needs
    the zero_shot baseline. A relative path is read from the config file's folder, as data paths are."""

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
