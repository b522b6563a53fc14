"""Turn a raw table into validated, de-duplicated examples: one {id, text, label} per row."""

from __future__ import annotations

import re

import pandas as pd

from finetune.errors import PipelineError


def normalise_text(text: str) -> str:
    """The key two texts are compared by: case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip()


def build_examples(table: pd.DataFrame, origin: str, text_field: str, label_field: str,
                   drop_labels: list[str]) -> tuple[pd.DataFrame, dict]:
    """Validate `table` and return examples plus counts of what was dropped.

    Raises PipelineError naming the file, column or row of the first problem found.
    """
    for field, role in ((text_field, "data.text_field"), (label_field, "data.label_field")):
        if field not in table.columns:
            raise PipelineError(
                f"{origin}: missing column '{field}' ({role}); columns are: {', '.join(map(str, table.columns))}")
    if table.empty:
        raise PipelineError(f"{origin}: no rows")
    for row, (text, label) in enumerate(zip(table[text_field], table[label_field]), start=1):
        if _is_blank(text):
            raise PipelineError(f"{origin}: row {row} has an empty '{text_field}' (the text); fix or remove that row")
        if _is_blank(label):
            raise PipelineError(f"{origin}: row {row} has no '{label_field}' (the label); fix or remove that row")

    ids = table["id"].astype(str) if "id" in table.columns else pd.Series(range(1, len(table) + 1)).astype(str)
    examples = pd.DataFrame({
        "id": ids.values,
        "text": [re.sub(r"\s+", " ", str(t)).strip() for t in table[text_field]],
        "label": [str(v).strip() for v in table[label_field]],
    })
    if examples["id"].duplicated().any():
        dup = examples.loc[examples["id"].duplicated(), "id"].iloc[0]
        raise PipelineError(f"{origin}: id '{dup}' appears more than once; ids must be unique")

    dropped = examples["label"].isin(drop_labels)
    examples = examples[~dropped]
    key = examples["text"].map(normalise_text)
    duplicate = key.duplicated(keep="first")
    examples = examples[~duplicate].reset_index(drop=True)
    if examples.empty:
        raise PipelineError(f"{origin}: no examples left after dropping labels {drop_labels}")
    summary = {
        "rows": int(len(table)),
        "dropped_by_label": int(dropped.sum()),
        "duplicates_removed": int(duplicate.sum()),
        "examples": int(len(examples)),
        "classes": int(examples["label"].nunique()),
    }
    return examples, summary


def class_counts(examples: pd.DataFrame) -> dict[str, int]:
    """Examples per label, most frequent first, ties by name."""
    counts = examples["label"].value_counts()
    return {label: int(n) for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
