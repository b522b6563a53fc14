"""Training through TRL's SFTTrainer: QLoRA, LoRA or full fine-tuning, the loss on the answers only, DVCLive curves,
checkpoints, guards."""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from pathlib import Path

import torch
from peft.helpers import disable_input_dtype_casting
from transformers import ProgressCallback, set_seed
from transformers.modeling_layers import GradientCheckpointingLayer

from finetune.train import distributed, memory
from finetune.model import methods
from finetune.model.base_model import device, key_value_heads_repeated
from finetune.errors import PipelineError
from finetune.train.batching import any_length_attention, wants_padding_free
from finetune.train.memory import StepMemory
from finetune.train.checkpoints import CheckpointCallback
from finetune.train.sft import build_trainer
from finetune.files import atomic_path, write_json
from finetune.text.chat import encode_conversation
from finetune.model.methods import Trainable
from finetune.param_schemas import LoraParams, Task, TaskTrainParams, TrainParams
from finetune.params import switch
from finetune.text.prompts import IGNORE_INDEX, answer_ids, check_room, encode_example, render_prompt


@dataclasses.dataclass
class TrainResult:
    """What `metrics/train.json` reports."""

    method: str
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
    batch_size: int                # examples per process step
    learning_rate: float           # peak rate of the schedule: the task's, scaled when a GPU grew its batch
    processes: int                 # processes that shared each batch (distributed.processes x machines)
    gradient_checkpointing: bool
    padding_free: bool             # the batch's examples packed into one row (train.padding_free)
    compiled: bool
    device: str
    resumed_from_step: int | None  # a run that resumed a checkpoint: the step it started from


LARGE_MODEL = 1_000_000_000  # parameters from which compiling the decoder blocks pays on a GPU


def device_batch_size(task_train: TaskTrainParams, params: TrainParams, lengths: list[int], on_gpu: bool,
                      packed: bool = False) -> int:
    """Examples per step: the task's batch on CPU; on a GPU, grown to `gpu_batch_tokens` at the longest example
    (padded batches) or at the mean length (`packed`: padding-free batches, drawn in random order).

    A training step has a fixed cost (kernel launches, the adapter wrappers, the optimizer), so a
    GPU fed short examples 16 at a time mostly waits. The batch grows until it holds
    `gpu_batch_tokens` tokens even if every example were as long as the longest (which bounds
    memory; a packed batch of random examples holds about its size times the mean), but stays small
    enough for `gpu_min_steps` optimizer steps an epoch; it never shrinks below the task's batch_size.
    The low-memory mode (`gradient_checkpointing: true`) holds a step to the tokens of the task's own
    batch at its `max_length` as well: the memory a padded batch of the task's size would take.
    """
    if not on_gpu or params.gpu_batch_tokens <= 0 or not lengths:
        return task_train.batch_size
    budget = params.gpu_batch_tokens
    if params.gradient_checkpointing is True:
        budget = min(budget, task_train.batch_size * task_train.max_length)
    by_tokens = int(budget // (sum(lengths) / len(lengths) if packed else max(lengths)))
    by_steps = int(len(lengths) * task_train.epochs) // max(1, params.gpu_min_steps * params.gradient_accumulation)
    return max(task_train.batch_size, min(by_tokens, by_steps))


def scaled_learning_rate(learning_rate: float, batch: int, task_batch: int, scaling: str) -> float:
    """The learning rate for a batch a GPU grew from the task's: `sqrt` multiplies it by the square root of the growth.

    The task's rate is tuned for its own batch (16 Instacart products on CPU); a GPU's grown batch
    (269 products) takes a sixteenth of the steps, each with a less noisy gradient. Adam's
    square-root scaling rule (Malladi et al., 2022) keeps the training dynamics: on an H200, SmolLM2
    on the full Instacart split reached 0.816 test accuracy at 269 products a step and 4.1x the task's
    rate, against 0.804 at 169 a step and the task's own rate (benchmarks/README.md). `none` keeps it.
    """
    if scaling == "none" or batch <= task_batch:
        return learning_rate
    return learning_rate * math.sqrt(batch / task_batch)


def _auto_by_size(key: str, setting: bool | str, n_parameters: int, on_gpu: bool) -> bool:
    """true or false as set; `auto` is on for a 1B+ model on a GPU only."""
    return switch(f"train.{key}", setting, lambda: on_gpu and n_parameters >= LARGE_MODEL)


def wants_checkpointing(setting: bool | str, needs: StepMemory | None) -> bool:
    """`auto` recomputes activations only on a GPU whose free memory would not hold them (`needs`; None on CPU).

    Recomputing costs about a third of each step's matmuls. On CPU memory is plentiful and
    recomputation only costs time; on a GPU the step's activations are estimated from the model's
    config and compared with what the device has free (finetune/train/memory.py): a 7B model at 4,096
    tokens a step fits an H200 without it, not a 24 GB card. `true` is the low-memory mode.
    """
    return switch("train.gradient_checkpointing", setting,
                  lambda: needs is not None and not needs.fits_without_checkpointing())


def step_memory(model, method: str, lora_r: int, tokens: int, logits_tokens: int) -> StepMemory:
    """The memory a step of `tokens` tokens (per process) needs on this GPU, and what the GPU has free."""
    n_parameters = parameter_count(model)
    trainable = n_parameters if method == "full" else memory.lora_parameters(model, lora_r)
    return StepMemory(activations=memory.activation_bytes(model.config, tokens, logits_tokens),
                      optimizer=memory.optimizer_bytes(trainable), free=memory.free_bytes(device()))


def wants_compile(setting: bool | str, n_parameters: int, on_gpu: bool) -> bool:
    """`auto` compiles the decoder blocks only for a 1B+ model on a GPU, where it pays back many times.

    H100, QLoRA at 7B (benchmarks/README.md): a step takes 20-40% less time once compiled, the
    compilation takes one to two minutes once per run. On CPU, and for a small model whose whole
    epoch lasts a few minutes, that minute is not won back.
    """
    return _auto_by_size("compile", setting, n_parameters, on_gpu)


def compile_blocks(model, backend: str = "inductor") -> int:
    """torch.compile each decoder block, the LoRA layers inside it included; returns how many.

    Compiling the blocks, not the whole model, keeps one graph for all of them (they share their
    code), leaves activation checkpointing around each block as it was, and keeps the state dict's
    names, so the adapter saves as before. `dynamic=True`: every batch may have a new length.
    """
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for block in blocks:
        block.compile(dynamic=True, backend=backend)
    return len(blocks)


def lora_inputs_uncast(model, autocast: bool):
    """Under bf16 autocast, let each LoRA layer take its bf16 input as it comes (a context; `autocast` false: no-op).

    PEFT casts a LoRA layer's input to its fp32 weights' dtype, and autocast casts it straight back to
    bf16 for the matmul: two copies a layer each way, for the same numbers. A small model's GPU step is
    bound by its kernel launches, and those are 840 of them (SmolLM2: 210 LoRA layers).
    """
    return disable_input_dtype_casting(model, active=autocast)


def parameter_count(model) -> int:
    """Parameters of a model, counting a 4-bit weight's packed pairs as two."""
    return sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())


def peak_memory_gib() -> float:
    """Peak GPU memory allocated, or this process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def train_model(model, tokenizer, train_set: list[dict], validation_set: list[dict], task_train: TaskTrainParams,
                params: TrainParams, lora: LoraParams, work_dir: Path, callbacks: list,
                saving: CheckpointCallback | None = None, resume_from: tuple[Path, dict] | None = None,
                base_folder: str = "") -> tuple[Trainable, TrainResult]:
    """Train by `params.method` on encoded examples through TRL's SFTTrainer; returns what trained and its figures.

    Under accelerate launch every process calls this with the whole split: the Trainer gives each its share of
    every batch (DDP or FSDP, as launched), and the batch per update stays the params' (`per_process_batch`).
    `model` is the base as `methods.load_base(..., dense=False)` loads it. `callbacks` may hold
    functions that make a callback: they are called once the model is ready, so that a run refused
    before it starts (a layer the model lacks) creates no DVCLive folder. With `saving`, checkpoints go
    to `work_dir`; `resume_from` is one of them and its marker. `base_folder` is where LoftQ reads the
    original weights. A non-finite loss or gradient norm, or a SIGTERM, ends training with a PipelineError.
    """
    set_seed(params.seed)
    on_gpu = torch.cuda.is_available()
    lengths = [len(ex["input_ids"]) for ex in train_set]
    packed = wants_padding_free(params.padding_free, lengths, on_gpu, params.gpu_batch_tokens)
    processes = distributed.world_size()
    batch = device_batch_size(task_train, params, lengths, on_gpu=on_gpu, packed=packed)
    if batch > task_train.batch_size:  # grown on a GPU: to a batch the processes share evenly
        batch = max(task_train.batch_size, batch - batch % processes)
    batch_size, accumulation = distributed.per_process_batch(batch, params.gradient_accumulation, processes)
    learning_rate = scaled_learning_rate(task_train.learning_rate, batch, task_train.batch_size, params.gpu_lr_scaling)
    if learning_rate != task_train.learning_rate and distributed.is_main():
        print(f"train_qlora: batch grown from {task_train.batch_size} to {batch} examples on the GPU: learning rate "
              f"{task_train.learning_rate:g} -> {learning_rate:.3g} (train.gpu_lr_scaling: {params.gpu_lr_scaling})",
              flush=True)
    needs = None
    if on_gpu:  # the tokens of one process's step: a packed row of random examples, or a batch of the longest
        mean = sum(lengths) / max(1, len(lengths))
        tokens = int(batch_size * mean * 1.25) if packed else batch_size * max(lengths, default=0)
        answers = max((sum(label != IGNORE_INDEX for label in ex["labels"]) for ex in train_set), default=0)
        needs = step_memory(model, params.method, lora.r, tokens, tokens if packed else batch_size * answers)
    checkpointing = wants_checkpointing(params.gradient_checkpointing, needs)
    if needs is not None and distributed.is_main():
        print(f"train_qlora: activation checkpointing {'on' if checkpointing else 'off'} "
              f"({needs.describe()}; train.gradient_checkpointing: {params.gradient_checkpointing})", flush=True)
    trained = methods.trainable(model, params.method, lora, checkpointing, base_folder)
    model = trained.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = parameter_count(model)
    compiled = wants_compile(params.compile, total, on_gpu=on_gpu)
    if compiled and not compile_blocks(model):
        raise PipelineError(f"train.compile: found no decoder blocks to compile in {type(model).__name__}; "
                            "set train.compile: false")
    trainer = build_trainer(trained, tokenizer, train_set, validation_set, task_train, params, lora, work_dir,
                            callbacks + ([saving] if saving else []), batch_size, accumulation, padding_free=packed,
                            learning_rate=learning_rate)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        with any_length_attention(), key_value_heads_repeated(model), lora_inputs_uncast(model, trainer.args.bf16):
            output = trainer.train(resume_from_checkpoint=str(resume_from[0]) if resume_from else None)
    finally:
        if trainer.packed_mask is not None:
            trainer.packed_mask.remove()
        if saving:
            saving.release()
        for callback in trainer.callback_handler.callbacks:  # an error ends the bar first, so it is the last line
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.close()
    if trainer.is_fsdp_enabled:  # every rank hands in its shards; rank 0 gets the whole state dict to save
        trained.state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if saving and saving.stopped_by_signal is not None and trainer.state.global_step < trainer.state.max_steps:
        step = trainer.state.global_step
        raise PipelineError(f"stopped by SIGTERM at step {step} of {trainer.state.max_steps}; checkpoint-{step} is in "
                            f"{work_dir}: `dvc repro` resumes from it")
    runtime = saving.elapsed_s() if saving else time.perf_counter() - start
    tokens = int(sum(len(ex["input_ids"]) for ex in train_set) * task_train.epochs)
    history = [h for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    result = TrainResult(
        method=params.method,
        final_loss=round(float(history[-1]["loss"] if history else output.training_loss), 4),
        validation_loss=round(float(evals[-1]), 4) if evals else None,
        runtime_s=round(runtime, 1), steps=int(output.global_step), trained_tokens=tokens,
        tokens_per_s=round(tokens / runtime, 1), peak_memory_gib=round(peak_memory_gib(), 2),
        trainable_parameters=int(trainable), total_parameters=int(total), target_modules=trained.target_modules,
        batch_size=batch_size, learning_rate=learning_rate, processes=processes,
        gradient_checkpointing=checkpointing, padding_free=packed,
        compiled=compiled,
        device=device().type, resumed_from_step=resume_from[1]["step"] if resume_from else None)
    return trained, result


def encode_split(tokenizer, rows: list[dict], task: Task) -> list[dict]:
    """Encode a split's rows as training examples: the loss on the label, or on the assistant's turns."""
    max_length = task.train.max_length
    if task.is_generation:
        return [encode_conversation(tokenizer, row["messages"], task.prompt.system, task.prompt.chat_template, max_length)
                for row in rows]
    check_room(tokenizer, task.prompt.template, task.prompt.answer_prefix, sorted({row["label"] for row in rows}),
               max_length, f"tasks.{task.name}.train.max_length")
    return [
        encode_example(tokenizer, render_prompt(task.prompt.template, row["text"]),
                       answer_ids(tokenizer, task.prompt.answer_prefix, row["label"]), max_length)
        for row in rows
    ]


def save_trained(trained: Trainable, tokenizer, dest: str | Path, run_info: dict) -> None:
    """Write the adapter (or the whole model), its tokenizer and what it was made with (params, hashes, versions),
    atomically."""
    with atomic_path(dest) as tmp:
        methods.save(trained, tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "run.json", run_info)
