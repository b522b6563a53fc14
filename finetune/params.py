"""Typed, strict access to `params.yaml`: read it, check all of it, hand each stage its sections.

pydantic checks the whole file at once (against `finetune.param_schemas`), before a stage writes anything; an error
names the key, the value and what is allowed, on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from finetune.errors import PipelineError
from finetune.param_errors import error_line
from finetune import param_schemas
from finetune.param_schemas import ParamsFile, Section, Task

T = TypeVar("T", bound=BaseModel)


def load_yaml(path: str | Path = "params.yaml") -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top, found {type(raw).__name__}")
    return raw


def validate(raw: dict, where: str = "params.yaml") -> ParamsFile:
    """Check the whole file: every section, every task entry, every key's type and range."""
    schema = param_schemas.params_file()
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise PipelineError(error_line(e, where, schema, param_schemas.TASK_CLASSES)) from None


def read(name: str, path: str | Path = "params.yaml", raw: dict | None = None) -> Any:
    """Shared section `name` of params.yaml, after the whole file is checked."""
    raw = load_yaml(path) if raw is None else raw
    return getattr(validate(raw, str(path)), name)


def _task(checked: ParamsFile, name: str) -> Task:
    if name not in checked.tasks:
        raise PipelineError(f"params.yaml: task is {name!r}; choose one of the entries of tasks: {', '.join(checked.tasks)}")
    entry = checked.tasks[name]
    return Task(name=name, **{key: getattr(entry, key) for key in entry.model_fields})


def read_task(path: str | Path = "params.yaml", raw: dict | None = None, name: str | None = None) -> Task:
    """The task `task` names (or `name`), after the whole file is checked."""
    raw = load_yaml(path) if raw is None else raw
    checked = validate(raw, str(path))
    return _task(checked, checked.task if name is None else name)


def read_stage(names: tuple[str, ...], path: str | Path = "params.yaml") -> tuple[Task, dict[str, Any]]:
    """What a stage reads: the chosen task and the shared sections it names (or single keys, as `train.method`).
    The whole file is checked first, so a bad value anywhere stops the stage before it writes anything."""
    checked = validate(load_yaml(path), str(path))
    return _task(checked, checked.task), {name: _value(checked, name) for name in names}


def _value(checked: ParamsFile, name: str) -> Any:
    value = checked
    for part in name.split("."):
        value = getattr(value, part)
    return value


def task_as_dict(task: Task, parts: tuple[str, ...]) -> dict[str, Any]:
    """The task's `kind` and the given parts, as plain data (what a stage's output records)."""
    return {"kind": task.kind, **{part: as_dict(getattr(task, part)) for part in parts}}


def as_dict(section: Section) -> dict[str, Any]:
    return section.model_dump()


def replace(section: T, **changes: Any) -> T:
    """A copy of `section` with some values changed, checked like the file is."""
    try:
        return type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as e:
        raise PipelineError(error_line(e, type(section).__name__, type(section), param_schemas.TASK_CLASSES)) from None


EVALUATION_BATCH = {"cpu": 64, "cuda": 512}  # `auto`: measured in benchmarks/README.md (label scoring)


def evaluation_batch_size(value: int | str, on_gpu: bool) -> int:
    """`auto` is 64 prompts a pass on CPU and 512 on a GPU, where a pass costs about the same up to there."""
    return EVALUATION_BATCH["cuda" if on_gpu else "cpu"] if value == "auto" else value


def size_limit(value: int | str) -> int | None:
    """`all` means no cap; otherwise the count (params checked it is positive)."""
    return None if value == "all" else value
