import json
import logging
import sys

import pandas as pd
import pytest

from finetune.data.examples import build_examples, normalise_text
from finetune.data.sources import load_source
from finetune.data.splits import split_examples, train_only_classes
from finetune.errors import PipelineError
from finetune.files import write_jsonl
from stages import split
from tests.data.test_examples import write_task_params

NO_CAPS = {"train": None, "validation": None, "test": None}


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


def test_conversation_groups_never_straddle_splits_and_caps_hold():
    from finetune.data.splits import split_conversations

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


def test_classes_too_small_for_every_split_go_to_train_only_and_are_logged(caplog):
    data = examples({"dairy": 50, "frozen": 30, "bulk": 1, "other": 2, "pets": 3})
    assert train_only_classes(data, 0.1) == {"other": 2, "bulk": 1}
    assert train_only_classes(data, 0.0) == {"bulk": 1}  # two splits to fill: two examples are enough
    with caplog.at_level(logging.INFO, logger="finetune.data.splits"):
        splits = split_examples(data, 0.1, 0.2, NO_CAPS, seed=0)
    assert "2 classes have too few examples for every split and go to train only: other (2), bulk (1)" in caplog.text
    assert (splits["train"]["label"].isin(["bulk", "other"])).sum() == 3
    assert not splits["test"]["label"].isin(["bulk", "other"]).any()
    assert not splits["validation"]["label"].isin(["bulk", "other"]).any()
    assert (splits["test"]["label"] == "dairy").sum() == 10 and (splits["test"]["label"] == "frozen").sum() == 6


def test_train_only_examples_count_within_the_train_cap():
    data = examples({"dairy": 300, "frozen": 100, "bulk": 1, "other": 2})
    splits = split_examples(data, 0.1, 0.2, {"train": 43, "validation": None, "test": None}, seed=0)
    assert len(splits["train"]) == 43 and splits["train"]["label"].value_counts().to_dict() == {
        "dairy": 30, "frozen": 10, "other": 2, "bulk": 1}
    with pytest.raises(PipelineError, match=r"3 examples belong to classes too small to split .* split.max_train \(2\)"):
        split_examples(data, 0.1, 0.2, {"train": 2, "validation": None, "test": None}, seed=0)


def test_no_class_big_enough_to_split_is_a_clear_error():
    with pytest.raises(PipelineError, match="every class has fewer than 3 examples"):
        split_examples(examples({f"label {i}": 2 for i in range(30)}), 0.1, 0.2, NO_CAPS, seed=0)


def test_a_label_with_a_line_break_in_a_tiny_csv_splits_without_a_sklearn_error(tmp_path):
    """Before labels were normalised, "dairy\\neggs" was a class of its own, and one such one-example class turned
    stratification off; a two-row CSV ended in sklearn's ValueError ("the resulting train set will be empty")."""
    rows = [f"Cheese {i},dairy eggs" for i in range(5)] + ['Milk,"dairy\neggs"'] + [f"Peas {i},frozen" for i in range(5)]
    (tmp_path / "tiny.csv").write_text("product,department\n" + "\n".join(rows) + "\n")
    examples_, _ = build_examples(*load_source(str(tmp_path / "tiny.csv")), "product", "department", [])
    assert train_only_classes(examples_, 0.1) == {}
    splits = split_examples(examples_, 0.1, 0.2, NO_CAPS, seed=42)
    assert set(splits["test"]["label"]) == {"dairy eggs", "frozen"}

    (tmp_path / "two.csv").write_text('product,department\nMilk,"dairy\neggs"\nPeas,frozen\n')
    two, _ = build_examples(*load_source(str(tmp_path / "two.csv")), "product", "department", [])
    with pytest.raises(PipelineError, match="every class has fewer than 3 examples"):
        split_examples(two, 0.1, 0.2, NO_CAPS, seed=42)
    # sklearn would put both rows left after test into validation and fail on the empty train part
    splits = split_examples(examples({"dairy": 3}), 0.5, 0.3, NO_CAPS, seed=0)
    assert {name: len(frame) for name, frame in splits.items()} == {"train": 2, "validation": 0, "test": 1}


def run_split_stage(tmp_path, monkeypatch, data: pd.DataFrame) -> dict:
    write_task_params(tmp_path, "instacart")
    write_jsonl(tmp_path / "examples.jsonl", data.to_dict("records"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["split", "examples.jsonl", "split", "split.json"])
    split.main()
    return json.loads((tmp_path / "split.json").read_text())


def test_the_split_stage_records_train_only_classes(tmp_path, monkeypatch):
    sizes = run_split_stage(tmp_path, monkeypatch, examples({"dairy": 60, "frozen": 40, "bulk": 1}))
    assert sizes["train_only_classes"] == {"bulk": 1}
    assert sizes["train"] + sizes["validation"] + sizes["test"] == 101


def test_the_split_stage_writes_only_sizes_when_every_class_splits(tmp_path, monkeypatch):
    sizes = run_split_stage(tmp_path, monkeypatch, examples({"dairy": 60, "frozen": 40}))
    assert set(sizes) == {"train", "validation", "test"}
