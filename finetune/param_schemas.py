"""What `params.yaml` may hold: every key declared with its type, allowed range and description, section by section.

pydantic checks the whole file at once against `ParamsFile`; ranges live beside the fields they constrain, not in
the stages. The entries of `tasks` are `finetune.task_schemas`; the value types `finetune.param_types`. Reading and
checking the file is `finetune.params`; docs/reference/params.md is generated from these classes.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal, Union

from pydantic import Field, create_model, field_validator, model_validator

from finetune.param_types import (FORMATS, GGUF_TYPES, LORA_INITS, LR_SCALINGS, MERGE_INTO, METHODS, QUANT_TYPES,
                                  STRATEGIES, Count, Count0, Positive, Section, Share, Switch, Text)
from finetune.task_schemas import (ChatPromptParams, ClassificationTask, DataParams, GenerationTask,
                                   LabelEvaluateParams, LabelPromptParams, LabelTrainParams, SplitParams, Task,
                                   TaskEntry, TaskTrainParams, CardParams, GenerationEvaluateParams)

__all__ = ["FORMATS", "MERGE_INTO", "Count", "Count0", "Positive", "Section", "Share", "Text", "CardParams",
           "ChatPromptParams", "ClassificationTask", "DataParams", "GenerationEvaluateParams", "GenerationTask",
           "LabelEvaluateParams", "LabelPromptParams", "LabelTrainParams", "SplitParams", "Task", "TaskEntry",
           "TaskTrainParams"]


class BaseModelParams(Section):
    """Which pretrained model is fine-tuned: a local folder or a hub id at a revision."""

    name: Text
    """local HF folder under models/base/, or a hub id (tiiuae/falcon-7b)"""
    revision: Text
    """hub revision (a commit hash pins it); ignored for a local folder"""


class QuantizationParams(Section):
    """How the frozen base weights are stored in 4-bit, when train.method is qlora."""

    quant_type: QUANT_TYPES
    """nf4 (QLoRA's NormalFloat) or fp4"""
    double_quant: bool
    """also quantize the quantization constants (saves ~0.4 bit/param)"""


class LoraParams(Section):
    """The LoRA adapter's shape and PEFT's variants of it (train.method qlora or lora)."""

    r: Count
    """adapter rank"""
    alpha: Count
    """scaling numerator (scale = alpha / r)"""
    dropout: Share
    """dropout on the adapter input (0 skips it: one epoch over fresh data needs none, and it slows a CPU step)"""
    target_modules: Literal["all-linear"] | Annotated[list[Text], Field(min_length=1)]
    """'all-linear' or a list of layer names, e.g. [q_proj, v_proj]"""
    use_dora: bool
    """DoRA: learn each weight's magnitude apart from its direction (slower steps)"""
    use_rslora: bool
    """rsLoRA: scale by alpha / sqrt(r) instead of alpha / r (keeps large ranks learning)"""
    init: LORA_INITS
    """adapter start: default (A random, B zero), gaussian, pissa or olora (train.method lora: they rewrite the base
    weights), loftq (qlora: starts where it makes up for the 4-bit rounding)"""
    plus_lr_ratio: Annotated[float, Field(ge=0)]
    """LoRA+: B's learning rate is this many times A's (0 = off; the LoRA+ paper suggests 16)"""

    @field_validator("plus_lr_ratio")
    @classmethod
    def _off_or_a_ratio(cls, value: float) -> float:
        """`lora.plus_lr_ratio` is 0 (off) or at least 1."""
        if 0 < value < 1:
            raise ValueError("it is 0 (off) or the ratio of B's learning rate to A's, at least 1 (LoRA+ suggests 16)")
        return value


class TrainParams(Section):
    """The optimisation settings shared by every task (the task adds epochs, batch size, rate and length)."""

    method: METHODS
    """qlora (LoRA on the 4-bit base), lora (LoRA on the full-precision base) or full (every weight trained;
    models/adapter then holds a whole model)"""
    seed: Count0
    """seed of weight init, dropout and data order"""
    gradient_accumulation: Count
    """steps per optimizer update"""
    warmup_ratio: Share
    """share of steps spent warming up linearly"""
    weight_decay: Annotated[float, Field(ge=0)]
    """AdamW weight decay on the adapter"""
    gradient_checkpointing: Switch
    """true (the low-memory mode: checkpointing on, and a GPU grows a step to no more tokens than the task's batch at
    its max_length), false, or auto: on a GPU, on only when the step's activations would not fit in the memory the
    device has free (estimated from the model's config: finetune/train/memory.py); off on CPU, where it only costs
    time"""
    compile: Switch
    """torch.compile each decoder block: true, false, or auto: on for a model of 1B+ parameters on a GPU (faster steps
    once compiled); off on CPU and for small models, whose runs are too short to win the compile time back"""
    gpu_batch_tokens: Count0
    """on a GPU, grow the task's batch (never shrink it) to this many tokens at the longest training example: a step
    has a fixed cost, so short examples go in big batches (0 = off; measured in benchmarks/README.md)"""
    gpu_min_steps: Count
    """... but keep at least this many optimizer steps an epoch (a small split keeps the task's batch; chosen by
    validation loss, benchmarks/README.md)"""
    gpu_lr_scaling: LR_SCALINGS
    """when a GPU grows the batch k-fold, the task's learning rate times sqrt(k) (the square-root rule for Adam), or
    none"""
    logging_steps: Count
    """steps between loss points on the training curve"""
    checkpoint_minutes: Annotated[float, Field(ge=0)] | Literal["auto"]
    """minutes between checkpoints that a killed run resumes from (0 = none), or auto: as often as a checkpoint costs
    at most 2% of the time (each save is timed; not more often than every 10 s), at least every 10 minutes"""
    keep_checkpoint: bool
    """keep the last checkpoint after the stage finishes (false: removed, the adapter is the result)"""
    padding_free: Switch
    """TRL's padding-free batches (the batch's examples packed into one row, attention kept inside each) instead of
    padded ones: true, false, or auto: on a GPU when the longest training example is at least twice the mean (the
    batch then holds train.gpu_batch_tokens at the mean length); off on CPU, where it is slower"""


class DistributedParams(Section):
    """How many processes train and evaluate (one per GPU), and how training shares the model among them."""

    processes: Count
    """processes on each machine, one per GPU (1: a single process, as without accelerate; on CPU they share the
    cores)"""
    machines: Count
    """machines taking part; above 1, set FINETUNE_MAIN_ADDRESS and FINETUNE_MACHINE_RANK on each
    (docs/several-gpus.md)"""
    strategy: STRATEGIES
    """ddp: each process holds the whole model (it fits one GPU); fsdp: the weights are sharded across processes (full
    fine-tuning, or QLoRA of a model one GPU cannot hold; GPUs only). Settings in configs/accelerate/<strategy>.yaml"""


class EvaluateParams(Section):
    """How evaluation batches its work, for every task."""

    batch_size: Count | Literal["auto"]
    """prompts per forward pass, or auto: 64 on CPU, 512 on a GPU (where a pass costs about the same up to there)"""
    memory_gib: Positive
    """label scoring's working memory per batch: labels are scored in chunks that fit it, so any number of labels
    fits"""


class ExportParams(Section):
    """What the export stage makes from the adapter: a merged model and GGUF files."""

    enabled: bool
    """merge, convert and check everything (minutes on CPU): off so the CPU default stays quick to rerun; `dvc exp run
    -S export.enabled=true`"""
    merge_into: MERGE_INTO
    """base weights the adapter is merged into: dequantized (the 4-bit weights it trained against) or original (the
    base's own); both are measured in metrics/export.json"""
    gguf: list[GGUF_TYPES]
    """llama.cpp files converted from the merged model ([] = none)"""


class BaselineParams(Section):
    """The classic TF-IDF + logistic-regression baseline (classification tasks)."""

    ngram_max: Count
    """word n-grams up to this length"""
    char_ngrams: bool
    """add character 2-5-grams (robust to brand names and plurals)"""
    C: Positive
    """inverse regularisation strength of the logistic regression"""


class ReportParams(Section):
    """What the Markdown report shows."""

    samples: Count0
    """right and wrong predictions (or generated answers) shown in the report"""


# The entries of `tasks` by kind. A kind added as a module of finetune.kinds registers its own entry here.
TASK_CLASSES: dict[str, type[TaskEntry]] = {"classification": ClassificationTask, "generation": GenerationTask}


def register_task_entry(entry: type[TaskEntry]) -> None:
    """Let params.yaml hold tasks of the kind `entry` declares (its `kind` field is a one-value Literal)."""
    kind, = entry.model_fields["kind"].annotation.__args__
    TASK_CLASSES[kind] = entry
    params_file.cache_clear()


class ParamsFile(Section):
    """The whole of params.yaml (its `tasks` are typed by `params_file()`, from the registered kinds)."""

    task: Text
    """which entry of `tasks` runs: instacart, bigbasket, chitchat, persona_chat, guanaco or chatbot"""
    tasks: Annotated[dict[Text, TaskEntry], Field(min_length=1)]
    """the tasks, by name: each entry holds everything that depends on its data"""
    base_model: BaseModelParams
    """read by train_qlora, evaluate, report"""
    quantization: QuantizationParams
    """read by train_qlora, evaluate, when train.method is qlora"""
    lora: LoraParams
    """read by train_qlora"""
    train: TrainParams
    """read by train_qlora, for every task (each task sets epochs, batch size, rate and length)"""
    distributed: DistributedParams
    """read by train_qlora, evaluate: more than one process runs the stage under `accelerate launch`
    (docs/several-gpus.md)"""
    evaluate: EvaluateParams
    """read by evaluate, for every task"""
    export: ExportParams
    """read by export"""
    baseline: BaselineParams
    """read by evaluate (classification tasks)"""
    report: ReportParams
    """read by report"""

    @model_validator(mode="after")
    def _task_is_an_entry(self) -> ParamsFile:
        """`task` names an entry of `tasks`."""
        if self.task not in self.tasks:
            raise ValueError(f"task is {self.task!r}; choose one of the entries of tasks: {', '.join(self.tasks)}")
        return self

    @model_validator(mode="after")
    def _init_fits_the_method(self) -> ParamsFile:
        """`lora.init` pissa or olora needs `train.method: lora` (they rewrite the base weights); loftq needs qlora."""
        init, method = self.lora.init, self.train.method
        if init in ("pissa", "olora") and method != "lora":
            raise ValueError(f"lora.init is {init!r} with train.method {method!r}; {init} rewrites the base weights "
                             "with the adapter's starting point, which needs a full-precision base: "
                             "set train.method: lora (for a 4-bit base, lora.init: loftq)")
        if init == "loftq" and method != "qlora":
            raise ValueError(f"lora.init is 'loftq' with train.method {method!r}; LoftQ starts the adapter where it "
                             "makes up for the 4-bit rounding of the base, so it needs train.method: qlora")
        return self


@functools.cache
def params_file() -> type[ParamsFile]:
    """ParamsFile whose `tasks` entries are one of the registered kinds', chosen by their `kind`."""
    entries = tuple(TASK_CLASSES.values())
    entry = Annotated[Union[entries], Field(discriminator="kind")] if len(entries) > 1 else entries[0]
    return create_model("ParamsFile", __base__=ParamsFile,
                        tasks=(Annotated[dict[Text, entry], Field(min_length=1)], ...))


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in ParamsFile.model_fields.items() if name not in ("task", "tasks")
}
TASK_PARTS = ("data", "split", "prompt", "train", "evaluate", "card")  # the parts of every entry of `tasks`
