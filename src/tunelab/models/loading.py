"""Loading pretrained models for a task, from a registry name, a local directory, a hub id or a run directory.

All go through the same `from_pretrained` call; only the registry adds a
step, for GGUF models: transformers can dequantise GGUF but refuses to save
such a model, so `prepare` clears the quantiser and writes safetensors once
into the cache. Later loads then take seconds instead of a conversion.

A run directory as `model.name` is the first stage of a two-stage recipe (domain text, then instructions): the
next run starts from its tuned model, read from the run's `model/` folder (full fine-tuning saves a whole model)
or from `merged/`, the copy with its update folded in that `tunelab train` writes the first time the run is named.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)

from tunelab.config import ConfigError, ModelConfig, RunConfig, load_config
from tunelab.kinds import answers_by_head, kind_named, kind_of_run
from tunelab.kinds.base import Family
from tunelab.models.family import model_family
from tunelab.models.reference import check_reference, run_directory
from tunelab.models.registry import (
    REGISTRY,
    ModelNotAvailable,
    RegistryModel,
    cache_dir,
    is_prepared,
    native_dir,
    package_dir,
)

_GENERATOR_CLASS = {"decoder": AutoModelForCausalLM, "encoder-decoder": AutoModelForSeq2SeqLM}
"""The auto class of a model that answers by generating, by its family (a model with a head answers through it)."""


@contextmanager
def source_gguf(model: RegistryModel) -> Iterator[Path]:
    """The registry model's own GGUF file; a copy assembled from part packages is deleted afterwards (the
    parts stay installed, and the copy is only an input to a conversion)."""
    if not model.assembled_from_parts:
        yield package_dir(model) / model.gguf_file
        return
    assembler = importlib.import_module(model.module)
    path = Path(assembler.assemble(cache_dir(model).parent / "gguf" / model.gguf_file))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _preparing(model: RegistryModel) -> Iterator[None]:
    """Held while one process prepares `model`: others (parallel test workers, `tunelab compare`'s runs) wait and
    then find it prepared, instead of converting it again and replacing the folder one of them is reading."""
    lock = cache_dir(model).parent / f".{model.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the system when the process ends, even by kill -9
        yield


def prepare(name: str, force: bool = False) -> Path:
    """Dequantise a GGUF registry model into $TUNELAB_HOME/models/NAME (safetensors + tokenizer), once.

    The copy is written into a temporary sibling directory and renamed into place
    with its `.prepared` marker, so an interrupted prepare never looks done.
    """
    model = REGISTRY[name]
    if not model.needs_prepare:
        return native_dir(model)
    target = cache_dir(model)
    if is_prepared(model) and not force:
        return target
    with _preparing(model):
        if is_prepared(model) and not force:  # another process prepared it while this one waited
            return target
        _convert(model, target)
    return target


def _convert(model: RegistryModel, target: Path) -> None:
    """The GGUF file's tokenizer and dequantised weights, written to `target` atomically."""
    name = model.name
    steps = tqdm(total=4, desc=f"prepare {name}", unit="step")
    steps.set_postfix_str("locating GGUF")
    with source_gguf(model) as gguf:
        steps.update()
        steps.set_postfix_str("converting tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        steps.update()
        steps.set_postfix_str("dequantising weights")
        weights = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    weights.hf_quantizer = None  # the dequantised tensors are plain fp32; saving is safe
    if hasattr(weights.config, "quantization_config"):
        del weights.config.quantization_config
    steps.update()
    steps.set_postfix_str("writing safetensors")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        weights.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / ".prepared").write_text(f"dequantised from {model.gguf_file}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    steps.update()
    steps.close()


MERGED_FOLDER = "merged"
"""Where a run directory keeps its tuned model with the update folded in, once a next run has named it."""


def run_model_folder(run: Path) -> Path:
    """The folder a run directory is loaded from as a base model: `merged/` when written, else `model/` when
    the run fine-tuned every weight (it saved a whole model); ModelNotAvailable, saying how to merge, otherwise."""
    if (run / MERGED_FOLDER / "config.json").is_file():
        return run / MERGED_FOLDER
    if load_config(run / "config.yaml").method.name == "full":
        return run / "model"
    raise ModelNotAvailable(
        f"run {run} saved only what its method changed, not a whole model; `tunelab train` merges it into "
        f"{run / MERGED_FOLDER} when a config names the run as model.name, or run "
        f"`tunelab merge {run} --output {run / MERGED_FOLDER}`"
    )


def resolve_source(reference: str, revision: str | None = None) -> str:
    """The path or hub id that `from_pretrained` should read for a model reference; ModelNotAvailable when
    it names nothing loadable."""
    check_reference(reference, revision)
    if reference in REGISTRY:
        return str(prepare(reference))
    run = run_directory(reference)
    if run is not None:
        return str(run_model_folder(run))
    if Path(reference).expanduser().is_dir():
        return str(Path(reference).expanduser())
    return reference  # a hub id the hub or its local cache has


def portable_reference(reference: str) -> str:
    """How a saved model names its base so that another machine can find it: a registry model by its hub id (the
    source `resolve_source` gives is a path into this machine's packages or cache), a local folder by its absolute
    path (the user knows where their own model lives), a hub id as given."""
    if reference in REGISTRY:
        return REGISTRY[reference].hub_id
    run = run_directory(reference)
    folder = run_model_folder(run) if run is not None else Path(reference).expanduser()
    return str(folder.resolve()) if folder.is_dir() else reference


def check_family(reference: str, kind: str) -> None:
    """Fail early, before loading, when the model cannot train `kind` (a kind of example's name): a model of
    another family than the kind's (`Kind.families`: a classifier needs an encoder, language modelling a decoder); a
    run directory as the base must be a generating run, since a head knows only its own labels. The family is read
    for a registry model or a run chain only (a hub id's is read where it loads, so this check asks no hub)."""
    run = run_directory(reference)
    if run is not None and answers_by_head(load_config(run / "config.yaml")):
        raise ConfigError(
            f"run {run} is a classification run, whose head knows only its own labels, so it cannot be the "
            "base of another run; for related classification tasks first, then the target, use mixture.stages"
        )
    if run is None and reference not in REGISTRY:
        return
    family = model_family(ModelConfig(name=reference))
    needed = kind_named(kind).families
    if family in needed:
        return
    model = f"{'an' if family.startswith('e') else 'a'} {family} model"
    whose = f"run {run} tuned {model}" if run is not None else f"model '{reference}' is {model}"
    fits = [m.name for m in REGISTRY.values() if m.family in needed]
    raise ConfigError(
        f"{whose}, which cannot train {kind} examples (they train on {' or '.join(needed)} models); "
        f"registry models for them: {', '.join(fits) or 'none (use a hub id or local directory)'}"
    )


def load_tokenizer(
    source: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and give it a pad token (decoders often have none; we pad with EOS)."""
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str,
    family: Family,
    labels: list[str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantization_config=None,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Load the pretrained model as it will answer: given `labels`, with a fresh classification head over them (an
    objective that answers through a head); else as its `family` generates (a causal LM or an encoder-decoder).

    Weights are loaded in fp32 unless `dtype` says otherwise (a frozen base trained
    in bf16); mixed precision is applied by the trainer, which keeps fp32 master
    weights for what it trains. `quantization_config` (qlora's 4-bit settings)
    loads the base quantised instead.
    """
    kwargs: dict = {"dtype": dtype, "revision": revision, "trust_remote_code": trust_remote_code}
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, dtype=torch.bfloat16, device_map={"": 0})
    if labels is not None:
        kwargs["num_labels"] = len(labels)
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        if model.config.pad_token_id is None:  # a decoder's head reads the last token that is not padding
            model.config.pad_token_id = load_tokenizer(source, revision, trust_remote_code).pad_token_id
        return model
    return _GENERATOR_CLASS[family].from_pretrained(source, **kwargs)


def load_base(config: RunConfig, labels: list[str] | None = None, new_head: bool = True, **options) -> PreTrainedModel:
    """The pretrained model a run starts from: with a head over `labels` (a run that answers through one), else as
    its family generates; the seed fixes a classifier's new head, so every load is the same. `options` are a
    method's extra `from_pretrained` settings (a bf16 or 4-bit base).

    `new_head=False` where a trained run's saved weights are put on the base right after (eval, predict, serve):
    transformers' load report would list the classifier head as MISSING, though the run's own head replaces it.
    """
    set_seed(config.training.seed)
    source = resolve_source(config.model.name, config.model.revision)  # refuses a name that is no model first
    with _load_report(shown=new_head):
        return load_model(
            source,
            model_family(config.model),
            labels,
            config.model.revision,
            config.model.trust_remote_code,
            **options,
        )


def _no_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _load_report(shown: bool) -> Iterator[None]:
    """transformers reports the weights a load left missing or unused as a warning of its `modeling_utils`
    logger; unless `shown`, a filter drops that one report for the length of the load. (Raising the logger's level
    instead would not do: transformers then checks a tensor-parallel plan and warns of every layer it did not
    shard.)"""
    logger = logging.getLogger("transformers.modeling_utils")
    if not shown:
        logger.addFilter(_no_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_no_load_report)


def parameter_count(source: str) -> int | None:
    """Parameters in a local model's safetensors files, read from their headers (nothing is loaded); None for a hub
    id or a folder without safetensors."""
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def on_device(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the GPU when there is one (evaluation and scoring run there; training places it itself)."""
    return model.to("cuda") if torch.cuda.is_available() else model


def config_tokenizer(config: RunConfig):
    """The tokenizer of the config's model: what a run trains with and what the data report counts tokens with, set
    up as the run's kind of example reads its data (a conversation's chat template)."""
    source = resolve_source(config.model.name, config.model.revision)
    tokenizer = load_tokenizer(source, config.model.revision, config.model.trust_remote_code)
    if config.mixture is None:
        kind_of_run(config).prepare_tokenizer(tokenizer, config.data)
    return tokenizer
