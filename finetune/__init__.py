"""Reproducible QLoRA fine-tuning of causal language models, one DVC stage at a time."""

import logging
import warnings

# Two notices every model-loading stage printed that ask nothing of the user, silenced by their exact text:
# bitsandbytes looks for an optional hub-downloaded CPU kernel at import (`kernels` is not installed, and a 4-bit
# model is dense-copied on CPU anyway: finetune/model/base_model.py); PEFT still reads transformers' deprecated
# `is_gradient_checkpointing` when it wraps a model (this project calls the new activation_checkpointing API).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
