"""LoRA adapters: which layers get one, and with what shape."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig

from finetune.errors import PipelineError
from finetune.model.base_model import output_layer
from finetune.model.head import HEAD, is_classifier
from finetune.param_schemas import LoraParams

ALL_LINEAR = "all-linear"


def linear_layer_names(model) -> list[str]:
    """Short names of the model's linear layers (4-bit ones included), the output head (or classification head)
    excluded."""
    head = output_layer(model)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and name
    }
    return sorted(names)


def target_modules(model, spec: str | list[str]) -> list[str]:
    """Resolve `lora.target_modules`: `all-linear`, or an explicit list checked against the model."""
    available = linear_layer_names(model)
    if spec == ALL_LINEAR:
        return available
    unknown = [name for name in spec if name not in available]
    if unknown:
        raise PipelineError(f"params.yaml: lora.target_modules names {unknown}, not in this model; choose from {available}")
    return sorted(spec)


# lora.init -> PEFT's init_lora_weights. loftq is applied after the adapter is made (methods.loftq_start):
# PEFT's own "loftq" init quantizes a full-precision base itself, where this pipeline's base is 4-bit already.
INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "loftq": True}
REWRITES_BASE = ("pissa", "olora")  # inits that move part of the base weights into the adapter


def lora_config(model, lora: LoraParams) -> LoraConfig:
    """A PEFT LoRA config for causal language modelling, or for a model with a classification head (the head then
    trains whole beside the adapter and is saved with it: `modules_to_save`), with PEFT's variants as params.yaml
    sets them."""
    head = is_classifier(model)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=target_modules(model, lora.target_modules), bias="none",
                      task_type="SEQ_CLS" if head else "CAUSAL_LM", modules_to_save=[HEAD] if head else None,
                      use_dora=lora.use_dora, use_rslora=lora.use_rslora, init_lora_weights=INITS[lora.init])


def load_adapter(model, path: str):
    """Attach a trained adapter from `path` to the base model, for inference."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise PipelineError(f"{path}: no adapter_config.json; run the train_qlora stage first (`dvc repro train_qlora`)")
    return PeftModel.from_pretrained(model, path, is_trainable=False)
