"""Kinds of task: what a kind does at each stage and command, one module each, chosen by `tasks.<task>.kind`.

A stage or a command asks the task's kind (`kinds.of(task)`, or `kinds.get(run.json's kind)`); it never tests which
kind it is. Adding a kind is adding a module named after it to this package: a `TaskKind` subclass, passed to
`register`, with its params entry (a `param_schemas.TaskEntry` subclass). A kind's module is imported when the kind
is first asked for. The model-side libraries a kind uses to evaluate and predict are imported where they are used,
so that the stages that only read data (prepare, split) start without them.
"""

from __future__ import annotations

import importlib
import pkgutil

import pandas as pd

from finetune import param_schemas
from finetune.errors import PipelineError
from finetune.param_schemas import Section, Task


class TaskKind:
    """What a kind of task does. Each method is one stage's or command's kind-specific part."""

    name: str                                   # tasks.<task>.kind
    entry: type[param_schemas.TaskEntry]        # its params entry (prompt and evaluate parts)
    hub_tag: str                                # the Hub's task tag on its model cards
    models: tuple[str, ...]                     # the rows of metrics/eval.json
    metrics: tuple[tuple[str, str], ...]        # (key, name): the metrics of each row, as tables name them
    metrics_note: str                           # what the metrics mean, under their table
    predict_fields: tuple[str, ...]             # what `finetune predict` writes for each row
    can_chat: bool = False                      # `finetune chat` talks with its models

    @property
    def prompt_params(self) -> type[Section]:
        """How run.json's task.prompt reads back."""
        return self.entry.model_fields["prompt"].annotation

    # prepare
    def examples(self, table: pd.DataFrame, origin: str, data: param_schemas.DataParams) -> tuple[pd.DataFrame, dict]:
        """The source table as validated examples, and the counts of what was dropped or changed."""
        raise NotImplementedError

    def class_counts(self, examples: pd.DataFrame) -> dict[str, int]:
        """Examples per class, for the prepare stage's bar plot (none for a kind without classes)."""
        return {}

    # split
    def split(self, examples: pd.DataFrame, split: param_schemas.SplitParams,
              caps: dict[str, int | None]) -> tuple[dict[str, pd.DataFrame], dict]:
        """Train, validation and test examples; and what the split sizes file records beyond the sizes."""
        raise NotImplementedError

    # train_qlora
    def encode(self, tokenizer, rows: list[dict], task: Task, labels: list[str] | None = None) -> list[dict]:
        """A split's rows as training examples (`labels`: the run's, from the training split; None: the rows')."""
        raise NotImplementedError

    def labels(self, train_rows: list[dict]) -> list[str] | None:
        """The answers the model may give (run.json's `labels`), or None for free text."""
        return None

    def model_head(self, task: dict, labels: list[str] | None, tokenizer) -> dict | None:
        """The config of the classification head the model is trained with, for a task as run.json records it
        (finetune.model.head); None: the model writes its answers, with its own LM head."""
        return None

    # evaluate
    def evaluate(self, trained_folder, load_base, tokenizer, train_rows: list[dict], test_rows: list[dict], task: Task,
                 batch_size: int, evaluate: param_schemas.EvaluateParams, baseline: param_schemas.BaselineParams,
                 clock: dict | None = None) -> tuple[dict, dict, pd.DataFrame]:
        """{model: metrics} of every model, the details file, and one prediction row per test example; `clock`, if
        given, gets each model's seconds (its loading included), which vary from run to run and so stay out of the
        results."""
        raise NotImplementedError

    def confusion_rows(self, predictions: pd.DataFrame) -> pd.DataFrame:
        """Actual against predicted per model, the data of the confusion plots (no rows for a kind without classes)."""
        return pd.DataFrame(columns=["actual", "base", "finetuned"])

    # export, predict
    def test_answers(self, run, model, tokenizer, test_rows: list[dict], batch_size: int, memory_gib: float,
                     task: Task) -> tuple[list[str], dict]:
        """A model's answers to the test split (as evaluate's predictions.csv has them) and their quality."""
        raise NotImplementedError

    def predict(self, run, model, tokenizer, texts: list[str], options: dict, on_batch) -> list[dict]:
        """The `predict_fields` of each text, with the settings the trained run recorded."""
        raise NotImplementedError

    # report
    def report_sections(self, evaluation: dict, details: dict, predictions: pd.DataFrame, names: dict[str, str],
                        image_dir, samples: int) -> list[str]:
        """The report's results: Markdown lines (images written into `image_dir`)."""
        raise NotImplementedError

    def review_sections(self, base: str, old: dict, new: dict, images, link: str) -> list[str]:
        """The pull-request report's kind-specific part, from each revision's predictions and details
        (`old`/`new`: {"predictions": DataFrame or None, "details": dict})."""
        return []

    # model cards
    def card_job(self, run_info: dict) -> str:
        """What the model was trained to do, after "trained with ... to"."""
        raise NotImplementedError

    def card_what_it_does(self, run_info: dict) -> list[str]:
        raise NotImplementedError

    def card_auto_class(self, run_info: dict) -> str:
        """The transformers class that loads the trained model, as the model cards write it."""
        return "AutoModelForCausalLM"

    def card_head_arguments(self, run_info: dict) -> tuple[list[str], str] | None:
        """For an adapter trained with a classification head: the lines that set up its labels, and the arguments
        that give the base its head when it loads; None without a head."""
        return None

    def card_code(self, run_info: dict, example: str) -> list[str]:
        """Python lines that use the loaded `model` and `tokenizer` on `example`, as evaluate did."""
        raise NotImplementedError

    def card_gguf_command(self, run_info: dict, example: str) -> str:
        """A llama.cpp command line for the GGUF file (MODEL.gguf)."""
        raise NotImplementedError

    def card_limits(self, run_info: dict) -> list[str]:
        """The kind's own warnings (the task's come from its params' card.limits)."""
        return []


_KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    """Make `kind` the one its name and params entry ask for."""
    _KINDS[kind.name] = kind
    param_schemas.register_task_entry(kind.entry)
    return kind


def get(name: str) -> TaskKind:
    """The kind of that name (run.json's task.kind, or params'), its module imported if it was not yet."""
    if name not in _KINDS and name in {m.name for m in pkgutil.iter_modules(__path__)}:
        importlib.import_module(f"{__name__}.{name}")
    if name not in _KINDS:
        known = sorted({m.name for m in pkgutil.iter_modules(__path__)} | set(_KINDS))
        raise PipelineError(f"no kind of task is named {name!r}; the kinds are {', '.join(known)}")
    return _KINDS[name]


def of(task: Task) -> TaskKind:
    """The kind of a task of params.yaml."""
    return get(task.kind)
