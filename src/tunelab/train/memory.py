"""Peak memory of a training phase: resident set size, and GPU memory when training on CUDA.

A process's lifetime peak RSS would fold model loading and base evaluation into
the figure; on Linux writing 5 to /proc/self/clear_refs resets the peak (VmHWM),
so the figure covers training alone. Elsewhere the lifetime peak is reported and
labelled as such.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak() -> bool:
    """Start a new peak window; False where only the lifetime peak can be read."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def peak_memory(window_reset: bool) -> dict[str, float | str | None]:
    """Peak RSS (MB) since `reset_peak`, and peak GPU memory allocated (MB) when on CUDA."""
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_scope": "training" if window_reset else "process lifetime",
        "peak_gpu_mb": round(gpu, 1) if gpu is not None else None,
    }
