"""Saving and loading only the tensors a method trained, for methods PEFT does not implement (head, BitFit).

A BitFit run changes ~0.1% of the weights; saving a whole model copy for it would
waste the point of the method. We save the changed tensors under their own
state-dict names in `delta.safetensors` (any tool can read them with
`safetensors.torch.load_file` and `model.load_state_dict(..., strict=False)`),
and `tunelab merge` writes the standalone model when one is wanted.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.methods.base import MethodError, train_only

DELTA_FILE = "delta.safetensors"
DELTA_INFO = "tunelab_delta.json"


def freeze_all_but(model: nn.Module, keep) -> list[str]:
    """Freeze every parameter except those whose name `keep(name)` accepts, and remember them for `save`."""
    kept = train_only(model, keep)
    model.tunelab_delta_names = kept  # save() writes exactly these, whatever requires_grad says later
    return kept


def save(model: nn.Module, directory: Path, method: str) -> None:
    names = getattr(model, "tunelab_delta_names", None)
    if not names:
        raise MethodError(
            f"this {method} model does not record which tensors it trained; build it with the method's apply()"
        )
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    save_file({name: params[name].detach().cpu().contiguous() for name in names}, str(directory / DELTA_FILE))
    (directory / DELTA_INFO).write_text(json.dumps({"method": method, "tensors": len(names)}, indent=2) + "\n")
    model.config.save_pretrained(directory)  # label names and architecture, for a reader of the folder


def load(base: nn.Module, directory: Path) -> nn.Module:
    """Put the saved tensors into a freshly loaded base; every saved tensor must find its place."""
    path = directory / DELTA_FILE
    if not path.exists():
        raise MethodError(f"{directory} has no {DELTA_FILE}; it is not the model folder of a head or bitfit run")
    tensors = load_file(str(path))
    result = base.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise MethodError(
            f"{path} holds tensors the base model does not have ({', '.join(result.unexpected_keys[:5])}); "
            "load it onto the base model the run was trained from"
        )
    base.tunelab_delta_names = list(tensors)
    return base


def already_merged(model: nn.Module) -> nn.Module:
    """A model with its changed tensors loaded is already a standalone model."""
    return model
