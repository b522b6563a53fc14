"""Train / validation / test splits in which no text (classification) or conversation group (generation) appears twice.

A class with fewer examples than there are splits to fill (3, or 2 when validation_fraction is 0) cannot
be in each of them, so it goes to train only: the model still learns the label, and the test split
keeps only classes it can measure. `train_only_classes` names them; classes with more examples are
stratified, which for a small class is a best effort (a class of 3 may still miss validation).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from finetune.data.examples import normalise_text
from finetune.errors import PipelineError

SPLITS = ("train", "validation", "test")
log = logging.getLogger(__name__)


def _strata(labels: pd.Series) -> pd.Series | None:
    """Labels to stratify on; classes too rare to split are pooled so sklearn can still stratify."""
    counts = labels.value_counts()
    strata = labels.where(labels.map(counts) >= 2, "__rare__")
    return strata if strata.value_counts().min() >= 2 else None


def _take(df: pd.DataFrame, size: float | int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `size` rows (a fraction or a count), stratified by label."""
    if size == 0 or (isinstance(size, int) and size >= len(df)):
        return (df.iloc[:0], df) if size == 0 else (df, df.iloc[:0])
    if isinstance(size, float) and math.ceil(size * len(df)) >= len(df):  # sklearn's rounding would leave nothing
        return df.iloc[:0], df
    n_classes = df["label"].nunique()
    n_taken = size if isinstance(size, int) else int(round(size * len(df)))
    strata = _strata(df["label"]) if min(n_taken, len(df) - n_taken) >= n_classes else None
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes a second to import

    rest, taken = train_test_split(df, test_size=size, random_state=seed, stratify=strata)
    return taken, rest


def _finish(splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Rows in id order (so files do not depend on the shuffle), and no empty train or test split."""
    for name in SPLITS:
        splits[name] = splits[name].sort_values("id", key=lambda s: s.str.zfill(12)).reset_index(drop=True)
        if splits[name].empty and name != "validation":
            raise PipelineError(f"the {name} split is empty; use more data or larger split fractions")
    return splits


def _splits_to_fill(validation_fraction: float) -> int:
    return 3 if validation_fraction > 0 else 2


def train_only_classes(examples: pd.DataFrame, validation_fraction: float) -> dict[str, int]:
    """Classes with fewer examples than there are splits to fill, and their counts, most frequent first."""
    counts = examples["label"].value_counts()
    return {label: int(n) for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if n < _splits_to_fill(validation_fraction)}


def split_examples(examples: pd.DataFrame, validation_fraction: float, test_fraction: float,
                   caps: dict[str, int | None], seed: int) -> dict[str, pd.DataFrame]:
    """Split stratified by label, then cap each split (stratified) to its size limit.

    The examples of `train_only_classes` all go to train, inside its cap; a cap too small to hold them is refused.
    """
    keys = examples["text"].map(normalise_text)
    if keys.duplicated().any():
        raise PipelineError("examples contain a text twice; rerun the prepare stage, which removes duplicates")
    rare = train_only_classes(examples, validation_fraction)
    only_train = examples["label"].isin(list(rare))
    if rare:
        log.info("%d classes have too few examples for every split and go to train only: %s",
                 len(rare), ", ".join(f"{label} ({n})" for label, n in rare.items()))
    if only_train.all():
        raise PipelineError(f"every class has fewer than {_splits_to_fill(validation_fraction)} examples, too few to "
                            "put one in each split; check that data.target_field is a column of categories")
    test, rest = _take(examples[~only_train], test_fraction, seed)
    validation, train = _take(rest, validation_fraction / (1 - test_fraction), seed)
    splits = {"train": train, "validation": validation, "test": test}
    for name in SPLITS:
        cap = caps[name]
        if name == "train" and rare:
            cap = _train_only_cap(cap, int(only_train.sum()))
        if cap is not None and cap < len(splits[name]):
            splits[name], _ = _take(splits[name], cap, seed)
    if rare:
        splits["train"] = pd.concat([splits["train"], examples[only_train]])
    return _finish(splits)


def _train_only_cap(cap: int | None, n_train_only: int) -> int | None:
    """The cap left for the stratified part of train once the train-only examples are in."""
    if cap is None:
        return None
    if n_train_only > cap:
        raise PipelineError(f"{n_train_only} examples belong to classes too small to split (train only), more than "
                            f"split.max_train ({cap}); raise split.max_train or merge the small classes")
    return cap - n_train_only


def split_conversations(examples: pd.DataFrame, validation_fraction: float, test_fraction: float,
                        caps: dict[str, int | None], seed: int) -> dict[str, pd.DataFrame]:
    """Split whole groups (a conversation, or everything one persona said), shuffled by seed, then cap each split."""
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
