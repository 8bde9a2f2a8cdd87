"""Deployment formats written from a complete run directory, one module per format: `gguf` (llama.cpp,
Ollama, LM Studio) with its Ollama `modelfile`, and `onnx` (onnxruntime) for classifiers. The merged
transformers folder they start from is `pipeline.merge_run`."""

from tunelab.errors import TunelabError


class ExportError(TunelabError, ValueError):
    """A run that cannot be written in the asked format, or an export that cannot be used as asked, with what to
    do instead."""
