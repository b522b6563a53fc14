"""Training as plan -> build -> run: QLoRA, LoRA or full fine-tuning, DVCLive curves, checkpoints, guards. The plan is
finetune/train/plan.py; the trainer is TRL's SFTTrainer with the loss on the answers only (finetune/train/sft.py), or,
for a model with a classification head, the transformers Trainer (finetune/train/head.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import time
from pathlib import Path

import torch
from peft.helpers import disable_input_dtype_casting
from transformers import ProgressCallback, set_seed
from transformers.modeling_layers import GradientCheckpointingLayer

from finetune.errors import PipelineError
from finetune.files import atomic_path, write_json
from finetune.model import methods
from finetune.model.base_model import device, key_value_heads_repeated
from finetune.model.head import is_classifier
from finetune.model.methods import Trainable
from finetune.param_schemas import LoraParams, TaskTrainParams, TrainParams
from finetune.text.prompts import IGNORE_INDEX
from finetune.train import distributed, head, memory, sft
from finetune.train.batching import PackedAttention, any_length_attention, flash_over_examples
from finetune.train.checkpoints import CheckpointCallback
from finetune.train.plan import Device, ModelSize, StepPlan, plan_step


@dataclasses.dataclass
class TrainResult:
    """What training made, as `metrics/train.json` reports it: the same for the same params, data and machine."""

    method: str
    final_loss: float
    validation_loss: float | None
    steps: int
    trained_tokens: int
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


@dataclasses.dataclass
class TrainTimings:
    """How this run went on this machine: kept apart from the result, so that the same training gives the same
    artifacts whatever the wall clock said."""

    runtime_s: float
    tokens_per_s: float
    peak_memory_gib: float
    resumed_from_step: int | None  # a run that resumed a checkpoint: the step it started from


def parameter_count(model) -> int:
    """Parameters of a model, counting a 4-bit weight's packed pair as two."""
    return sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())


def model_size(model, method: str, lora_r: int) -> ModelSize:
    """The model's size as the step plan reads it (before the adapter is added)."""
    parameters = parameter_count(model)
    trainable = parameters if method == "full" else memory.lora_parameters(model, lora_r)
    return ModelSize(config=model.config, parameters=parameters, trainable=trainable)


def this_device() -> Device:
    """The device the step runs on, the processes sharing it, and on a GPU the memory it has free now."""
    on_gpu = torch.cuda.is_available()
    return Device(on_gpu=on_gpu, processes=distributed.world_size(),
                  free_bytes=memory.free_bytes(device()) if on_gpu else None)


def step_plan(model, train_set: list[dict], task_train: TaskTrainParams, params: TrainParams,
              lora: LoraParams) -> StepPlan:
    """The step plan for these examples, this model (before the adapter is added) and this device."""
    lengths = [len(ex["input_ids"]) for ex in train_set]
    # a head's examples have a label number, not answer tokens: its output is one row of label scores
    answers = max((sum(label != IGNORE_INDEX for label in ex.get("labels", ())) for ex in train_set), default=0)
    return plan_step(task_train, params, lengths, answers, model_size(model, params.method, lora.r), this_device(),
                     packable=not is_classifier(model))


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
    bf16 for the matmul: two copies a layer each way, for the same numbers, in a small model's GPU step
    that is bound by its kernel launches.
    """
    return disable_input_dtype_casting(model, active=autocast)


def peak_memory_gib() -> float:
    """Peak GPU memory allocated, or this process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def train_model(model, tokenizer, train_set: list[dict], validation_set: list[dict], task_train: TaskTrainParams,
                params: TrainParams, lora: LoraParams, work_dir: Path, callbacks: list,
                saving: CheckpointCallback | None = None, resume_from: tuple[Path, dict] | None = None,
                base_folder: str = "") -> tuple[Trainable, TrainResult, TrainTimings]:
    """Train by `params.method` on encoded examples: plan the step (printed), build the trainer, run it.

    Under accelerate launch every process calls this with the whole split: the Trainer gives each its share of
    every batch (DDP or FSDP, as launched), and the batch per update stays the params' (`per_process_batch`).
    `model` is the base as `methods.load_base(..., dense=False)` loads it. `callbacks` may hold
    functions that make a callback: they are called once the model is ready, so that a run refused
    before it starts (a layer the model lacks) creates no DVCLive folder. With `saving`, checkpoints go
    to `work_dir`; `resume_from` is one of them and its marker. `base_folder` is where LoftQ reads the
    original weights. A non-finite loss or gradient norm, or a SIGTERM, ends training with a PipelineError.
    """
    set_seed(params.seed)
    plan = step_plan(model, train_set, task_train, params, lora)
    if distributed.is_main():
        print(f"train_qlora: {plan.describe()}", flush=True)
    trained = methods.trainable(model, params.method, lora, plan.gradient_checkpointing, base_folder)
    if plan.compile and not compile_blocks(trained.model):
        raise PipelineError(f"train.compile: found no decoder blocks to compile in {type(trained.model).__name__}; "
                            "set train.compile: false")
    build = head.build_trainer if is_classifier(trained.model) else sft.build_trainer
    trainer = build(trained, tokenizer, train_set, validation_set, plan, params, lora, task_train.epochs, work_dir,
                    callbacks + ([saving] if saving else []))
    output, runtime = run_trainer(trainer, plan, saving, resume_from)
    if trainer.is_fsdp_enabled:  # every rank hands in its shards; rank 0 gets the whole state dict to save
        trained.state_dict = trainer.accelerator.get_state_dict(trainer.model)
    tokens = int(sum(len(ex["input_ids"]) for ex in train_set) * task_train.epochs)
    history = [h for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    result = TrainResult(
        method=params.method,
        final_loss=round(float(history[-1]["loss"] if history else output.training_loss), 4),
        validation_loss=round(float(evals[-1]), 4) if evals else None,
        steps=int(output.global_step), trained_tokens=tokens,
        trainable_parameters=sum(p.numel() for p in trained.model.parameters() if p.requires_grad),
        total_parameters=parameter_count(trained.model), target_modules=trained.target_modules,
        batch_size=plan.batch_per_process, learning_rate=plan.learning_rate, processes=plan.processes,
        gradient_checkpointing=plan.gradient_checkpointing, padding_free=plan.padding_free, compiled=plan.compile,
        device=device().type)
    timings = TrainTimings(runtime_s=round(runtime, 1), tokens_per_s=round(tokens / runtime, 1),
                           peak_memory_gib=round(peak_memory_gib(), 2),
                           resumed_from_step=resume_from[1]["step"] if resume_from else None)
    return trained, result, timings


def run_trainer(trainer, plan: StepPlan, saving: CheckpointCallback | None,
                resume_from: tuple[Path, dict] | None):
    """Run the built trainer under the attention and casting the plan needs; its output and the training seconds
    (a resumed run's earlier seconds included)."""
    model = trainer.model
    packed = (PackedAttention(model, flash_over_examples if torch.cuda.is_available() else None)
              if plan.padding_free else contextlib.nullcontext())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        with any_length_attention(), key_value_heads_repeated(model), lora_inputs_uncast(model, trainer.args.bf16), \
                packed:
            output = trainer.train(resume_from_checkpoint=str(resume_from[0]) if resume_from else None)
    finally:
        if saving:
            saving.release()
        for callback in trainer.callback_handler.callbacks:  # an error ends the bar first, so it is the last line
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.close()
    if saving and saving.stopped_by_signal is not None and trainer.state.global_step < trainer.state.max_steps:
        step = trainer.state.global_step
        raise PipelineError(f"stopped by SIGTERM at step {step} of {trainer.state.max_steps}; checkpoint-{step} is in "
                            f"{trainer.args.output_dir}: `dvc repro` resumes from it")
    return output, saving.elapsed_s() if saving else time.perf_counter() - start


def save_trained(trained: Trainable, tokenizer, dest: str | Path, run_info: dict) -> None:
    """Write the adapter (or the whole model), its tokenizer and what it was made with (params, hashes, versions),
    atomically."""
    with atomic_path(dest) as tmp:
        methods.save(trained, tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "run.json", run_info)
