import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from finetune.data.examples import build_examples, class_counts
from finetune.errors import PipelineError
from stages import prepare
from tests.conftest import ROOT


def write_task_params(tmp_path, source: str, task: str = "instacart", **data) -> None:
    """params.yaml in `tmp_path`: the project's, with `task` chosen and its data.source (and other data keys) set."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["task"] = task
    params["tasks"][task]["data"].update(source=source, **data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def run_prepare(tmp_path, source: str, task: str = "instacart", env: dict | None = None, **data):
    """Run the real prepare stage in `tmp_path` on `task` with its `data.source` set; returns the finished process."""
    write_task_params(tmp_path, source, task, **data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "stages.prepare", "out/examples.jsonl", "out/counts.json",
                           "out/class_counts.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


def assert_one_line_error(proc, tmp_path, *fragments):
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out" / "examples.jsonl").exists()
    assert not (tmp_path / "out" / "counts.json").exists()


@pytest.mark.parametrize("content, fragments", [
    ("product,category\nMilk,dairy\n", ["bad.csv", "missing column 'department'", "product, category"]),
    ("product,department\nMilk,dairy\n   ,frozen\n", ["bad.csv", "row 2", "empty 'product'"]),
    ("product,department\nMilk,dairy\nPeas,\n", ["bad.csv", "row 2", "no 'department'"]),
])
def test_bad_table_gives_one_line_error_and_writes_nothing(tmp_path, content, fragments):
    (tmp_path / "bad.csv").write_text(content)
    assert_one_line_error(run_prepare(tmp_path, "bad.csv", input_field="product", target_field="department"),
                          tmp_path, *fragments)


def test_unreadable_file_gives_one_line_error(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    assert_one_line_error(run_prepare(tmp_path, "broken.parquet"), tmp_path, "broken.parquet", "cannot read")


def test_missing_file_gives_one_line_error(tmp_path):
    assert_one_line_error(run_prepare(tmp_path, "nowhere.jsonl"), tmp_path, "nowhere.jsonl", "not found")


def test_prepare_drops_labels_and_duplicates(tmp_path):
    pd.DataFrame({"name": ["Milk", "milk ", "Peas", "Mystery"], "dept": ["dairy", "dairy", "frozen", "missing"]}) \
        .to_json(tmp_path / "items.jsonl", orient="records", lines=True)
    proc = run_prepare(tmp_path, "items.jsonl", input_field="name", target_field="dept", drop_labels=["missing"])
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_json(tmp_path / "out" / "examples.jsonl", lines=True)
    assert rows["text"].tolist() == ["Milk", "Peas"] and rows["label"].tolist() == ["dairy", "frozen"]


def test_duplicate_ids_are_refused():
    table = pd.DataFrame({"id": [1, 1], "text": ["a", "b"], "label": ["x", "y"]})
    with pytest.raises(PipelineError, match="id '1'"):
        build_examples(table, "t.csv", "text", "label", [])


def test_class_counts_most_frequent_first():
    frame = pd.DataFrame({"label": ["b", "a", "b", "c", "a", "b"]})
    assert list(class_counts(frame).items()) == [("b", 3), ("a", 2), ("c", 1)]


def prepare_in_process(tmp_path, monkeypatch, source: str, **data) -> dict:
    """Run prepare's main() in `tmp_path` on the instacart task with `data.source` set; return its counts."""
    write_task_params(tmp_path, source, **data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["prepare", "out/examples.jsonl", "out/counts.json", "out/class_counts.csv"])
    prepare.main()
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())
    per_class = pd.read_csv(tmp_path / "out" / "class_counts.csv", keep_default_na=False)
    return {**counts, "per_class": dict(zip(per_class["label"], per_class["examples"].astype(int)))}


def test_texts_and_labels_lose_line_breaks_tabs_and_double_spaces_and_are_counted():
    table = pd.DataFrame({"product": ["Whole\nMilk", "Peas\t 1 kg", " Rice ", "Eggs"],
                          "department": ["dairy\r\neggs", "frozen", "pantry ", "dairy  eggs"]})
    examples, summary = build_examples(table, "t.csv", "product", "department", [])
    assert examples["text"].tolist() == ["Whole Milk", "Peas 1 kg", "Rice", "Eggs"]
    assert examples["label"].tolist() == ["dairy eggs", "frozen", "pantry", "dairy eggs"]
    assert summary["classes"] == 3
    assert summary["whitespace_normalised"] == 3  # " Rice " / "pantry " only lose their ends: not counted


def test_prepare_writes_the_whitespace_count(tmp_path, monkeypatch):
    (tmp_path / "items.csv").write_bytes(b'\xef\xbb\xbfproduct;department\nMilk;"dairy\neggs"\nPeas;frozen\n')
    counts = prepare_in_process(tmp_path, monkeypatch, "items.csv", input_field="product", target_field="department")
    assert counts["whitespace_normalised"] == 1 and counts["per_class"] == {"dairy eggs": 1, "frozen": 1}
    assert "class_counts" not in counts  # one column per class would crowd `dvc exp show`: they are a plot


@pytest.mark.parametrize("departments, drop_labels, fragment", [
    (["dairy", "dairy "], [], "column 'department' (data.target_field) has one label only, 'dairy'; "),
    (["dairy", "missing"], ["missing"], "has one label only, 'dairy' after dropping ['missing']; "),
])
def test_a_single_class_is_refused(departments, drop_labels, fragment):
    table = pd.DataFrame({"product": ["Milk", "Cheese"], "department": departments})
    with pytest.raises(PipelineError) as error:
        build_examples(table, "data/raw/one.csv", "product", "department", drop_labels)
    assert str(error.value).startswith("data/raw/one.csv: ") and fragment in str(error.value)


def test_a_single_class_stops_prepare_before_it_writes(tmp_path, monkeypatch):
    (tmp_path / "one.csv").write_text("product,department\nMilk,dairy\nCheese,dairy\n")
    with pytest.raises(PipelineError, match="one.csv: column 'department' .* one label only, 'dairy'"):
        prepare_in_process(tmp_path, monkeypatch, "one.csv", input_field="product", target_field="department")
    assert not (tmp_path / "out").exists()


def test_a_column_name_that_differs_only_in_case_or_spaces_is_pointed_out():
    table = pd.DataFrame({" Product": ["Milk"], "department": ["dairy"]})
    with pytest.raises(PipelineError, match="missing column 'product' \\(data.input_field\\); did you mean ' Product'\\?"):
        build_examples(table, "t.csv", "product", "department", [])
