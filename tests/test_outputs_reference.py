"""docs/reference/outputs.md is what docs/outputs_reference.py writes from finetune/outputs.py today, and every field
has a description. (The outputs themselves are checked against finetune/outputs.py where the tests make them: the
tiny pipeline's in tests/test_pipeline.py, a generation task's in tests/test_switching_task_and_format.py.)"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from docs.outputs_reference import COMMAND, PAGE, _nested_models, markdown
from finetune import outputs
from tests.conftest import ROOT


def test_the_outputs_reference_page_is_current():
    assert PAGE.is_file(), f"docs/reference/outputs.md is missing: run `{COMMAND}`"
    assert PAGE.read_text(encoding="utf-8") == markdown(), f"docs/reference/outputs.md is stale: run `{COMMAND}`"


def test_every_field_of_every_output_has_a_description():
    declared = [m for d in outputs.FILES.values() for m in (d.values() if isinstance(d, dict) else [d])]
    models = set(declared) | _nested_models(declared)
    assert [f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not f.description] == []


def test_the_metrics_kept_in_git_are_described_and_a_new_field_is_caught():
    kept = [path for path in outputs.FILES if (ROOT / path).is_file() and path.count("/") == 1]  # not DVC's outputs
    assert len(kept) == 5
    for path in kept:
        outputs.check(path, json.loads((ROOT / path).read_text()), "classification")
    data = json.loads((ROOT / "metrics/data.json").read_text())
    with pytest.raises(ValidationError, match="surprise"):
        outputs.check("metrics/data.json", {**data, "surprise": 1})
