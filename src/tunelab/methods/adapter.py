"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), written by hand.

Written here rather than taken from a library: the `adapters` package (1.3.0)
pins transformers ~=4.57 while tunelab runs on transformers 5, and PEFT has no
bottleneck adapters. The method is small enough to own: each adapted sublayer's
output projection is wrapped so that ``y = proj(x)`` becomes
``y + up(act(down(y)))``, with ``up`` zero-initialised so that training starts
from exactly the pretrained model.

Only the adapters (and a classifier's new head) are saved, under their own
state-dict names in `adapter_model.safetensors`, next to `tunelab_adapter.json`
with the settings that rebuild the same adapters on a freshly loaded base. The
adapters add a non-linear sublayer, so they cannot be merged into the base weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.config import RunConfig
from tunelab.methods import head
from tunelab.methods.base import MethodError, cannot_merge, train_only
from tunelab.models.family import task_type_of

ADAPTER_FILE = "adapter_model.safetensors"
SETTINGS_FILE = "tunelab_adapter.json"

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass(frozen=True)
class Sublayers:
    """Where an architecture's sublayer outputs are projected back to the hidden size.

    Each entry is a pattern matched against the end of a module name, at a
    name-component boundary; patterns rather than plain suffixes because BERT's
    feed-forward output (`layer.N.output.dense`) is a suffix of its attention
    output (`attention.output.dense`).
    """

    attention: tuple[str, ...]
    feed_forward: tuple[str, ...]


BERT_STYLE = Sublayers(attention=(r"attention\.output\.dense",), feed_forward=(r"layer\.\d+\.output\.dense",))
DISTILBERT_STYLE = Sublayers(attention=(r"attention\.out_lin",), feed_forward=(r"ffn\.lin2",))
LLAMA_STYLE = Sublayers(attention=(r"self_attn\.o_proj",), feed_forward=(r"mlp\.down_proj",))
GPT2_STYLE = Sublayers(attention=(r"attn\.c_proj",), feed_forward=(r"mlp\.c_proj",))
T5_STYLE = Sublayers(attention=(r"SelfAttention\.o", r"EncDecAttention\.o"), feed_forward=(r"DenseReluDense\.wo",))
BART_STYLE = Sublayers(
    attention=(r"self_attn\.out_proj", r"encoder_attn\.out_proj"), feed_forward=(r"layers\.\d+\.fc2",)
)

SUBLAYERS: dict[str, Sublayers] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "deberta-v2"), BERT_STYLE),
    "distilbert": DISTILBERT_STYLE,
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text"), LLAMA_STYLE),
    "gpt2": GPT2_STYLE,
    **dict.fromkeys(("t5", "mt5"), T5_STYLE),
    **dict.fromkeys(("bart", "mbart"), BART_STYLE),
}
"""Output projections per `model.config.model_type`; a new architecture is one line here."""


class BottleneckAdapter(nn.Module):
    """The residual bottleneck `y + up(act(down(y)))`; `up` starts at zero, so it starts as the identity."""

    def __init__(self, width: int, bottleneck_size: int, activation: str, like: torch.Tensor):
        super().__init__()
        self.down = nn.Linear(width, bottleneck_size, device=like.device, dtype=like.dtype)
        self.activation = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, width, device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


class BottleneckAdapterLinear(nn.Module):
    """An output projection followed by its adapter, in the projection's place.

    The projection stays a child (`<name>.base.weight`), so the base weights keep
    recognisable state-dict names and the adapter's live under `<name>.adapter.`.
    """

    def __init__(self, base: nn.Module, bottleneck_size: int, activation: str):
        super().__init__()
        self.base = base
        self.adapter = BottleneckAdapter(output_width(base), bottleneck_size, activation, like=base.weight)

    @property
    def weight(self) -> torch.Tensor:
        """The projection's weight, because modelling code reads it (T5 casts its input to `wo.weight.dtype`)."""
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(hidden))


def output_width(projection: nn.Module) -> int:
    if isinstance(projection, nn.Linear):
        return projection.out_features
    if isinstance(projection, Conv1D):  # GPT-2's transposed linear layer
        return projection.nf
    raise MethodError(
        f"adapters wrap nn.Linear (or GPT-2's Conv1D) output projections, not {type(projection).__name__}; "
        "if the model already has adapters, load a fresh base model, otherwise use lora or ia3"
    )


def sublayers_for(model: nn.Module) -> Sublayers:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUBLAYERS:
        raise MethodError(
            f"method 'adapter' does not know where the sublayers of model type '{model_type}' end; "
            f"supported model types: {', '.join(sorted(SUBLAYERS))}. Use lora or ia3 for this model"
        )
    return SUBLAYERS[model_type]


def projection_names(model: nn.Module, placement: str) -> list[str]:
    """Names of the output projections to adapt: attention and feed-forward (houlsby) or feed-forward only (pfeiffer)."""
    sublayers = sublayers_for(model)
    patterns = sublayers.feed_forward + (sublayers.attention if placement == "houlsby" else ())
    matcher = re.compile(rf"(^|\.)({'|'.join(patterns)})$")
    names = [name for name, _ in model.named_modules() if matcher.search(name)]
    if not names:
        raise MethodError(
            f"no output projection in {type(model).__name__} matches the '{model.config.model_type}' "
            f"patterns ({', '.join(patterns)}); this checkpoint names its layers differently, use lora or ia3"
        )
    return names


def insert_adapters(model: nn.Module, placement: str, reduction_factor: int, activation: str) -> list[str]:
    """Wrap each selected output projection with a bottleneck adapter; returns the wrapped names."""
    names = projection_names(model, placement)
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        projection = getattr(parent, child_name)
        bottleneck_size = max(1, output_width(projection) // reduction_factor)
        setattr(parent, child_name, BottleneckAdapterLinear(projection, bottleneck_size, activation))
    return names


def adapter_parameter_names(model: nn.Module) -> list[str]:
    return [
        f"{name}.adapter.{parameter_name}"
        for name, module in model.named_modules()
        if isinstance(module, BottleneckAdapterLinear)
        for parameter_name, _ in module.adapter.named_parameters()
    ]


def saved_parameter_names(model: nn.Module, head_module: str | None) -> list[str]:
    """The adapters' and the head's parameters, by name: after `load` nothing may require grad."""
    if head_module is None:
        return adapter_parameter_names(model)
    head_parameters = model.get_submodule(head_module).named_parameters()
    return adapter_parameter_names(model) + [f"{head_module}.{name}" for name, _ in head_parameters]


def check(config: RunConfig) -> None:
    """Adapters run for every task type; whether the architecture is known is only visible once the model loads."""


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    settings = config.method.adapter
    head_module = head.head_name(model) if task_type_of(config) == "classification" else None
    insert_adapters(model, settings.placement, settings.reduction_factor, settings.activation)
    model.tunelab_adapter = {
        "placement": settings.placement,
        "reduction_factor": settings.reduction_factor,
        "activation": settings.activation,
        "model_type": model.config.model_type,
        "head": head_module,
    }
    train_only(model, set(saved_parameter_names(model, head_module)).__contains__)
    return model


def save(model: nn.Module, directory: Path) -> None:
    settings = getattr(model, "tunelab_adapter", None)
    if settings is None:
        raise MethodError(
            f"this {type(model).__name__} has no tunelab adapters; "
            "build it with the adapter method's apply() or load()"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parameters = dict(model.named_parameters())
    tensors = {
        name: parameters[name].detach().cpu().contiguous() for name in saved_parameter_names(model, settings["head"])
    }
    save_file(tensors, str(directory / ADAPTER_FILE))
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def read_settings(directory: Path) -> dict:
    path = directory / SETTINGS_FILE
    if not path.exists():
        raise MethodError(f"{directory} has no {SETTINGS_FILE}; it is not the model folder of an adapter run")
    return json.loads(path.read_text())


def load(base: nn.Module, directory: Path) -> nn.Module:
    """Rebuild the saved adapters on a freshly loaded base and fill them (and the head) with the saved weights."""
    directory = Path(directory)
    settings = read_settings(directory)
    if base.config.model_type != settings["model_type"]:
        raise MethodError(
            f"the adapters in {directory} were trained on a '{settings['model_type']}' model, not "
            f"'{base.config.model_type}'; load them onto the base model the run was trained from"
        )
    insert_adapters(base, settings["placement"], settings["reduction_factor"], settings["activation"])
    base.tunelab_adapter = settings
    tensors = load_file(str(directory / ADAPTER_FILE))
    result = base.load_state_dict(tensors, strict=False)
    missing = sorted(set(adapter_parameter_names(base)) & set(result.missing_keys))
    if result.unexpected_keys or missing:
        unexpected = ", ".join(result.unexpected_keys[:5]) or "none"
        raise MethodError(
            f"{directory / ADAPTER_FILE} does not fit this base model (unexpected: {unexpected}; "
            f"missing adapter weights: {', '.join(missing[:5]) or 'none'}); "
            "load it onto the base model the run was trained from"
        )
    return base


def merge(model: nn.Module) -> nn.Module:
    cannot_merge(
        "adapter",
        "a bottleneck adapter adds a non-linear sublayer, which no change of the existing weights reproduces",
    )
