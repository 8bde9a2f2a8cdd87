"""GGUF export of decoder runs, for llama.cpp, Ollama and LM Studio, built on the `gguf` package.

The run is merged first (LoRA, DoRA, rsLoRA and IA3 fold into the weights; a full fine-tune is its own
weights). Everything that is not a weight comes from the registry model's own GGUF file, which llama.cpp's
converter wrote: the tokenizer (tokens, merges or scores, token types, BOS/EOS/PAD ids), and the
architecture metadata llama.cpp reads (block count, heads, RoPE base, norm epsilon, sliding window ...).
Fine-tuning changes neither, and carrying them over avoids re-implementing the converter's tokenizer
handling. The run's chat template and EOS (a chat run's turn-closing token) replace the source's, and the weights
are renamed with the `gguf` package's tensor-name map and stored as f16, bf16, q8_0 or q4_0 with `gguf.quants`.

Two layout conventions of llama.cpp's converter are applied as it applies them, and undone by every GGUF
reader (transformers' loader included): Llama's query and key rows are permuted for its RoPE layout, and
Gemma's RMSNorm weights are stored as 1 + w (Gemma multiplies by 1 + w, llama.cpp by the stored weight).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.export.base import ExportError, ExportOption
from tunelab.export.modelfile import render_modelfile
from tunelab.models.registry import REGISTRY
from tunelab.runs import RunDir, staged_folder

if TYPE_CHECKING:
    import numpy as np
    import torch

NAME = "gguf"
DESCRIPTION = "GGUF + Ollama Modelfile for llama.cpp, Ollama, LM Studio (decoder runs)"

QUANTS = {"f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
          "q4_0": ("Q4_0", "MOSTLY_Q4_0")}  # fmt: skip
"""--quant: the weight type of the 2-D tensors (1-D norms stay f32, as llama.cpp keeps them) and the
file type recorded."""

K_QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
"""--quant values only llama.cpp's `llama-quantize` writes (K-quants pick a type per tensor by llama.cpp's own
rules): the f16 export is handed to it when it is on PATH."""

ARCHITECTURES = {"llama": "LLAMA", "gemma3": "GEMMA3"}
"""GGUF architectures of the registry's decoders, and their `gguf.MODEL_ARCH` names."""

_NOT_CARRIED = (
    "GGUF.",
    "general.file_type",
    "general.quantization_version",
    "general.name",
    "tokenizer.chat_template",
    "tokenizer.ggml.eos_token_id",
)
"""Source fields this export writes itself (or that describe the source's quantisation)."""

OPTIONS = (
    ExportOption(
        "quant",
        "GGUF weight type (default f16); the K-quants q4_k_m, q5_k_m and q6_k need llama.cpp's llama-quantize on PATH",
        choices=(*QUANTS, *K_QUANTS),
    ),
)


def export(run: RunDir, output: Path, task: str | None = None, quant: str = "f16") -> Path:
    """Write OUTPUT/<run name>-<quant>.gguf and OUTPUT/Modelfile for a decoder run; returns the folder.

    The folder is staged (`runs.staged_folder`): complete or absent, and an existing non-empty one is never
    overwritten. Unsupported runs are refused before any model loads.
    """
    import gguf

    from tunelab.models.loading import source_gguf
    from tunelab.run_commands import merged_model
    from tunelab.train.trained import load_run

    quantize = _llama_quantize(quant)
    config = run.config()
    registry = _registry_decoder(config)
    name = f"{config.name}-{quant}.gguf"
    with staged_folder(output) as staging:
        loaded = load_run(run)
        model = merged_model(loaded, task).float()
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        modelfile = render_modelfile(
            name, loaded.tokenizer, config, [eos] if isinstance(eos, int) else list(eos or [])
        )
        with source_gguf(registry) as source_path:
            source = gguf.GGUFReader(source_path)
            architecture = _field(source, "general.architecture")
            _check_shapes(source, architecture, model.config)
            source_eos = _field(source, "tokenizer.ggml.eos_token_id")
            writer = gguf.GGUFWriter(staging / name, architecture)
            _carry_metadata(writer, source)
        writer.add_name(f"{config.name} (tunelab, {config.method.name} on {config.model.name})")
        if getattr(loaded.tokenizer, "chat_template", None):
            writer.add_chat_template(loaded.tokenizer.chat_template)
        writer.add_eos_token_id(_eos_id(loaded.tokenizer, source_eos))
        tensor_type, file_type = QUANTS["f16" if quantize else quant]
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for gguf_name, weight in _gguf_tensors(model, architecture):
            data, qtype = _stored(weight, gguf.GGMLQuantizationType[tensor_type])
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if quantize:
            _requantize(quantize, staging / name, quant)
        (staging / "Modelfile").write_text(modelfile, encoding="utf-8")
    return output


def _llama_quantize(quant: str) -> str | None:
    """The `llama-quantize` program a K-quant needs (None for the types written here), or what to do."""
    if quant not in K_QUANTS:
        return None
    found = shutil.which("llama-quantize")
    if found is None:
        raise ExportError(
            f"--quant {quant} is a K-quant, which only llama.cpp's llama-quantize writes, and it is not on PATH: "
            f"export --quant f16, then run `llama-quantize NAME-f16.gguf NAME-{quant}.gguf {K_QUANTS[quant]}` "
            "where llama.cpp is built; or pick f16, bf16, q8_0 or q4_0"
        )
    return found


def _requantize(program: str, path: Path, quant: str) -> None:
    """Replace the f16 file at `path` by llama-quantize's K-quant of it (same name)."""
    quantized = path.with_suffix(".quantizing")
    done = subprocess.run([program, str(path), str(quantized), K_QUANTS[quant]], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"llama-quantize failed ({done.returncode}): {done.stderr[-600:]}")
    quantized.replace(path)


def _registry_decoder(config):
    """The registry decoder the run was tuned from (through any earlier runs of a two-stage recipe): its GGUF
    carries the tokenizer and architecture metadata."""
    from tunelab.models.family import model_family
    from tunelab.models.reference import pretrained_root
    from tunelab.train.objectives import objective_of

    family, head = model_family(config.model), objective_of(config).answers_by_head
    if head or family != "decoder":
        whose = "a classification head" if head else f"an {family} model"
        other = "--format onnx" if head else "`tunelab merge` (a transformers folder)"
        raise ExportError(f"GGUF export is for generating decoder runs; this run tuned {whose}: use {other}")
    registry = REGISTRY.get(pretrained_root(config.model.name))
    if registry is None or registry.gguf_file is None:
        raise ExportError(
            f"GGUF export takes the tokenizer and architecture metadata from a registry model's own GGUF "
            f"({', '.join(m.name for m in REGISTRY.values() if m.gguf_file)}); this run's base is "
            f"'{config.model.name}'. Write a transformers folder with `tunelab merge RUN --output DIR` and convert "
            "it with llama.cpp's convert_hf_to_gguf.py DIR"
        )
    return registry


def _eos_id(tokenizer, source_eos: int) -> int:
    """The run's EOS: a chat run's tokenizer ends on the token closing its template's turns (`<end_of_turn>` for a
    base Gemma given the gemma template), which llama.cpp and Ollama must stop on, not the source's own EOS."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else source_eos


def _field(reader, key: str):
    return reader.fields[key].contents()


def _check_shapes(source, architecture: str, model_config) -> None:
    """The merged model must have the source's shape, or the carried metadata would describe another model."""
    if architecture not in ARCHITECTURES:
        raise ExportError(f"GGUF export knows the {', '.join(ARCHITECTURES)} architectures, not '{architecture}'")
    expected = {
        "block_count": model_config.num_hidden_layers,
        "embedding_length": model_config.hidden_size,
        "feed_forward_length": model_config.intermediate_size,
        "attention.head_count": model_config.num_attention_heads,
    }
    for key, value in expected.items():
        found = _field(source, f"{architecture}.{key}")
        if found != value:
            raise ExportError(f"the source GGUF has {architecture}.{key}={found}, the tuned model {value}")


def _carry_metadata(writer, source) -> None:
    """Copy the source's tokenizer and architecture fields with their exact GGUF value types."""
    import gguf

    for key, field in source.fields.items():
        if key.startswith(_NOT_CARRIED) or key == "general.architecture":
            continue
        main_type = field.types[0]
        if main_type == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), main_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), main_type)


def _gguf_tensors(model, architecture: str):
    """(GGUF name, fp32 numpy weight) for every weight, in llama.cpp's layout; a tied output head is left out
    (llama.cpp reuses the token embeddings, as transformers does)."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[ARCHITECTURES[architecture]], config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"no GGUF name for the {architecture} tensor '{hf_name}'")
        weight = tensor.detach().to(torch.float32)
        if architecture == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            weight = _rope_permute(weight, heads)
        if architecture == "gemma3" and hf_name.endswith("norm.weight"):
            weight = weight + 1
        yield gguf_name, weight.numpy()


def _rope_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter's permutation of Llama query/key rows (rotate-half to interleaved pairs)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _stored(weight: np.ndarray, tensor_type):
    """The weight as written: 1-D tensors in f32; 2-D ones in the asked type, or f16 where a row does not
    split into the quantisation's blocks."""
    import gguf
    import numpy as np

    if weight.ndim < 2:
        return weight.astype(np.float32), gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[tensor_type]
    if weight.shape[-1] % block:
        tensor_type = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(weight, tensor_type), tensor_type
