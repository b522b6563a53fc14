import pandas as pd
import pytest

from finetune.errors import PipelineError
from finetune.examples import normalise_text
from finetune.splits import split_examples


def examples(n_per_class: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": f"{label}-{i}", "text": f"{label} item {i}", "label": label}
            for label, n in n_per_class.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_split_is_stratified_and_no_text_lands_in_two_splits():
    data = examples({"dairy": 400, "frozen": 200, "bulk": 20})
    splits = split_examples(data, 0.1, 0.2, {"train": None, "validation": None, "test": None}, seed=1)
    keys = {name: set(frame["text"].map(normalise_text)) for name, frame in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"] \
        and not keys["validation"] & keys["test"]
    assert sum(len(f) for f in splits.values()) == len(data)
    for label, n in {"dairy": 400, "frozen": 200, "bulk": 20}.items():
        assert (splits["test"]["label"] == label).sum() == pytest.approx(0.2 * n, abs=1)  # counts: a share of n rounds to a whole example
        assert (splits["validation"]["label"] == label).sum() == pytest.approx(0.1 * n, abs=1)


def test_caps_keep_the_class_mix_and_the_same_seed_gives_the_same_split():
    data = examples({"dairy": 600, "frozen": 300, "pets": 100})
    caps = {"train": 100, "validation": 20, "test": 50}
    first = split_examples(data, 0.1, 0.2, caps, seed=7)
    again = split_examples(data, 0.1, 0.2, caps, seed=7)
    other = split_examples(data, 0.1, 0.2, caps, seed=8)
    assert {k: len(v) for k, v in first.items()} == caps
    assert first["train"]["label"].value_counts().to_dict() == {"dairy": 60, "frozen": 30, "pets": 10}
    assert all(first[k].equals(again[k]) for k in caps)
    assert not first["train"].equals(other["train"])


def test_rare_classes_do_not_break_stratification():
    data = examples({"dairy": 50, "frozen": 30, "bulk": 1, "other": 2})
    splits = split_examples(data, 0.1, 0.2, {"train": None, "validation": None, "test": None}, seed=0)
    assert sum(len(f) for f in splits.values()) == len(data)


def test_duplicate_texts_are_refused():
    data = pd.DataFrame([{"id": "1", "text": "Milk", "label": "dairy"}, {"id": "2", "text": "milk ", "label": "dairy"}])
    with pytest.raises(PipelineError, match="prepare"):
        split_examples(data, 0.1, 0.2, {"train": None, "validation": None, "test": None}, seed=0)


def test_bad_fractions_are_a_clear_error():
    with pytest.raises(PipelineError, match="test_fraction"):
        split_examples(examples({"a": 10, "b": 10}), 0.5, 0.6, {"train": None, "validation": None, "test": None}, 0)


def test_conversation_groups_never_straddle_splits_and_caps_hold():
    from finetune.splits import split_conversations

    rows = [{"id": f"{g}-{i}", "group": f"g{g}", "messages": []} for g in range(40) for i in range(3)]
    data = pd.DataFrame(rows)
    splits = split_conversations(data, 0.1, 0.2, {"train": None, "validation": None, "test": None}, seed=3)
    groups = {name: set(frame["group"]) for name, frame in splits.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"] \
        and not groups["validation"] & groups["test"]
    assert len(groups["test"]) == 8 and len(groups["validation"]) == 4
    capped = split_conversations(data, 0.1, 0.2, {"train": 10, "validation": None, "test": 5}, seed=3)
    assert len(capped["train"]) == 10 and len(capped["test"]) == 5
    assert split_conversations(data, 0.1, 0.2, {"train": 10, "validation": None, "test": 5}, seed=3)["train"].equals(
        capped["train"])
