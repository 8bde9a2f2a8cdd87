"""The machine's limit: sustained dense matmul throughput in fp32 and bf16, on the device training would use.

    python bench/peak.py

Each figure is the best of several timed square matmuls of a few sizes (after a warm-up), in
FLOP/s = 2 n^3 / seconds. Training benchmarks divide their model FLOPs per second
by the figure for the precision they ran at (model FLOPs utilisation, MFU).
On a CPU without AVX512-BF16/AMX the bf16 figure shows the cost of emulation.
"""

from __future__ import annotations

import time

import torch


def matmul_flops(dtype: torch.dtype, size: int, repeats: int, device: str) -> float:
    """Best FLOP/s over `repeats` timed (size x size) @ (size x size) products."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, allocation
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def matmul_peaks(repeats: int = 5) -> dict[str, float]:
    """{'fp32': FLOP/s, 'bf16': FLOP/s} on CUDA when present, else on the CPU's current thread count.

    CPU bf16 uses a smaller matrix when it is emulated, so the measurement takes seconds, not minutes.
    """
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would report a different unit
        return {
            "fp32": matmul_flops(torch.float32, 8192, repeats, "cuda"),
            "bf16": matmul_flops(torch.bfloat16, 8192, repeats, "cuda"),
        }
    fp32 = max(matmul_flops(torch.float32, size, repeats, "cpu") for size in (1024, 2048))
    probe = matmul_flops(torch.bfloat16, 256, 2, "cpu")
    sizes = (1024, 2048) if probe > fp32 / 10 else (512,)
    return {"fp32": fp32, "bf16": max(matmul_flops(torch.bfloat16, size, repeats, "cpu") for size in sizes)}


def main() -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    peaks = matmul_peaks()
    print(f"matmul peak on {device} (torch {torch.__version__}):")
    for name, flops in peaks.items():
        print(f"  {name}: {flops / 1e9:,.1f} GFLOP/s ({flops / peaks['fp32']:.2f}x fp32)")


if __name__ == "__main__":
    main()
