"""Train / validation / test splits in which no text (classification) or conversation group (generation) appears twice."""

from __future__ import annotations

import numpy as np
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


def _check_fractions(validation_fraction: float, test_fraction: float) -> None:
    if not (0 <= validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise PipelineError(
            "params.yaml: split.validation_fraction and split.test_fraction must be in [0, 1) with a sum below 1")


def _finish(splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Rows in id order (so files do not depend on the shuffle), and no empty train or test split."""
    for name in SPLITS:
        splits[name] = splits[name].sort_values("id", key=lambda s: s.str.zfill(12)).reset_index(drop=True)
        if splits[name].empty and name != "validation":
            raise PipelineError(f"the {name} split is empty; use more data or larger split fractions")
    return splits


def split_examples(examples: pd.DataFrame, validation_fraction: float, test_fraction: float,
                   caps: dict[str, int | None], seed: int) -> dict[str, pd.DataFrame]:
    """Split stratified by label, then cap each split (stratified) to its size limit."""
    _check_fractions(validation_fraction, test_fraction)
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
    return _finish(splits)


def split_conversations(examples: pd.DataFrame, validation_fraction: float, test_fraction: float,
                        caps: dict[str, int | None], seed: int) -> dict[str, pd.DataFrame]:
    """Split whole groups (a conversation, or everything one persona said), shuffled by seed, then cap each split."""
    _check_fractions(validation_fraction, test_fraction)
    groups = np.array(sorted(examples["group"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_test = max(1, int(round(test_fraction * len(groups))))
    n_validation = int(round(validation_fraction * len(groups)))
    assigned = {g: "test" for g in groups[:n_test]}
    assigned |= {g: "validation" for g in groups[n_test:n_test + n_validation]}
    where = examples["group"].map(lambda g: assigned.get(g, "train"))
    splits = {}
    for name in SPLITS:
        part = examples[where == name]
        cap = caps[name]
        if cap is not None and cap < len(part):
            part = part.iloc[np.sort(rng.permutation(len(part))[:cap])]
        splits[name] = part
    return _finish(splits)
