"""What an entry of `tasks` may hold: the parts every kind has (data, split, train, card) and each kind's own
(prompt, evaluate), every key with its type, range, default and description.

A key with a default may be left out of an entry; each part must be there (`split: {}` takes every default), since
each stage declares the parts it reads in dvc.yaml. `finetune.param_schemas` puts the entries in the whole file.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from finetune.param_types import (CHAT_TEMPLATES, FORMATS, LABEL_METHODS, OBJECTIVES, ROLES, Count, Count0, Positive,
                                  Section, Share, Text)


class DataParams(Section):
    """Where a task's examples come from and which fields are what the model reads and writes."""

    source: Text
    """instacart or chitchat (embedded), a .csv/.tsv/.jsonl/.json/.parquet file under data/raw/, or hub:<id>"""
    format: FORMATS = "table"
    """table (a row is an example); messages, sharegpt, alpaca, prompt_completion or auto (conversation files);
    chitchat, persona_chat, guanaco (docs/data-formats.md)"""
    input_field: str = ""
    """column the model reads (table: the text or prompt; guanaco: the conversation; persona_chat: the history;
    conversation formats: '' = the format's own name)"""
    target_field: str = ""
    """column it learns to write (table: the label or response; persona_chat: the reply; '' if none)"""
    drop_labels: list[str] = []
    """rows whose target is one of these are dropped (instacart's 'missing' department)"""
    turns: Count0 = 0
    """dialogue formats: the most recent turns kept per example, the last being the response (0 = all)"""
    encoding: Text = "utf-8"
    """text encoding of a data/raw file (e.g. cp1252, latin-1); a file that does not decode is refused with the likely
    one"""
    keys: dict[Text, Text] = {}
    """conversation formats: other names of the keys the format reads, e.g. {role: from, content: value}
    (docs/data-formats.md)"""
    roles: dict[Text, ROLES] = {}
    """conversation formats: the file's role names -> user, assistant or system, e.g. {human: user, bot: assistant}"""

    @model_validator(mode="after")
    def _table_names_its_column(self) -> DataParams:
        """A table (`data.format: table`) names the column the model reads: `data.input_field`."""
        if self.format == "table" and not self.input_field:
            raise ValueError("a table names the column the model reads: set data.input_field")
        return self

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

    seed: Count0 = 42
    """seed of the (stratified) shuffle"""
    validation_fraction: Share = 0.1
    """share of examples held out for validation loss"""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """share of examples held out for the final test"""
    max_train: Count | Literal["all"] = "all"
    """cap on training examples (classification: a stratified sample), or 'all'"""
    max_validation: Count | Literal["all"] = "all"
    """cap on validation examples, or 'all'"""
    max_test: Count | Literal["all"] = "all"
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
    answer_prefix: str = " "
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

    system: str = ""
    """system message ('' = none, or the chat template's default: SmolLM2 names itself)"""
    chat_template: CHAT_TEMPLATES = "auto"
    """auto: the tokenizer's chat template if it has one, else the plain format; plain: always plain"""


class TaskTrainParams(Section):
    """The training settings that depend on the task's data: how long, how fast, how many tokens."""

    epochs: Positive = 1.0
    """passes over the training split (fractions allowed)"""
    batch_size: Count = 8
    """examples per device step (a GPU may grow it: train.gpu_batch_tokens)"""
    learning_rate: Positive = 0.0002
    """peak learning rate of the cosine schedule"""
    max_length: Annotated[int, Field(ge=2)] = 512
    """longest example in tokens; longer ones lose the start of their prompt"""


class LabelTrainParams(TaskTrainParams):
    """Classification's training settings: the task's, and what the model learns to do with a text."""

    objective: OBJECTIVES = "label_scoring"
    """label_scoring (the model learns to write the label; every label is scored by its likelihood) or head (a
    classification head on the last token: one forward pass a text, whatever the number of labels)"""


class LabelEvaluateParams(Section):
    """Classification: how the test split is labelled."""

    method: LABEL_METHODS = "label_scoring"
    """how the base model (and the fine-tuned one, by objective label_scoring) labels the test split: label_scoring
    (log-likelihood of each label) or generation (greedy + exact match, as hand-written notebooks classify)"""
    max_new_tokens: Count = 16
    """answer length limit for method=generation"""


class GenerationEvaluateParams(Section):
    """Generation: how long answers may be, and the probe prompts both models answer in the report."""

    max_new_tokens: Count = 128
    """longest generated answer, in tokens (generation stops at the end-of-turn token)"""
    no_repeat_ngram_size: Count0 = 4
    """greedy decoding may not repeat any run of this many tokens (0 = off; small models loop)"""
    probes: list[Text] = []
    """prompts both models answer in the report, beside the test metrics"""


class CardParams(Section):
    """What the model cards say of the task: what its data is, an input to try, and what to warn a user of."""

    description: str = ""
    """the data, in a phrase"""
    example: Text
    """an input the cards' code and commands use"""
    limits: list[Text] = []
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
        if not self.data.target_field:
            raise ValueError("a classification task names the column of its labels: set data.target_field")
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

    @model_validator(mode="after")
    def _table_names_its_answers(self) -> GenerationTask:
        """A generation task reading a table names the column of its answers: `data.target_field`."""
        if self.data.format == "table" and not self.data.target_field:
            raise ValueError("a generation task reading a table names the column of its answers (one prompt and one "
                             "response per row): set data.target_field")
        return self


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
