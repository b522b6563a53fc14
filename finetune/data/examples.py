"""Turn a raw table into validated, de-duplicated examples: one {id, text, label} per row."""

from __future__ import annotations

import re

import pandas as pd

from finetune.errors import PipelineError

WHITESPACE = re.compile(r"\s+")  # on str, any Unicode whitespace: line breaks, tabs, no-break and other odd spaces


def collapse_whitespace(value) -> str:
    """`value` as text on one line: every run of whitespace (line breaks, tabs, spaces) one space, ends stripped.

    Classification texts and labels are short names, so a line break or a double space in one is noise,
    and a label that differed from another only by it would become a class of its own.
    """
    return WHITESPACE.sub(" ", str(value)).strip()


def normalise_text(text: str) -> str:
    """The key two texts are compared by: case-folded, whitespace collapsed."""
    return collapse_whitespace(text).casefold()


def require_column(table: pd.DataFrame, origin: str, field: str, role: str) -> None:
    """Refuse a table without column `field` (the param `role` names it); a near-miss name is pointed out."""
    if field in table.columns:
        return
    near = [str(c) for c in table.columns if str(c).strip().casefold() == field.strip().casefold()]
    if near:
        raise PipelineError(
            f"{origin}: missing column '{field}' ({role}); did you mean '{near[0]}'? The names differ only in case or "
            f"surrounding spaces: rename the column in the file, or set the task's {role} to '{near[0]}'")
    raise PipelineError(f"{origin}: missing column '{field}' ({role}); columns are: {', '.join(map(str, table.columns))}")


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip()


def build_examples(table: pd.DataFrame, origin: str, text_field: str, label_field: str,
                   drop_labels: list[str]) -> tuple[pd.DataFrame, dict]:
    """Validate `table` and return examples plus counts of what was dropped or changed.

    Texts and labels go through `collapse_whitespace`; `whitespace_normalised` counts the rows it changed
    beyond stripping the ends (a line break, a tab, a double or a no-break space inside).
    Raises PipelineError naming the file, column or row of the first problem found, or the one label
    left if fewer than two are.
    """
    require_column(table, origin, text_field, "data.input_field")
    require_column(table, origin, label_field, "data.target_field")
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
        "text": [collapse_whitespace(t) for t in table[text_field]],
        "label": [collapse_whitespace(v) for v in table[label_field]],
    })
    normalised = ((examples["text"] != [str(t).strip() for t in table[text_field]])
                  | (examples["label"] != [str(v).strip() for v in table[label_field]]))
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
    labels = sorted(examples["label"].unique())
    if len(labels) < 2:
        after = f" after dropping {drop_labels}" if dropped.any() else ""
        raise PipelineError(
            f"{origin}: column '{label_field}' (data.target_field) has one label only, '{labels[0]}'{after}; a classifier "
            "needs at least two: check data.target_field and data.drop_labels, or use a generation task")
    summary = {
        "rows": int(len(table)),
        "whitespace_normalised": int(normalised.sum()),
        "dropped_by_label": int(dropped.sum()),
        "duplicates_removed": int(duplicate.sum()),
        "examples": int(len(examples)),
        "classes": len(labels),
    }
    return examples, summary


def class_counts(examples: pd.DataFrame) -> dict[str, int]:
    """Examples per label, most frequent first, ties by name."""
    counts = examples["label"].value_counts()
    return {label: int(n) for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
