"""docs/reference/params.md is what docs/params_reference.py writes from the schema today, and every key of the
schema has a description to write."""

from __future__ import annotations

from typing import Literal

from docs.params_reference import COMMAND, PAGE, markdown, table
from finetune import kinds, param_schemas


def sections() -> list[type[param_schemas.Section]]:
    """Every section class params.yaml is checked with: the shared ones, each kind's task entry and its parts."""
    for name in ("classification", "generation"):
        kinds.get(name)
    entries = list(param_schemas.TASK_CLASSES.values())
    parts = {f.annotation for e in entries for f in e.model_fields.values()
             if isinstance(f.annotation, type) and issubclass(f.annotation, param_schemas.Section)}
    return [param_schemas.ParamsFile, *param_schemas.SECTIONS.values(), *entries, *parts]


def undescribed(section: type[param_schemas.Section]) -> list[str]:
    return [f"{section.__name__}.{name}" for name, field in section.model_fields.items() if not field.description]


def test_the_params_reference_page_is_current():
    assert PAGE.is_file(), f"docs/reference/params.md is missing: run `{COMMAND}`"
    assert PAGE.read_text(encoding="utf-8") == markdown(), f"docs/reference/params.md is stale: run `{COMMAND}`"


def test_every_key_has_a_description():
    missing = [name for section in sections() for name in undescribed(section)]
    assert not missing, f"keys without a description (a docstring under the field): {missing}"


def test_a_key_added_without_a_description_is_caught_and_its_row_shows_its_bounds():
    class Widened(param_schemas.ReportParams):
        """report, with one more key."""

        depth: Literal[1, 2]

    assert undescribed(Widened) == ["Widened.depth"]
    rows = table(param_schemas.LoraParams)
    assert any(row.startswith("| `r` | whole number ≥ 1 | required | adapter rank |") for row in rows)
    split = table(param_schemas.SplitParams)
    assert any(row.startswith("| `max_train` | whole number ≥ 1 or `all` | `\"all\"` |") for row in split)
    assert any(row.startswith("| `dropout` | number ≥ 0, < 1 |") for row in rows)
