"""tunelab: fine-tune language models and measure what fine-tuning did to them."""

__version__ = "0.1.0"
