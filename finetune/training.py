"""QLoRA training with the transformers Trainer: masked answers, dynamic padding, DVCLive curves."""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import Trainer, TrainingArguments, set_seed

from finetune.adapters import lora_config
from finetune.base_model import device
from finetune.batching import AnswerOnlyCollator
from finetune.files import atomic_path, write_json
from finetune.chat import encode_conversation
from finetune.params import LoraParams, Task, TaskTrainParams, TrainParams
from finetune.prompts import answer_ids, encode_example, render_prompt


@dataclasses.dataclass
class TrainResult:
    """What `metrics/train.json` reports."""

    final_loss: float
    validation_loss: float | None
    runtime_s: float
    steps: int
    trained_tokens: int
    tokens_per_s: float
    peak_memory_gib: float
    trainable_parameters: int
    total_parameters: int
    target_modules: list[str]
    device: str


def training_arguments(task_train: TaskTrainParams, params: TrainParams, output_dir: str,
                       has_validation: bool) -> TrainingArguments:
    """TrainingArguments for this transformers version (sampler and warmup names changed in 5.x)."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        output_dir=output_dir, seed=params.seed, data_seed=params.seed,
        num_train_epochs=task_train.epochs, per_device_train_batch_size=task_train.batch_size,
        per_device_eval_batch_size=task_train.batch_size * 2,
        gradient_accumulation_steps=params.gradient_accumulation, learning_rate=task_train.learning_rate,
        weight_decay=params.weight_decay, lr_scheduler_type="cosine",
        logging_steps=params.logging_steps, logging_first_step=True, save_strategy="no", report_to=[],
        eval_strategy="epoch" if has_validation else "no",
        bf16=on_gpu and torch.cuda.is_bf16_supported(), remove_unused_columns=False,
        disable_tqdm=False, dataloader_num_workers=0, dataloader_pin_memory=on_gpu,
    )  # activation checkpointing is switched on on the model itself, by attach_adapter
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = params.warmup_ratio
    if "train_sampling_strategy" in fields:
        kwargs["train_sampling_strategy"] = "group_by_length"
    else:
        kwargs["group_by_length"] = True
    return TrainingArguments(**kwargs)


def wants_checkpointing(setting: bool | str) -> bool:
    """`auto` checkpoints activations on a GPU, where memory is short, and not on CPU, where it only costs time."""
    return torch.cuda.is_available() if setting == "auto" else bool(setting)


def attach_adapter(model, lora: LoraParams, gradient_checkpointing: bool | str):
    """Prepare a (4-bit) base model for training and wrap it with a fresh LoRA adapter."""
    config = lora_config(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    checkpointing = wants_checkpointing(gradient_checkpointing)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, config)
    if not torch.cuda.is_available():
        # fp32 adapters on CPU: bf16 math there is ~20x slower.
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model, sorted(config.target_modules)


def peak_memory_gib() -> float:
    """Peak GPU memory allocated, or this process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def train_adapter(model, tokenizer, train_set: list[dict], validation_set: list[dict], task_train: TaskTrainParams,
                  params: TrainParams, lora: LoraParams, work_dir: Path, callbacks: list) -> tuple[object, TrainResult]:
    """Train a LoRA adapter on encoded examples; returns the PEFT model and its figures."""
    set_seed(params.seed)
    model, modules = attach_adapter(model, lora, params.gradient_checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    collator = AnswerOnlyCollator(tokenizer.pad_token_id)
    args = training_arguments(task_train, params, str(work_dir), has_validation=bool(validation_set))
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      eval_dataset=validation_set or None, data_collator=collator, callbacks=callbacks)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - start
    tokens = int(sum(len(ex["input_ids"]) for ex in train_set) * task_train.epochs)
    history = [h for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    result = TrainResult(
        final_loss=round(float(history[-1]["loss"] if history else output.training_loss), 4),
        validation_loss=round(float(evals[-1]), 4) if evals else None,
        runtime_s=round(runtime, 1), steps=int(output.global_step), trained_tokens=tokens,
        tokens_per_s=round(tokens / runtime, 1), peak_memory_gib=round(peak_memory_gib(), 2),
        trainable_parameters=int(trainable), total_parameters=int(total), target_modules=modules,
        device=str(device()))
    return model, result


def encode_split(tokenizer, rows: list[dict], task: Task) -> list[dict]:
    """Encode a split's rows as training examples: the loss on the label, or on the assistant's turns."""
    max_length = task.train.max_length
    if task.is_generation:
        return [encode_conversation(tokenizer, row["messages"], task.prompt.system, task.prompt.chat_template, max_length)
                for row in rows]
    return [
        encode_example(tokenizer, render_prompt(task.prompt.template, row["text"]),
                       answer_ids(tokenizer, task.prompt.answer_prefix, row["label"]), max_length)
        for row in rows
    ]


def save_adapter(model, tokenizer, dest: str | Path, run_info: dict) -> None:
    """Write the adapter, its tokenizer and what it was made with (params, hashes, versions), atomically."""
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "run.json", run_info)
