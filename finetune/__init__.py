"""Reproducible QLoRA fine-tuning of causal language models, one DVC stage at a time."""
