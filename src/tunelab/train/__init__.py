"""Training on Hugging Face Trainer."""
