"""Typed, strict access to `params.yaml`: every key is declared here, and nothing else is accepted."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from finetune.errors import PipelineError

T = TypeVar("T")


KINDS = ("classification", "generation")


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where a task's examples come from and which fields are what the model reads and writes."""

    source: str
    format: str
    input_field: str
    target_field: str
    drop_labels: list[str]
    turns: int


@dataclasses.dataclass(frozen=True)
class SplitParams:
    """How examples are divided into train / validation / test."""

    seed: int
    validation_fraction: float
    test_fraction: float
    max_train: int | str
    max_validation: int | str
    max_test: int | str


@dataclasses.dataclass(frozen=True)
class LabelPromptParams:
    """Classification: how an example becomes a prompt and its label an answer."""

    template: str
    answer_prefix: str


@dataclasses.dataclass(frozen=True)
class ChatPromptParams:
    """Generation: how a conversation becomes tokens."""

    system: str
    chat_template: str


@dataclasses.dataclass(frozen=True)
class TaskTrainParams:
    """The training settings that depend on the task's data: how long, how fast, how many tokens."""

    epochs: float
    batch_size: int
    learning_rate: float
    max_length: int


@dataclasses.dataclass(frozen=True)
class LabelEvaluateParams:
    """Classification: how the test split is labelled."""

    method: str
    max_new_tokens: int


@dataclasses.dataclass(frozen=True)
class GenerationEvaluateParams:
    """Generation: how long answers may be, and the probe prompts both models answer in the report."""

    max_new_tokens: int
    no_repeat_ngram_size: int
    probes: list[str]


@dataclasses.dataclass(frozen=True)
class Task:
    """One entry of `tasks`, the one `task` names: everything that depends on the data."""

    name: str
    kind: str
    data: DataParams
    split: SplitParams
    prompt: LabelPromptParams | ChatPromptParams
    train: TaskTrainParams
    evaluate: LabelEvaluateParams | GenerationEvaluateParams

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"


@dataclasses.dataclass(frozen=True)
class BaseModelParams:
    """Which pretrained model is fine-tuned: a local folder or a hub id at a revision."""

    name: str
    revision: str


@dataclasses.dataclass(frozen=True)
class QuantizationParams:
    """How the frozen base weights are stored during training."""

    load_in_4bit: bool
    quant_type: str
    double_quant: bool


@dataclasses.dataclass(frozen=True)
class LoraParams:
    """The LoRA adapter's shape."""

    r: int
    alpha: int
    dropout: float
    target_modules: str | list[str]


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """The optimisation settings shared by every task (the task adds epochs, batch size, rate and length)."""

    seed: int
    gradient_accumulation: int
    warmup_ratio: float
    weight_decay: float
    gradient_checkpointing: bool | str
    compile: bool | str
    gpu_batch_tokens: int
    gpu_min_steps: int
    logging_steps: int


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """How evaluation batches its work, for every task."""

    batch_size: int | str
    memory_gib: float


@dataclasses.dataclass(frozen=True)
class ExportParams:
    """What the export stage makes from the adapter: a merged model and GGUF files."""

    enabled: bool
    merge_into: str
    gguf: list[str]


@dataclasses.dataclass(frozen=True)
class BaselineParams:
    """The classic TF-IDF + logistic-regression baseline (classification tasks)."""

    ngram_max: int
    char_ngrams: bool
    C: float


@dataclasses.dataclass(frozen=True)
class ReportParams:
    """What the Markdown report shows."""

    samples: int


SECTIONS: dict[str, type] = {
    "base_model": BaseModelParams,
    "quantization": QuantizationParams,
    "lora": LoraParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
    "baseline": BaselineParams,
    "report": ReportParams,
}
# The parts of a task entry, and the dataclass each is read into (prompt and evaluate depend on the kind).
TASK_PARTS: dict[str, dict[str, type] | type] = {
    "data": DataParams,
    "split": SplitParams,
    "prompt": {"classification": LabelPromptParams, "generation": ChatPromptParams},
    "train": TaskTrainParams,
    "evaluate": {"classification": LabelEvaluateParams, "generation": GenerationEvaluateParams},
}


def load_yaml(path: str | Path = "params.yaml") -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _check_type(section: str, key: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        expected = str(hint).replace("typing.", "")
        raise PipelineError(f"params.yaml: {section}.{key} is {value!r}; expected {expected}")


def _section(cls: type, section: Any, where: str) -> Any:
    """Check `section` against dataclass `cls` (no missing, unknown or mistyped key) and build it."""
    if not isinstance(section, dict):
        raise PipelineError(f"params.yaml: section '{where}' is missing")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    missing = sorted(fields - set(section))
    if unknown:
        raise PipelineError(f"params.yaml: unknown key {where}.{unknown[0]}; known keys: {', '.join(sorted(fields))}")
    if missing:
        raise PipelineError(f"params.yaml: missing key {where}.{missing[0]}")
    for key, value in section.items():
        _check_type(where, key, value, hints[key])
    return cls(**section)


def read(name: str, path: str | Path = "params.yaml", raw: dict | None = None) -> Any:
    """Return shared section `name` of params.yaml as its dataclass; missing or unknown keys are errors."""
    raw = load_yaml(path) if raw is None else raw
    return _section(SECTIONS[name], raw.get(name), name)


def task_names(raw: dict) -> list[str]:
    tasks = raw.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise PipelineError("params.yaml: section 'tasks' is missing")
    return list(tasks)


def read_task(path: str | Path = "params.yaml", raw: dict | None = None, name: str | None = None) -> Task:
    """The task `task` names (or `name`), with every part checked like a section."""
    raw = load_yaml(path) if raw is None else raw
    name = raw.get("task") if name is None else name
    names = task_names(raw)
    if name not in names:
        raise PipelineError(f"params.yaml: task is {name!r}; choose one of the entries of tasks: {', '.join(names)}")
    entry = raw["tasks"][name]
    where = f"tasks.{name}"
    if not isinstance(entry, dict):
        raise PipelineError(f"params.yaml: {where} must be a mapping")
    expected = {"kind", *TASK_PARTS}
    unknown, missing = sorted(set(entry) - expected), sorted(expected - set(entry))
    if unknown:
        raise PipelineError(f"params.yaml: unknown key {where}.{unknown[0]}; known keys: {', '.join(sorted(expected))}")
    if missing:
        raise PipelineError(f"params.yaml: missing key {where}.{missing[0]}")
    kind = entry["kind"]
    if kind not in KINDS:
        raise PipelineError(f"params.yaml: {where}.kind is {kind!r}; use one of {', '.join(KINDS)}")
    parts = {}
    for part, cls in TASK_PARTS.items():
        parts[part] = _section(cls[kind] if isinstance(cls, dict) else cls, entry[part], f"{where}.{part}")
    if kind == "classification" and parts["data"].format != "table":
        raise PipelineError(f"params.yaml: {where}.data.format is '{parts['data'].format}'; "
                            "a classification task reads a table (one text and one label per row)")
    return Task(name=name, kind=kind, **parts)


def read_all(names: list[str] | tuple[str, ...], path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read several shared sections at once, from one parse of the file."""
    raw = load_yaml(path)
    return {name: read(name, raw=raw) for name in names}


def read_stage(names: tuple[str, ...], path: str | Path = "params.yaml") -> tuple[Task, dict[str, Any]]:
    """What a stage reads: the chosen task and the shared sections it names, from one parse of the file."""
    raw = load_yaml(path)
    return read_task(raw=raw), {name: read(name, raw=raw) for name in names}


def task_as_dict(task: Task, parts: tuple[str, ...]) -> dict[str, Any]:
    """The task's `kind` and the given parts, as plain data (what a stage's output records)."""
    return {"kind": task.kind, **{part: as_dict(getattr(task, part)) for part in parts}}


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


EVALUATION_BATCH = {"cpu": 64, "cuda": 512}  # `auto`: measured in benchmarks/README.md (label scoring)


def evaluation_batch_size(value: int | str, on_gpu: bool) -> int:
    """`auto` is 64 prompts a pass on CPU and 512 on a GPU, where a pass costs about the same up to there."""
    if value == "auto":
        return EVALUATION_BATCH["cuda" if on_gpu else "cpu"]
    if isinstance(value, int) and value > 0:
        return value
    raise PipelineError(f"params.yaml: evaluate.batch_size is {value!r}; expected a positive count or 'auto'")


def size_limit(value: int | str, what: str) -> int | None:
    """`all` means no cap; otherwise a positive count."""
    if value == "all":
        return None
    if isinstance(value, int) and value > 0:
        return value
    raise PipelineError(f"params.yaml: {what} is {value!r}; expected a positive count or 'all'")
