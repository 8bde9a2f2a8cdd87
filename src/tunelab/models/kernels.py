"""Fused GPU kernels for a decoder's layers: Liger Kernel's RMSNorm, RoPE and SwiGLU/GeGLU (`training.kernels`).

On a GPU, steps of models this small are bound by kernel launches more than by arithmetic, so fusing a layer's
elementwise work into fewer kernels shortens them. Liger's Triton kernels run on CUDA only. Its cross-entropy
kernels are left off: tunelab's completion loss already projects only the scored positions onto the vocabulary,
in chunks (`tunelab.train.trainer.CompletionLossTrainer`).
"""

from __future__ import annotations

import importlib.util

import torch

from tunelab.config import ConfigError


class KernelsUnavailable(ConfigError):
    """The configured kernels cannot run on this machine."""


def liger_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def choose_kernels(requested: str) -> str:
    """Resolve 'auto': Liger where it can run (CUDA, `liger-kernel` installed), else none."""
    if requested != "auto":
        return requested
    return "liger" if liger_available() else "none"


def use_kernels(model: torch.nn.Module, requested: str) -> str:
    """Patch the loaded decoder's layers with the kernels `training.kernels` resolves to, and return their name;
    'liger' where Liger cannot run is refused before training, saying what to install or choose."""
    choice = choose_kernels(requested)
    if choice == "none":
        return choice
    if not liger_available():
        raise KernelsUnavailable(
            "training.kernels: liger needs a CUDA GPU and `pip install liger-kernel`; use auto or none here"
        )
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    return choice
