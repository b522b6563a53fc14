"""The plan of a training step, decided before the first one: batch, learning rate, packing, checkpointing, compiling.

Plain data from the params, the examples' lengths, the model's size and the device: it needs no model to be
tested, and the stage prints it before training starts. The trainer is built from it (finetune/train/sft.py).
"""

from __future__ import annotations

import dataclasses
import math

from finetune.errors import PipelineError
from finetune.param_schemas import TaskTrainParams, TrainParams
from finetune.train import distributed
from finetune.train.memory import StepMemory, activation_bytes, optimizer_bytes

LARGE_MODEL = 1_000_000_000  # parameters from which compiling the decoder blocks pays on a GPU
PACKING_PAYS = 2.0  # longest example over the mean length from which padding-free batches pay on a GPU


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """What the plan needs of the model: its config (for the activations' size) and its parameter counts."""

    config: object
    parameters: int   # a 4-bit weight's packed pair counted as two
    trainable: int    # what the optimizer holds: every weight (full fine-tuning) or LoRA's, at most


@dataclasses.dataclass(frozen=True)
class Device:
    """Where the step runs: a GPU or the CPU, how many processes share a batch, the GPU memory free for the step."""

    on_gpu: bool
    processes: int = 1
    free_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How every step of a run trains."""

    batch: int                     # examples per optimizer update, all processes together
    batch_per_process: int         # examples a process takes per step
    accumulation: int              # steps per optimizer update
    processes: int
    learning_rate: float           # the peak of the schedule
    padding_free: bool             # the examples of a batch packed into one row
    gradient_checkpointing: bool
    compile: bool
    task_batch: int                # the task's own batch and rate, which a GPU may have grown and scaled
    task_learning_rate: float
    memory: StepMemory | None      # on a GPU: what a step needs and what is free

    def describe(self) -> str:
        """The plan in one line, as the stage prints it."""
        batch = f"{self.batch} examples an update"
        if self.batch != self.task_batch:
            batch += f" (grown from the task's {self.task_batch} on the GPU)"
        if self.processes > 1 or self.accumulation > 1:
            batch += f": {self.processes} processes x {self.batch_per_process} x {self.accumulation} steps"
        rate = f"learning rate {self.learning_rate:.3g}"
        if self.learning_rate != self.task_learning_rate:
            rate += f" (the task's {self.task_learning_rate:g}, scaled by train.gpu_lr_scaling)"
        checkpointing = "activation checkpointing " + ("on" if self.gradient_checkpointing else "off")
        if self.memory is not None:
            checkpointing += f" ({self.memory.describe()})"
        parts = [batch, rate, "padding-free rows" if self.padding_free else "padded batches", checkpointing,
                 "decoder blocks compiled" if self.compile else "not compiled"]
        return "plan: " + "; ".join(parts)


def plan_step(task_train: TaskTrainParams, params: TrainParams, lengths: list[int], answer_tokens: int,
              model: ModelSize, device: Device, packable: bool = True) -> StepPlan:
    """The step plan for examples of `lengths` tokens (`answer_tokens`: the most any one trains on). Not `packable`:
    the model reads each row's last token (a classification head), so a batch's examples cannot share a row."""
    if not packable and params.padding_free is True:
        raise PipelineError("train.padding_free is true, which packs a batch's examples into one row; a classification "
                            "head reads each row's last token, so its examples cannot share one: set train.padding_free "
                            "to auto or false")
    padding_free = packable and wants_padding_free(params.padding_free, lengths, device.on_gpu, params.gpu_batch_tokens)
    batch = device_batch_size(task_train, params, lengths, device.on_gpu, packed=padding_free)
    if batch > task_train.batch_size:  # grown on a GPU: to a batch the processes share evenly
        batch = max(task_train.batch_size, batch - batch % device.processes)
    per_process, accumulation = distributed.per_process_batch(batch, params.gradient_accumulation, device.processes)
    memory = None
    if device.on_gpu and device.free_bytes is not None:  # one process's step: a packed row, or a batch of the longest
        mean = sum(lengths) / max(1, len(lengths))
        tokens = int(per_process * mean * 1.25) if padding_free else per_process * max(lengths, default=0)
        logits = tokens if padding_free else per_process * answer_tokens
        memory = StepMemory(activations=activation_bytes(model.config, tokens, logits),
                            optimizer=optimizer_bytes(model.trainable), free=device.free_bytes)
    return StepPlan(
        batch=batch, batch_per_process=per_process, accumulation=accumulation, processes=device.processes,
        learning_rate=scaled_learning_rate(task_train.learning_rate, batch, task_train.batch_size,
                                           params.gpu_lr_scaling),
        padding_free=padding_free, gradient_checkpointing=wants_checkpointing(params.gradient_checkpointing, memory),
        compile=wants_compile(params.compile, model.parameters, device.on_gpu),
        task_batch=task_train.batch_size, task_learning_rate=task_train.learning_rate, memory=memory)


def _switch(setting: bool | str, auto) -> bool:
    """A true / false / auto param's value: `auto()` decides for `auto`."""
    return bool(auto()) if setting == "auto" else setting


def wants_padding_free(setting: bool | str, lengths: list[int], on_gpu: bool, batch_tokens: int) -> bool:
    """`auto` packs a batch's examples into one row (TRL's padding-free batches) on a GPU, when the examples are short
    beside the longest: a batch padded to its longest example holds `batch_tokens` / longest examples, a packed one
    `batch_tokens` / mean, so from a longest example twice the mean a step holds twice the examples or more.

    Off on CPU, where one packed row trains slower than a padded batch, and for examples of one length, where there
    is no padding to save and attention over the packed row costs more.
    """
    return _switch(setting, lambda: on_gpu and batch_tokens > 0 and lengths
                   and max(lengths) >= PACKING_PAYS * sum(lengths) / len(lengths))


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

    The task's rate is tuned for its own batch; a GPU's grown batch takes fewer steps, each with a
    less noisy gradient. Adam's square-root scaling rule (Malladi et al., 2022) keeps the training
    dynamics (benchmarks/README.md measures it on the full Instacart split). `none` keeps the rate.
    """
    if scaling == "none" or batch <= task_batch:
        return learning_rate
    return learning_rate * math.sqrt(batch / task_batch)


def wants_checkpointing(setting: bool | str, needs: StepMemory | None) -> bool:
    """`auto` recomputes activations only on a GPU whose free memory would not hold them (`needs`; None on CPU).

    Recomputing costs about a third of each step's matmuls. On CPU memory is plentiful and
    recomputation only costs time; on a GPU the step's activations are estimated from the model's
    config and compared with what the device has free (finetune/train/memory.py). `true` is the
    low-memory mode.
    """
    return _switch(setting, lambda: needs is not None and not needs.fits_without_checkpointing())


def wants_compile(setting: bool | str, n_parameters: int, on_gpu: bool) -> bool:
    """`auto` compiles the decoder blocks only for a 1B+ model on a GPU, where the minute or two of compiling pays
    back many times over a run (benchmarks/README.md); on CPU, and for a small model, it is not won back."""
    return _switch(setting, lambda: on_gpu and n_parameters >= LARGE_MODEL)
