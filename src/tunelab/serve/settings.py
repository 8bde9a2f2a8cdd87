"""The server's limits and batching, shared by the parts of the application that enforce them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import ConfigError


def default_threads() -> int:
    """Half the cores this process may use (at least one): a server and a training run on one machine then do not
    fight over every core (BENCHMARKS.md: 16 clients on a CPU shared with training timed out a third of their
    requests). A machine that only serves gives `--threads` its whole core count."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


@dataclass
class ServeSettings:
    """The server's limits and batching; every one has a `tunelab serve` option."""

    api_key: str | None = None
    max_batch: int = 8
    batch_window_ms: float = 10.0
    queue_size: int = 64
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 2048
    max_tokens_cap: int = 512
    default_max_tokens: int = 128
    timeout_s: float = 120.0
    batching: str = "continuous"
    """'continuous' (rows join and leave the decoding batch at every step) or 'static' (a batch generated to its
    end, then the next)."""
    fold_adapters: bool = True
    """Fold a LoRA adapter alone in its batch into its base's weights (merged speed, at the cost of a copy of the
    adapted weights kept to unfold them)."""
    prefix_cache_tokens: int = 4096
    """Prompt-beginning tokens whose key/value states each served base keeps for later prompts (0: none)."""
    threads: int = field(default_factory=default_threads)
    """CPU threads the model's work uses (torch.set_num_threads)."""
    allow_adapter_loading: bool = False
    """Whether `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` exist (they are not routed otherwise)."""
    adapter_root: Path | None = None
    """The folder every loaded adapter's run must lie in (symlinks followed); required with adapter loading, so a
    server never reads a path outside the one its operator chose."""
    max_adapters: int = 8
    """Adapters on shared bases loaded at once, at start and at run time; loading one more unloads the least
    recently used idle one."""

    def __post_init__(self) -> None:
        """Refuse, at start, adapter loading with nowhere to load from, and a root that is not a folder."""
        if self.allow_adapter_loading and self.adapter_root is None:
            raise ConfigError(
                "--allow-adapter-loading needs --adapter-root DIR: the folder of the runs the server may load"
            )
        if self.adapter_root is not None:
            self.adapter_root = Path(self.adapter_root).resolve()
            if not self.adapter_root.is_dir():
                raise ConfigError(f"--adapter-root {self.adapter_root} is not a folder")
        if self.max_adapters < 1:
            raise ConfigError(f"--max-adapters {self.max_adapters}: give a number of 1 or more")
