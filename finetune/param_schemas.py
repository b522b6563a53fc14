"""What `params.yaml` may hold: every key declared with its type and allowed range, section by section.

pydantic checks the whole file at once against `ParamsFile`; ranges live beside the fields they constrain, not in
the stages. Reading and checking the file is `finetune.params`.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

# The allowed values of the closed choices: the one place they are declared (typing.get_args lists them).
FORMATS = Literal["table", "chitchat", "persona_chat", "guanaco", "messages", "sharegpt", "alpaca", "prompt_completion",
                  "auto"]  # finetune.data.formats: a module each (auto: one of the conversation formats, detected)
ROLES = Literal["system", "user", "assistant"]
CHAT_TEMPLATES = Literal["auto", "plain"]
LABEL_METHODS = Literal["label_scoring", "generation"]
OBJECTIVES = Literal["label_scoring", "head"]  # finetune/kinds/classification: a module each
QUANT_TYPES = Literal["nf4", "fp4"]
MERGE_INTO = Literal["dequantized", "original"]
GGUF_TYPES = Literal["f32", "f16", "bf16", "q8_0"]  # llama.cpp converter's --outtype choices that need no build
METHODS = Literal["qlora", "lora", "full"]
LORA_INITS = Literal["default", "gaussian", "pissa", "olora", "loftq"]
STRATEGIES = Literal["ddp", "fsdp"]
LR_SCALINGS = Literal["sqrt", "none"]

Count = Annotated[int, Field(ge=1)]             # 1, 2, ...
Count0 = Annotated[int, Field(ge=0)]            # 0, 1, ...
Positive = Annotated[float, Field(gt=0)]        # any number above 0
Share = Annotated[float, Field(ge=0, lt=1)]     # a fraction: 0 <= x < 1
Text = Annotated[str, Field(min_length=1)]      # a non-empty string
Switch = bool | Literal["auto"]


class Section(BaseModel):
    """A part of params.yaml: no unknown key, no missing key, no value of the wrong type (no '8' for 8)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DataParams(Section):
    """Where a task's examples come from and which fields are what the model reads and writes."""

    source: Text
    format: FORMATS
    input_field: str
    target_field: str
    drop_labels: list[str]
    turns: Count0
    encoding: Text
    keys: dict[Text, Text]
    roles: dict[Text, ROLES]

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("it is not an encoding Python knows; use e.g. utf-8, cp1252 or latin-1") from None
        return value


class SplitParams(Section):
    """How examples are divided into train / validation / test."""

    seed: Count0
    validation_fraction: Share
    test_fraction: Annotated[float, Field(gt=0, lt=1)]
    max_train: Count | Literal["all"]
    max_validation: Count | Literal["all"]
    max_test: Count | Literal["all"]

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitParams:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(f"validation_fraction + test_fraction is {self.validation_fraction + self.test_fraction:g}; "
                             "it must be < 1 to leave examples to train on")
        return self


class LabelPromptParams(Section):
    """Classification: how an example becomes a prompt and its label an answer."""

    template: str
    answer_prefix: str

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("it must contain {text}, where the example's text goes")
        return value


class ChatPromptParams(Section):
    """Generation: how a conversation becomes tokens."""

    system: str
    chat_template: CHAT_TEMPLATES


class TaskTrainParams(Section):
    """The training settings that depend on the task's data: how long, how fast, how many tokens."""

    epochs: Positive
    batch_size: Count
    learning_rate: Positive
    max_length: Annotated[int, Field(ge=2)]


class LabelTrainParams(TaskTrainParams):
    """Classification's training settings: the task's, and what the model learns to do with a text."""

    objective: OBJECTIVES


class LabelEvaluateParams(Section):
    """Classification: how the test split is labelled."""

    method: LABEL_METHODS
    max_new_tokens: Count


class GenerationEvaluateParams(Section):
    """Generation: how long answers may be, and the probe prompts both models answer in the report."""

    max_new_tokens: Count
    no_repeat_ngram_size: Count0
    probes: list[Text]


class CardParams(Section):
    """What the model cards say of the task: what its data is, an input to try, and what to warn a user of."""

    description: str
    example: Text
    limits: list[Text]


class TaskEntry(Section):
    """The parts of an entry of `tasks` that every kind has; a kind adds its `kind`, `prompt` and `evaluate`."""

    data: DataParams
    split: SplitParams
    train: TaskTrainParams
    card: CardParams


class ClassificationTask(TaskEntry):
    kind: Literal["classification"]
    prompt: LabelPromptParams
    train: LabelTrainParams
    evaluate: LabelEvaluateParams

    @model_validator(mode="after")
    def _reads_a_table(self) -> ClassificationTask:
        if self.data.format != "table":
            raise ValueError(f"data.format is '{self.data.format}'; a classification task reads a table "
                             "(one text and one label per row)")
        if self.data.keys or self.data.roles:
            raise ValueError("data.keys and data.roles rename the keys and roles of conversation files; a "
                             "classification task reads a table: leave them {}")
        return self


class GenerationTask(TaskEntry):
    kind: Literal["generation"]
    prompt: ChatPromptParams
    evaluate: GenerationEvaluateParams


@dataclasses.dataclass(frozen=True)
class Task:
    """One entry of `tasks`, the one `task` names: everything that depends on the data. `kind` names its kind
    (finetune.kinds), whose own params `prompt` and `evaluate` are."""

    name: str
    kind: str
    data: DataParams
    split: SplitParams
    prompt: Section
    train: TaskTrainParams
    evaluate: Section
    card: CardParams


class BaseModelParams(Section):
    """Which pretrained model is fine-tuned: a local folder or a hub id at a revision."""

    name: Text
    revision: Text


class QuantizationParams(Section):
    """How the frozen base weights are stored in 4-bit, when train.method is qlora."""

    quant_type: QUANT_TYPES
    double_quant: bool


class LoraParams(Section):
    """The LoRA adapter's shape and PEFT's variants of it (train.method qlora or lora)."""

    r: Count
    alpha: Count
    dropout: Share
    target_modules: Literal["all-linear"] | Annotated[list[Text], Field(min_length=1)]
    use_dora: bool
    use_rslora: bool
    init: LORA_INITS
    plus_lr_ratio: Annotated[float, Field(ge=0)]

    @field_validator("plus_lr_ratio")
    @classmethod
    def _off_or_a_ratio(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("it is 0 (off) or the ratio of B's learning rate to A's, at least 1 (LoRA+ suggests 16)")
        return value


class TrainParams(Section):
    """The optimisation settings shared by every task (the task adds epochs, batch size, rate and length)."""

    method: METHODS
    seed: Count0
    gradient_accumulation: Count
    warmup_ratio: Share
    weight_decay: Annotated[float, Field(ge=0)]
    gradient_checkpointing: Switch
    compile: Switch
    gpu_batch_tokens: Count0
    gpu_min_steps: Count
    gpu_lr_scaling: LR_SCALINGS
    logging_steps: Count
    checkpoint_minutes: Annotated[float, Field(ge=0)] | Literal["auto"]
    keep_checkpoint: bool
    padding_free: Switch


class DistributedParams(Section):
    """How many processes train and evaluate (one per GPU), and how training shares the model among them."""

    processes: Count
    machines: Count
    strategy: STRATEGIES


class EvaluateParams(Section):
    """How evaluation batches its work, for every task."""

    batch_size: Count | Literal["auto"]
    memory_gib: Positive


class ExportParams(Section):
    """What the export stage makes from the adapter: a merged model and GGUF files."""

    enabled: bool
    merge_into: MERGE_INTO
    gguf: list[GGUF_TYPES]


class BaselineParams(Section):
    """The classic TF-IDF + logistic-regression baseline (classification tasks)."""

    ngram_max: Count
    char_ngrams: bool
    C: Positive


class ReportParams(Section):
    """What the Markdown report shows."""

    samples: Count0


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
    tasks: Annotated[dict[Text, TaskEntry], Field(min_length=1)]
    base_model: BaseModelParams
    quantization: QuantizationParams
    lora: LoraParams
    train: TrainParams
    distributed: DistributedParams
    evaluate: EvaluateParams
    export: ExportParams
    baseline: BaselineParams
    report: ReportParams

    @model_validator(mode="after")
    def _task_is_an_entry(self) -> ParamsFile:
        if self.task not in self.tasks:
            raise ValueError(f"task is {self.task!r}; choose one of the entries of tasks: {', '.join(self.tasks)}")
        return self

    @model_validator(mode="after")
    def _init_fits_the_method(self) -> ParamsFile:
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
