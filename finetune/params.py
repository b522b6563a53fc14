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


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where examples come from and which fields are the text and the label."""

    source: str
    text_field: str
    label_field: str
    drop_labels: list[str]


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
class BaseModelParams:
    """Which pretrained model is fine-tuned: a local folder or a hub id at a revision."""

    name: str
    revision: str


@dataclasses.dataclass(frozen=True)
class PromptParams:
    """How an example becomes a prompt and an answer."""

    template: str
    answer_prefix: str


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
    """The optimisation loop."""

    seed: int
    epochs: float
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    gradient_checkpointing: bool | str
    max_length: int
    logging_steps: int


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """How the test split is scored."""

    method: str
    batch_size: int
    max_new_tokens: int


@dataclasses.dataclass(frozen=True)
class BaselineParams:
    """The classic TF-IDF + logistic-regression baseline."""

    ngram_max: int
    char_ngrams: bool
    C: float


@dataclasses.dataclass(frozen=True)
class ReportParams:
    """What the Markdown report shows."""

    samples: int


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "split": SplitParams,
    "base_model": BaseModelParams,
    "prompt": PromptParams,
    "quantization": QuantizationParams,
    "lora": LoraParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "baseline": BaselineParams,
    "report": ReportParams,
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


def read(name: str, path: str | Path = "params.yaml", raw: dict | None = None) -> Any:
    """Return section `name` of params.yaml as its dataclass; missing or unknown keys are errors."""
    cls = SECTIONS[name]
    raw = load_yaml(path) if raw is None else raw
    section = raw.get(name)
    if not isinstance(section, dict):
        raise PipelineError(f"params.yaml: section '{name}' is missing")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    missing = sorted(fields - set(section))
    if unknown:
        raise PipelineError(f"params.yaml: unknown key {name}.{unknown[0]}; known keys: {', '.join(sorted(fields))}")
    if missing:
        raise PipelineError(f"params.yaml: missing key {name}.{missing[0]}")
    for key, value in section.items():
        _check_type(name, key, value, hints[key])
    return cls(**section)


def read_all(names: list[str] | tuple[str, ...], path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read several sections at once, from one parse of the file."""
    raw = load_yaml(path)
    return {name: read(name, raw=raw) for name in names}


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def size_limit(value: int | str, what: str) -> int | None:
    """`all` means no cap; otherwise a positive count."""
    if value == "all":
        return None
    if isinstance(value, int) and value > 0:
        return value
    raise PipelineError(f"params.yaml: {what} is {value!r}; expected a positive count or 'all'")
