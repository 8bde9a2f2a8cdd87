"""The server's limits and batching, shared by the parts of the application that enforce them."""

from __future__ import annotations

from dataclasses import dataclass


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
