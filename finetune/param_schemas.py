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

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, use_attribute_docstrings=True)


class DataParams(Section):
    """Where a task's examples come from and which fields are what the model reads and writes."""

    source: Text
    """instacart or chitchat (embedded), a .csv/.tsv/.jsonl/.json/.parquet file under data/raw/, or hub:<id>"""
    format: FORMATS
    """table (a row is an example); messages, sharegpt, alpaca, prompt_completion or auto (conversation files);
    chitchat, persona_chat, guanaco (docs/data-formats.md)"""
    input_field: str
    """column the model reads (table: the text or prompt; guanaco: the conversation; persona_chat: the history;
    conversation formats: '' = the format's own name)"""
    target_field: str
    """column it learns to write (table: the label or response; persona_chat: the reply; '' if none)"""
    drop_labels: list[str]
    """rows whose target is one of these are dropped (instacart's 'missing' department)"""
    turns: Count0
    """dialogue formats: the most recent turns kept per example, the last being the response (0 = all)"""
    encoding: Text
    """text encoding of a data/raw file (e.g. cp1252, latin-1); a file that does not decode is refused with the likely
    one"""
    keys: dict[Text, Text]
    """conversation formats: other names of the keys the format reads, e.g. {role: from, content: value}
    (docs/data-formats.md)"""
    roles: dict[Text, ROLES]
    """conversation formats: the file's role names -> user, assistant or system, e.g. {human: user, bot: assistant}"""

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        """`data.encoding` is an encoding Python knows."""
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("it is not an encoding Python knows; use e.g. utf-8, cp1252 or latin-1") from None
        return value


class SplitParams(Section):
    """How examples are divided into train / validation / test."""

    seed: Count0
    """seed of the (stratified) shuffle"""
    validation_fraction: Share
    """share of examples held out for validation loss"""
    test_fraction: Annotated[float, Field(gt=0, lt=1)]
    """share of examples held out for the final test"""
    max_train: Count | Literal["all"]
    """cap on training examples (classification: a stratified sample), or 'all'"""
    max_validation: Count | Literal["all"]
    """cap on validation examples, or 'all'"""
    max_test: Count | Literal["all"]
    """cap on test examples, or 'all'"""

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitParams:
        """validation_fraction + test_fraction is below 1, so that examples are left to train on."""
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(f"validation_fraction + test_fraction is {self.validation_fraction + self.test_fraction:g}; "
                             "it must be < 1 to leave examples to train on")
        return self


class LabelPromptParams(Section):
    """Classification: how an example becomes a prompt and its label an answer."""

    template: str
    """classification prompt; {text} is replaced by the example's text"""
    answer_prefix: str
    """put between the prompt and the label (one space suits BPE tokenizers)"""

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        """A classification `prompt.template` holds `{text}`, where the example's text goes."""
        if "{text}" not in value:
            raise ValueError("it must contain {text}, where the example's text goes")
        return value


class ChatPromptParams(Section):
    """Generation: how a conversation becomes tokens."""

    system: str
    """system message ('' = none, or the chat template's default: SmolLM2 names itself)"""
    chat_template: CHAT_TEMPLATES
    """auto: the tokenizer's chat template if it has one, else the plain format; plain: always plain"""


class TaskTrainParams(Section):
    """The training settings that depend on the task's data: how long, how fast, how many tokens."""

    epochs: Positive
    """passes over the training split (fractions allowed)"""
    batch_size: Count
    """examples per device step (a GPU may grow it: train.gpu_batch_tokens)"""
    learning_rate: Positive
    """peak learning rate of the cosine schedule"""
    max_length: Annotated[int, Field(ge=2)]
    """longest example in tokens; longer ones lose the start of their prompt"""


class LabelTrainParams(TaskTrainParams):
    """Classification's training settings: the task's, and what the model learns to do with a text."""

    objective: OBJECTIVES
    """label_scoring (the model learns to write the label; every label is scored by its likelihood) or head (a
    classification head on the last token: one forward pass a text, whatever the number of labels)"""


class LabelEvaluateParams(Section):
    """Classification: how the test split is labelled."""

    method: LABEL_METHODS
    """how the base model (and the fine-tuned one, by objective label_scoring) labels the test split: label_scoring
    (log-likelihood of each label) or generation (greedy + exact match, as hand-written notebooks classify)"""
    max_new_tokens: Count
    """answer length limit for method=generation"""


class GenerationEvaluateParams(Section):
    """Generation: how long answers may be, and the probe prompts both models answer in the report."""

    max_new_tokens: Count
    """longest generated answer, in tokens (generation stops at the end-of-turn token)"""
    no_repeat_ngram_size: Count0
    """greedy decoding may not repeat any run of this many tokens (0 = off; small models loop)"""
    probes: list[Text]
    """prompts both models answer in the report, beside the test metrics"""


class CardParams(Section):
    """What the model cards say of the task: what its data is, an input to try, and what to warn a user of."""

    description: str
    """the data, in a phrase"""
    example: Text
    """an input the cards' code and commands use"""
    limits: list[Text]
    """warnings for users beyond the kind's own (e.g. what the model is no substitute for)"""


class TaskEntry(Section):
    """The parts of an entry of `tasks` that every kind has; a kind adds its `kind`, `prompt` and `evaluate`."""

    data: DataParams
    """where the examples come from and which fields the model reads and writes (read by prepare)"""
    split: SplitParams
    """how the examples are divided into train, validation and test (read by split)"""
    train: TaskTrainParams
    """the task's training settings (read by train_qlora, with the shared `train` section)"""
    card: CardParams
    """what the model cards say of the task (read by export)"""


class ClassificationTask(TaskEntry):
    kind: Literal["classification"]
    """classification: a text in, one label of a closed set out (accuracy, F1, confusion matrices)"""
    prompt: LabelPromptParams
    """how an example becomes a prompt and its label an answer (read by train_qlora, evaluate)"""
    train: LabelTrainParams
    """the task's training settings, and what the model learns (`objective`)"""
    evaluate: LabelEvaluateParams
    """how the test split is labelled (read by evaluate)"""

    @model_validator(mode="after")
    def _reads_a_table(self) -> ClassificationTask:
        """A classification task reads `data.format: table`, and leaves `data.keys` and `data.roles` empty."""
        if self.data.format != "table":
            raise ValueError(f"data.format is '{self.data.format}'; a classification task reads a table "
                             "(one text and one label per row)")
        if self.data.keys or self.data.roles:
            raise ValueError("data.keys and data.roles rename the keys and roles of conversation files; a "
                             "classification task reads a table: leave them {}")
        return self


class GenerationTask(TaskEntry):
    kind: Literal["generation"]
    """generation: a conversation in, the next turn out (BLEU, ROUGE-L, perplexity)"""
    prompt: ChatPromptParams
    """how a conversation becomes tokens (read by train_qlora, evaluate)"""
    evaluate: GenerationEvaluateParams
    """how long answers may be, and the probe prompts (read by evaluate)"""


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
