"""tunelab: fine-tune language models and measure what fine-tuning did to them."""

from importlib.metadata import version

__version__ = version("tunelab")
"""The installed distribution's version, so `tunelab --version` and pyproject.toml never disagree."""
