"""Stratified train / validation / test splits in which no text appears twice."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from finetune.errors import PipelineError
from finetune.examples import normalise_text

SPLITS = ("train", "validation", "test")


def _strata(labels: pd.Series) -> pd.Series | None:
    """Labels to stratify on; classes too rare to split are pooled so sklearn can still stratify."""
    counts = labels.value_counts()
    strata = labels.where(labels.map(counts) >= 2, "__rare__")
    return strata if strata.value_counts().min() >= 2 else None


def _take(df: pd.DataFrame, size: float | int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `size` rows (a fraction or a count), stratified by label."""
    if size == 0 or (isinstance(size, int) and size >= len(df)):
        return (df.iloc[:0], df) if size == 0 else (df, df.iloc[:0])
    n_classes = df["label"].nunique()
    n_taken = size if isinstance(size, int) else int(round(size * len(df)))
    strata = _strata(df["label"]) if min(n_taken, len(df) - n_taken) >= n_classes else None
    rest, taken = train_test_split(df, test_size=size, random_state=seed, stratify=strata)
    return taken, rest


def split_examples(examples: pd.DataFrame, validation_fraction: float, test_fraction: float,
                   caps: dict[str, int | None], seed: int) -> dict[str, pd.DataFrame]:
    """Split stratified by label, then cap each split (stratified) to its size limit."""
    if not (0 <= validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise PipelineError(
            "params.yaml: split.validation_fraction and split.test_fraction must be in [0, 1) with a sum below 1")
    keys = examples["text"].map(normalise_text)
    if keys.duplicated().any():
        raise PipelineError("examples contain a text twice; rerun the prepare stage, which removes duplicates")
    test, rest = _take(examples, test_fraction, seed)
    validation, train = _take(rest, validation_fraction / (1 - test_fraction), seed)
    splits = {"train": train, "validation": validation, "test": test}
    for name in SPLITS:
        cap = caps[name]
        if cap is not None and cap < len(splits[name]):
            splits[name], _ = _take(splits[name], cap, seed)
        splits[name] = splits[name].sort_values("id", key=lambda s: s.str.zfill(12)).reset_index(drop=True)
        if splits[name].empty and name != "validation":
            raise PipelineError(f"the {name} split is empty; use more data or larger split fractions")
    return splits
