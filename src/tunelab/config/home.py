"""Where tunelab keeps what it prepares once and reuses: models, tokenised data, human ratings."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home() -> Path:
    """Root of tunelab's caches (prepared models, tokenised data, human ratings): $TUNELAB_HOME, default
    ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")).expanduser()
