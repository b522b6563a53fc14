"""The adapter merged into its base: a plain transformers folder that vLLM, TGI or llama.cpp's converter load.

A QLoRA adapter was trained against the NF4-dequantized weights, but its base also exists in full
precision, and the fine-tuning tools disagree on which to merge into. Both are offered:
`original` (the base's own weights, as a user would download them) and `dequantized` (the 4-bit
weights the adapter learned against, dequantized: the adapter-on-4-bit model exactly, as one model).
"""

from __future__ import annotations

from pathlib import Path

from finetune.deliver.trained import TrainedRun, check_base_unchanged
from finetune.errors import PipelineError
from finetune.files import atomic_path, write_json
from finetune.model import base_model

def merged_model(run: TrainedRun, into: str):
    """The base model (`original` or `dequantized` 4-bit weights) with the adapter's update added into its weights."""
    from peft import PeftModel

    if run.is_whole_model:
        raise PipelineError(f"{run.folder} is a whole model (full fine-tuning's, or merged already), not an adapter: "
                            "there is nothing to merge; load, predict with or convert it as it is")
    check_base_unchanged(run)
    quantized = into == "dequantized" and run.quantization() is not None
    head = run.head(base_model.load_tokenizer(str(run.folder), "main"))  # a classification head's labels and pad token
    base = base_model.load_model(run.base_name, run.base_revision, run.quantization() if quantized else None, head=head)
    if quantized:
        base = base_model.dequantized(base)
        base.hf_quantizer.remove_quantization_config(base)  # plain weights now; a saved folder must not claim 4-bit
    model = PeftModel.from_pretrained(base, str(run.folder)).merge_and_unload()
    model.config.use_cache = True  # load_model switches it off for training; servers want it on
    return model.eval()


def save_merged(model, tokenizer, dest: str | Path, run_info: dict) -> Path:
    """Write a merged model as a standard folder (safetensors, tokenizer, generation config, run.json), atomically."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.architectures = [type(model).__name__]
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "run.json", run_info)
    return Path(dest)


def merged_run_info(run: TrainedRun, into: str, model) -> dict:
    """The adapter's run.json, plus how the merge was made."""
    return {**run.info, "merge": {"into": into, "adapter": str(run.folder), "dtype": str(model.dtype).removeprefix("torch.")}}
