"""What a run chooses from the machine it runs on: precision, fused kernels, and the parameter count behind them."""

from __future__ import annotations

import pytest
import torch

from tunelab.models import kernels
from tunelab.models.kernels import KernelsUnavailable, liger_available, use_kernels
from tunelab.models.loading import parameter_count
from tunelab.train import trainer
from tunelab.train.trainer import GPU_BF16_FROM_PARAMETERS, choose_precision

from helpers import tiny_llama


def test_parameter_count_reads_the_safetensors_headers(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    assert parameter_count(str(tmp_path)) == sum(p.numel() for p in model.parameters())  # tied head counted once
    assert parameter_count(str(tmp_path / "missing")) is None
    assert parameter_count("some-org/some-hub-model") is None


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "fp32-cpu"])
def test_auto_precision_on_a_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    assert choose_precision("auto", 135_000_000) == ("bf16" if native else "fp32")
    assert choose_precision("fp32", 135_000_000) == "fp32"


def test_auto_precision_on_a_gpu_keeps_small_models_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision("auto", 135_000_000) == "fp32"
    assert choose_precision("auto", GPU_BF16_FROM_PARAMETERS) == "bf16"
    assert choose_precision("auto", None) == "bf16"  # a hub model of unknown size: the GPU's native choice
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_precision("auto", GPU_BF16_FROM_PARAMETERS) == "fp32"


def test_kernels_resolve_to_none_without_liger_and_refuse_to_pretend(monkeypatch):
    monkeypatch.setattr(kernels, "liger_available", lambda: False)
    model = tiny_llama()
    before = type(model.model.norm).forward
    assert use_kernels(model, "auto") == "none"
    assert use_kernels(model, "none") == "none"
    assert type(model.model.norm).forward is before  # nothing patched
    with pytest.raises(KernelsUnavailable, match="pip install liger-kernel"):
        use_kernels(model, "liger")


@pytest.mark.skipif(not liger_available(), reason="Liger's Triton kernels need CUDA and liger-kernel")
def test_liger_kernels_keep_the_loss(tmp_path):
    """The same batch, loss and gradient norm with Liger's RMSNorm/RoPE/SwiGLU as without, within bf16-free fp32
    tolerance (1e-4 relative)."""
    ids = torch.randint(1, 97, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    results = []
    for choice in ("none", "liger"):
        model = tiny_llama().cuda()
        assert use_kernels(model, choice) == choice
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
        results.append((loss.item(), norm.item()))
    (plain_loss, plain_norm), (liger_loss, liger_norm) = results
    assert liger_loss == pytest.approx(plain_loss, rel=1e-4)
    assert liger_norm == pytest.approx(plain_norm, rel=1e-3)


def test_bf16_is_not_native_where_pytorch_is_capped_below_avx512(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 runs PyTorch as on a CPU without AVX-512, where bf16 is emulated (~60x slower)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert trainer.cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not trainer.cpu_has_native_bf16()
